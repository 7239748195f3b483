"""End to end: a real transformers architecture generating with kvbench's cache and
with transformers' own caches, in the same run, same model, inputs and seed.

The model is built from the run's model config (``--model``: the Hugging Face fields of
``configs/models/<name>.yaml``, dispatched on its ``model_type``) with random weights,
no download; or, with ``--set e2e.model_path=DIR``, loaded offline from a local
``save_pretrained`` folder (``weights: <dir>`` in each case config; never shrunk). On a
CPU, and in ``--quick``, a random-weight model is shrunk (``settings.SHRINK``: 2 layers,
at most 8 query heads of at most 64 dims, the GQA ratio kept, a vocabulary of at most
1024); each case's config says what was used (``layers_used``, ``hidden_size_used``,
..., ``weight_bytes``). Dtype: float16 (CPU and CUDA; the cache stores the model dtype).

Each generation makes ``e2e.new_tokens`` tokens greedily for a fixed batch of
``e2e.batch`` random prompts of ``e2e.prompt_tokens`` tokens (seed ``--seed``, no
padding, EOS ignored), one model forward per token, timed per token
(``time.perf_counter``, ``torch.cuda.synchronize`` after each step on CUDA). Per timed
generation: ``ttft_s`` (prefill forward + first argmax), ``tpot_s`` (median of the decode
steps' times), ``out_tok_s`` (batch * new tokens / whole generation), and every step's
time (``step_s``) with the context it attended over (``config.step_context_tokens``).

Timing: the ``dynamic`` case (DynamicCache, the reference) takes ``--warmup`` untimed and
``--samples`` timed generations. Every other case is sampled alternately with
DynamicCache on the same model and inputs (A B B A ..., one arm sample = one whole
generation; ``kvbench.measure.paired``) until its ``tpot_ratio_vs_dynamic`` (per pair,
its median step time over DynamicCache's) has a 95% interval within +-5%, or
``e2e.budget_s`` is spent (flagged ``unstable``), after at least max(6, --samples) pairs.

Peak memory, over one generation of the case's cache alone (the teacher-forced one): CUDA
``torch.cuda.max_memory_allocated``, pinned host memory from
``torch.cuda.memory.host_memory_stats`` where torch has it, and kvbench's pinned page
pool; CPU the process's RSS high-water mark (process-lifetime, so it only grows case
to case), no pinned memory.

Fidelity, against the ``dynamic`` reference of the same model and inputs:
``token_agreement`` (fraction of the batch x new tokens equal), ``first_divergence``
(first step where any row differs, None if none) of the free-running greedy tokens,
and teacher-forced logit errors (each cache fed the dynamic run's tokens, so every step
is compared on the same prefix): ``logit_max_abs_err`` (max over steps, batch and
vocabulary) and ``logit_kl`` (KL(dynamic || case) in nats, mean over batch and steps).

Prediction: ``predict`` turns the same run's transfer and decode cases and the model's
bytes into a predicted time per output token per case (what it counts and leaves out:
``kvbench.bench.e2e.predict``); the report shows it beside the measurement.

Cases: ``cases.cache_cases`` (the one list). Layout of this package: ``settings``
(options, the model's source, support), ``cases``, ``run`` (timing, fidelity, memory),
``predict`` and ``present`` (pure, no torch). Not in a default run::

    kvbench run --bench e2e --format fp16,fp8_e4m3 --set e2e.new_tokens=32
"""

from __future__ import annotations

from kvbench.bench import Benchmark, Case, Plot, RunContext
from kvbench.bench.e2e.cases import CacheCase, cache_cases
from kvbench.bench.e2e.predict import predict
from kvbench.bench.e2e.present import draw_tpot, draw_tpot_context, highlights, step_curve
from kvbench.bench.e2e.settings import BENCH_KEY, OPTIONS, model_dir, settings, support

__all__ = ["BENCH", "BENCH_KEY", "CacheCase", "cache_cases", "draw_tpot", "draw_tpot_context", "highlights",
           "model_dir", "plan", "predict", "settings", "step_curve", "support"]


def plan(ctx: RunContext) -> list[Case]:
    """A case per cache of ``cache_cases``; bad options (and a bad e2e.model_path)
    fail here, before anything runs."""
    from kvbench.bench.e2e.run import run_cache

    st = settings(ctx)
    return [Case(cc.name, {"cache": cc.kind, "format": cc.fmt, "tier": cc.tier, **st},
                 lambda c, cc=cc: run_cache(c, cc))
            for cc in cache_cases(ctx)]


BENCH = Benchmark(
    key=BENCH_KEY,
    description="end-to-end greedy generation of a transformers model (random or local weights): kvbench's "
                "PagedCache vs DynamicCache, paired (TTFT, TPOT, fidelity, predicted TPOT)",
    plan=plan,
    available=support,
    headline="tpot_s",
    headline_unit="s",
    columns=("tpot_ratio_vs_dynamic", "ttft_s", "out_tok_s", "token_agreement", "first_divergence",
             "logit_max_abs_err", "logit_kl"),
    plots=(Plot("e2e_tpot.png", draw_tpot), Plot("e2e_tpot_context.png", draw_tpot_context)),
    highlights=highlights,
    options=OPTIONS,
)
