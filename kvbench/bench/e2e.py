"""End to end: a real transformers architecture generating with kvbench's cache and
with transformers' own caches, in the same run, same model, inputs and seed.

The model is built from the run's model config (``--model``: the Hugging Face fields of
``configs/models/<name>.yaml``, dispatched on its ``model_type``) with random weights,
no download. On a CPU, and in ``--quick``, it is shrunk (``SHRINK``: 2 layers, at most 8
query heads of at most 64 dims, the GQA ratio kept, a vocabulary of at most 1024); each
case's config says what was used (``layers_used``, ``hidden_size_used``, ...,
``weights: random``). Dtype: float16 (CPU and CUDA; the cache stores the model dtype).

Each case generates ``e2e.new_tokens`` tokens greedily for a fixed batch of
``e2e.batch`` random prompts of ``e2e.prompt_tokens`` tokens (seed ``--seed``, no
padding, EOS ignored), one model forward per token, timed per token
(``time.perf_counter``, ``torch.cuda.synchronize`` after each step on CUDA): after
``--warmup`` untimed generations, ``--samples`` timed ones. Per sample: ``ttft_s``
(prefill forward + first argmax), ``tpot_s`` (median of the decode steps' times),
``out_tok_s`` (batch * new tokens / whole generation). Peak memory: CUDA
``torch.cuda.max_memory_allocated`` over the timed generations; CPU the process's RSS
high-water mark (``resource.getrusage`` ``ru_maxrss``, process-lifetime, so it only
grows case to case).

Fidelity, against the ``dynamic`` case (DynamicCache) of the same model and inputs:
``token_agreement`` (fraction of the batch x new tokens equal), ``first_divergence``
(first step where any row differs, None if none) of the free-running greedy tokens,
and teacher-forced logit errors (each cache fed the dynamic run's tokens, so every step
is compared on the same prefix): ``logit_max_abs_err`` (max over steps, batch and
vocabulary) and ``logit_kl`` (KL(dynamic || case) in nats, mean over batch and steps).

Cases: ``dynamic``, ``dynamic_offload`` (CUDA only), ``quantized/quanto`` and
``quantized/hqq`` (when the backend package is installed), and
``kvbench/<tier>/<format>`` (``kvbench.hf.PagedCache``) for the run's formats on hbm,
dram and nvme. Not in a default run::

    kvbench run --bench e2e --format fp16,fp8_e4m3 --set e2e.new_tokens=32
"""

from __future__ import annotations

import importlib.util
from typing import Any

from kvbench.bench import Benchmark, Case, Highlights, Plot, RunContext, Skip
from kvbench.errors import KvbenchError
from kvbench.results import make_case

BENCH_KEY = "e2e"

#: the shrunken model of a CPU or --quick run (upper bounds; the config's own values
#: where smaller): a few layers and a small hidden size keep a CPU run to seconds
SHRINK = {"layers": 2, "heads": 8, "head_dim": 64, "vocab": 1024}
#: transformers' quantized-cache backends and the module each needs
QUANT_BACKENDS = {"quanto": "optimum.quanto", "hqq": "hqq"}
#: page tiers, in the order their cases run
#: model forward passes of the reference kept per run context (model, inputs, tokens)
_REF: dict[tuple, dict[str, Any]] = {}


# ----------------------------------------------------------------------------- settings
def _max_positions(ctx: RunContext) -> int | None:
    v = (ctx.model.config or {}).get("max_position_embeddings")
    return int(v) if v else None


def settings(ctx: RunContext) -> dict[str, Any]:
    """The resolved options, validated (one-line KvbenchError for a bad one)."""
    batch = ctx.opt_int("e2e.batch", 2 if ctx.quick else 8, maximum=4096)
    most = _max_positions(ctx)
    prompt = ctx.opt_int("e2e.prompt_tokens", 32 if ctx.quick else 512, maximum=most,
                         why="the model's max_position_embeddings")
    new = ctx.opt_int("e2e.new_tokens", 16 if ctx.quick else 128, minimum=2,
                      maximum=(most - prompt) if most else None,
                      why=f"prompt ({prompt}) + new tokens must fit max_position_embeddings ({most})")
    return {"batch": batch, "prompt_tokens": prompt, "new_tokens": new,
            "shrunk": ctx.quick or not ctx.cuda}


def support(ctx: RunContext) -> tuple[bool, str]:
    """Whether the run's model can be built as a transformers model and paged."""
    cfg = ctx.model.config or {}
    if ctx.model.attention_type not in ("gqa", "mha"):
        return False, (f"attention type {ctx.model.attention_type} is not paged by PagedCache yet "
                       "(gqa and mha are)")
    if not cfg.get("model_type"):
        return False, f"model {ctx.model.name} has no model_type: no transformers architecture to build"
    if importlib.util.find_spec("transformers") is None:
        return False, "transformers is not installed"
    return True, ""


def model_fields(ctx: RunContext, shrunk: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Hugging Face config fields to build, what was used for the case config)."""
    cfg = dict(ctx.model.config)
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    layers = int(cfg["num_hidden_layers"])
    vocab = int(cfg.get("vocab_size") or 32000)
    shrink: dict[str, int] = {}
    if shrunk:
        group = max(1, heads // kv)
        h = min(heads, SHRINK["heads"])
        h = max(group, h - h % group)
        d = min(head_dim, SHRINK["head_dim"])
        layers, heads, kv, head_dim, vocab = min(layers, SHRINK["layers"]), h, max(1, h // group), d, \
            min(vocab, SHRINK["vocab"])
        hidden = heads * head_dim
        shrink = {"num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
                  "head_dim": head_dim, "hidden_size": hidden, "intermediate_size": 2 * hidden,
                  "vocab_size": vocab}
        for k in ("moe_intermediate_size", "n_routed_experts", "num_local_experts"):
            if k in cfg:
                shrink[k] = min(int(cfg[k]), {"moe_intermediate_size": hidden}.get(k, 4))
        if "num_experts_per_tok" in cfg:
            shrink["num_experts_per_tok"] = min(int(cfg["num_experts_per_tok"]), 2)
    used = {"architecture": cfg["model_type"], "weights": "random", "shrunk": shrunk,
            "layers_used": layers, "layers_config": int(cfg["num_hidden_layers"]),
            "hidden_size_used": int(shrink.get("hidden_size", cfg.get("hidden_size", heads * head_dim))),
            "hidden_size_config": cfg.get("hidden_size"), "heads_used": heads, "kv_heads_used": kv,
            "head_dim_used": head_dim, "vocab_used": vocab, "dtype": "float16",
            "attn_implementation": "sdpa"}
    return shrink, used


# ----------------------------------------------------------------------------- running
def _reference(ctx: RunContext, st: dict[str, Any]) -> dict[str, Any]:
    """The model, prompts and DynamicCache reference (tokens, logits) of this run,
    built once per run context and settings."""
    key = (id(ctx), ctx.seed, ctx.model.name, tuple(sorted(st.items())))
    if key in _REF:
        return _REF[key]
    import torch

    from kvbench.hf import e2e as H

    _REF.clear()  # one run's model at a time
    shrink, used = model_fields(ctx, st["shrunk"])
    try:
        cfg = H.build_config(ctx.model.config, shrink)
        model = H.build_model(cfg, torch.float16, ctx.device, ctx.seed)
    except KvbenchError as exc:
        raise Skip(str(exc)) from None
    gen = torch.Generator().manual_seed(ctx.seed)
    ids = torch.randint(0, int(cfg.vocab_size), (st["batch"], st["prompt_tokens"]), generator=gen)
    ids = ids.to(ctx.device)
    ref = H.generate_timed(model, H.make_cache_factory("dynamic", model)(), ids, st["new_tokens"],
                           keep_logits=True)
    _REF[key] = {"model": model, "ids": ids, "tokens": ref["tokens"], "logits": ref["logits"],
                 "used": used}
    return _REF[key]


def _peak_memory(ctx: RunContext) -> tuple[str, int | None]:
    if ctx.cuda:
        import torch

        return "cuda_max_memory_allocated", int(torch.cuda.max_memory_allocated())
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return "rss_peak_process", int(r if sys.platform == "darwin" else r * 1024)  # Linux: KiB
    except (ImportError, OSError):
        return "none", None


def run_cache(ctx: RunContext, name: str, kind: str, fmt: str = "", tier: str = "") -> dict[str, Any]:
    import statistics

    from kvbench.hf import e2e as H

    st = settings(ctx)
    ok, why = support(ctx)
    if not ok:
        raise Skip(why)
    if kind == "dynamic_offload" and not ctx.cuda:
        raise Skip("DynamicCache(offloading=True) offloads layers from the accelerator to host "
                   "memory: needs CUDA")
    if kind.startswith("quantized/"):
        mod = QUANT_BACKENDS[kind.split("/", 1)[1]]
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise Skip(f"QuantizedCache backend {kind.split('/', 1)[1]} needs the {mod} package, "
                       "not installed")
    if kind == "kvbench":
        from kvbench.bench import tier_or_skip

        tier_or_skip(tier, ctx).close()
    ref = _reference(ctx, st)
    model, ids = ref["model"], ref["ids"]
    factory = H.make_cache_factory(kind, model, fmt=fmt, tier=tier, tokens_per_page=ctx.tokens_per_page,
                                   max_tokens=st["prompt_tokens"] + st["new_tokens"], nvme_dir=ctx.nvme_dir)
    config: dict[str, Any] = {"cache": kind, **st, **ref["used"], "seed": ctx.seed,
                              "warmup": ctx.warmup, "samples": ctx.samples, "device": ctx.device}
    if kind == "kvbench":
        config.update({"tier": tier, "format": fmt, "tokens_per_page": ctx.tokens_per_page})

    def one(**kw: Any) -> dict[str, Any]:
        cache = factory()
        try:
            res = H.generate_timed(model, cache, ids, st["new_tokens"], **kw)
            if kind == "kvbench":
                config["paged"] = cache.describe()
            return res
        finally:
            if hasattr(cache, "close"):
                cache.close()

    if ctx.cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    for _ in range(ctx.warmup):
        one()
    ttft, tpot, tok_s, runs = [], [], [], []
    for _ in range(ctx.samples):
        r = one()
        runs.append(r)
        ttft.append(r["ttft_s"])
        tpot.append(statistics.median(r["step_s"]))
        tok_s.append(st["batch"] * st["new_tokens"] / (r["ttft_s"] + sum(r["step_s"])))
    mem_how, mem = _peak_memory(ctx)
    agree, first = H.agreement(runs[-1]["tokens"], ref["tokens"])
    forced = one(forced=ref["tokens"], keep_logits=True)
    max_err, kl = H.logit_errors(forced["logits"], ref["logits"])
    config["peak_memory_method"] = mem_how
    return make_case(
        BENCH_KEY, name, config,
        samples={"ttft_s": ttft, "tpot_s": tpot, "out_tok_s": tok_s,
                 "step_logit_max_abs_err": max_err, "step_logit_kl": kl},
        metrics={"token_agreement": agree, "first_divergence": first,
                 "logit_max_abs_err": max(max_err), "logit_kl": sum(kl) / len(kl),
                 "peak_memory_bytes": mem},
        units={"ttft_s": "s", "tpot_s": "s", "out_tok_s": "tok/s", "token_agreement": "",
               "first_divergence": "step", "logit_max_abs_err": "", "logit_kl": "nats",
               "step_logit_max_abs_err": "", "step_logit_kl": "nats", "peak_memory_bytes": "B"},
        notes=[f"{'shrunk ' if st['shrunk'] else ''}{ref['used']['architecture']} with random weights "
               f"({ref['used']['layers_used']} of {ref['used']['layers_config']} layers, hidden "
               f"{ref['used']['hidden_size_used']}), float16, greedy, EOS ignored",
               "fidelity vs the dynamic case: free-running tokens; logits teacher-forced on the "
               "dynamic run's tokens",
               f"peak memory: {mem_how}" + (" (process-lifetime high-water mark)" if mem_how.startswith("rss") else "")],
    )


def plan(ctx: RunContext) -> list[Case]:
    st = settings(ctx)  # bad options fail here, before anything runs
    kinds = [("dynamic", "dynamic", "", ""), ("dynamic_offload", "dynamic_offload", "", "")]
    kinds += [(f"quantized/{b}", f"quantized/{b}", "", "") for b in QUANT_BACKENDS]
    from kvbench.tiers import TIER_NAMES  # every registered tier, none known here by name

    kinds += [(f"kvbench/{t}/{f}", "kvbench", f, t) for t in TIER_NAMES for f in ctx.formats]
    return [Case(name, {"cache": kind, "format": fmt, "tier": tier, **st},
                 lambda c, n=name, k=kind, f=fmt, t=tier: run_cache(c, n, k, f, t))
            for name, kind, fmt, tier in kinds]


# ----------------------------------------------------------------------------- presentation
def _cases(doc: dict) -> list[dict]:
    return [c for c in doc["cases"] if c["bench"] == BENCH_KEY]


def highlights(doc: dict) -> Highlights | None:
    """Per cache: status, time per output token, first-token time, agreement, or why not."""
    cases = _cases(doc)
    if not cases:
        return None
    rows = []
    for c in cases:
        m = c.get("metrics") or {}
        rows.append([c["name"], c["status"], m.get("tpot_s"), m.get("ttft_s"), m.get("out_tok_s"),
                     m.get("token_agreement"), m.get("first_divergence"), m.get("logit_kl"),
                     c.get("reason") or ""])
    return Highlights("e2e: generation with each cache (vs DynamicCache)",
                      [("cache", ""), ("status", ""), ("time/output token", "s"), ("TTFT", "s"),
                       ("output", "tok/s"), ("token agreement", ""), ("first divergence", "step"),
                       ("KL", "nats"), ("reason", "")], rows)


def draw_tpot(doc: dict) -> tuple[Any, str] | None:
    from kvbench import plotkit

    ok = [c for c in _cases(doc) if c["status"] == "ok" and c["metrics"].get("tpot_s") is not None]
    if not ok:
        return None
    fig = plotkit.new_figure(max(5.0, 1.0 + 0.9 * len(ok)), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    names = [c["name"] for c in ok]
    colour = {n: (plotkit.tier_colour(n.split("/")[1]) if n.startswith("kvbench/") else "#7f7f7f")
              for n in names}
    plotkit.grouped_bars(ax, names, ["tpot"], {(n, "tpot"): c["metrics"]["tpot_s"] * 1e3
                                              for n, c in zip(names, ok)},
                         {"tpot": "#1f77b4"}, errs={(n, "tpot"): tuple(x * 1e3 for x in plotkit.err(c, "tpot_s"))
                                                    for n, c in zip(names, ok)})
    for patch, n in zip(ax.patches, names):
        patch.set_color(colour[n])
    ax.set_ylabel("time per output token (ms)")
    ax.tick_params(axis="x", labelrotation=30)
    cfg = ok[0]["config"]
    return fig, (f"time per output token per cache (median, p10-p90), batch {cfg.get('batch')}, "
                 f"{cfg.get('new_tokens')} new tokens")


BENCH = Benchmark(
    key=BENCH_KEY,
    description="end-to-end greedy generation of a random-weight transformers model: kvbench's "
                "PagedCache vs DynamicCache (TTFT, TPOT, fidelity)",
    plan=plan,
    available=support,
    headline="tpot_s",
    headline_unit="s",
    columns=("ttft_s", "out_tok_s", "token_agreement", "first_divergence", "logit_max_abs_err", "logit_kl"),
    plots=(Plot("e2e_tpot.png", draw_tpot),),
    highlights=highlights,
    options={
        "e2e.batch": "sequences generated together (default 2 quick, 8 full)",
        "e2e.prompt_tokens": "prompt tokens per sequence (default 32 quick, 512 full)",
        "e2e.new_tokens": "tokens generated per sequence, EOS ignored; at least 2 (default 16 quick, 128 full)",
    },
)
