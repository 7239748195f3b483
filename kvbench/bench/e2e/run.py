"""Running one e2e case: the run's model, prompts and DynamicCache reference (built once
per run), the cache's timed generations sampled alternately with DynamicCache's on the
same model and inputs, fidelity against the reference, and peak memory."""

from __future__ import annotations

import statistics
from typing import Any, Callable

from kvbench.bench import RunContext, Skip
from kvbench.bench.e2e.cases import CacheCase, unmet
from kvbench.bench.e2e.settings import BENCH_KEY, budget_s, settings, shrink_fields, source_fields, support
from kvbench.errors import KvbenchError
from kvbench.results import make_case

#: the model, prompts and reference of the run context being run (one at a time), or
#: the error building them gave (so that every case says it without building again)
_REF: dict[tuple, dict[str, Any]] = {}

UNITS = {"ttft_s": "s", "tpot_s": "s", "out_tok_s": "tok/s", "step_s": "s", "dynamic_tpot_s": "s",
         "token_agreement": "", "first_divergence": "step", "logit_max_abs_err": "", "logit_kl": "nats",
         "step_logit_max_abs_err": "", "step_logit_kl": "nats", "peak_memory_bytes": "B",
         "peak_pinned_host_bytes": "B", "pinned_pool_bytes": "B",
         "tpot_ratio_vs_dynamic": "x (this cache's time per output token over DynamicCache's, paired)"}


def _reference(ctx: RunContext, st: dict[str, Any]) -> dict[str, Any]:
    """The model, prompts ``[batch, prompt_tokens]`` and DynamicCache reference (greedy
    tokens and logits) of this run, built once per run context and settings."""
    key = (id(ctx), ctx.seed, ctx.model.name, tuple(sorted(st.items())))
    if key not in _REF:
        _REF.clear()  # one run's model at a time
        try:
            _REF[key] = _build_reference(ctx, st)
        except (Skip, KvbenchError) as exc:
            _REF[key] = {"error": (type(exc), str(exc))}
    got = _REF[key]
    if "error" in got:
        kind, why = got["error"]
        raise kind(why)
    return got


def _build_reference(ctx: RunContext, st: dict[str, Any]) -> dict[str, Any]:
    import torch

    from kvbench.hf import e2e as H

    fields = source_fields(ctx)
    if st["weights"] == "random":
        try:
            cfg = H.build_config(fields, shrink_fields(fields, st["shrunk"]))
            model = H.build_model(cfg, torch.float16, ctx.device, ctx.seed)
        except KvbenchError as exc:  # an architecture this transformers cannot build
            raise Skip(str(exc)) from None
    else:  # a folder the user named: failing to load it is an error, not a skip
        model = H.load_model(st["weights"], torch.float16, ctx.device)
    used = {"architecture": fields["model_type"], "weights": st["weights"], "shrunk": st["shrunk"],
            "layers_config": fields.get("num_hidden_layers"), "hidden_size_config": fields.get("hidden_size"),
            **H.describe_model(model)}
    gen = torch.Generator().manual_seed(ctx.seed)
    ids = torch.randint(0, used["vocab_used"], (st["batch"], st["prompt_tokens"]), generator=gen)
    ids = ids.to(ctx.device)
    ref = H.generate_timed(model, H.make_cache_factory("dynamic", model)(), ids, st["new_tokens"],
                           keep_logits=True)
    return {"model": model, "ids": ids, "tokens": ref["tokens"], "logits": ref["logits"], "used": used}


def _generation(model: Any, factory: Callable[[], Any], ids: Any, new: int, attention: bool = False,
                **kw: Any) -> dict[str, Any]:
    """One timed generation with a fresh cache (closed after); a PagedCache's
    ``describe()`` under ``paged``. attention: the model's attention is kvbench's
    (``kvbench.hf.attention``) for this generation."""
    import contextlib

    from kvbench.hf import e2e as H
    from kvbench.hf.attention import use_paged_attention

    cache = factory()
    try:
        with use_paged_attention(model) if attention else contextlib.nullcontext():
            res = H.generate_timed(model, cache, ids, new, **kw)
        if hasattr(cache, "describe"):
            res["paged"] = cache.describe()
        return res
    finally:
        if hasattr(cache, "close"):
            cache.close()


def _tpot_ratio(sec: dict[str, float]) -> float:
    """One pair's ratio: the cache's median step time over DynamicCache's."""
    return sec["case"] / sec["dynamic"]


def _timed(ctx: RunContext, st: dict[str, Any], ref: dict[str, Any], factory: Callable[[], Any],
           paired_with: Callable[[], Any] | None, attention: bool = False) -> tuple[list[dict], list[dict], Any]:
    """(this cache's timed generations, DynamicCache's, the Interleaved result or None).

    Without ``paired_with`` (the reference itself): ``--warmup`` untimed, then
    ``--samples`` timed generations. With it: ``--warmup`` untimed generations of each,
    then both sampled alternately (A B B A ..., one arm sample = one whole generation,
    its figure the generation's median decode-step time for ``batch`` tokens) until
    ``tpot_ratio_vs_dynamic``'s 95% interval is within +-5% or ``e2e.budget_s`` is
    spent, after at least max(6, --samples) pairs."""
    from kvbench.measure import paired

    model, ids, new = ref["model"], ref["ids"], st["new_tokens"]
    if paired_with is None:
        for _ in range(ctx.warmup):
            _generation(model, factory, ids, new)
        return [_generation(model, factory, ids, new) for _ in range(ctx.samples)], [], None
    runs: dict[str, list[dict]] = {"case": [], "dynamic": []}

    def arm(key: str, make: Callable[[], Any], att: bool) -> Any:
        def sample(k: int) -> list[float]:
            got = [_generation(model, make, ids, new, att) for _ in range(k)]
            runs[key].extend(got)
            return [statistics.median(r["step_s"]) for r in got]
        return paired.Arm(sample, work=st["batch"])

    for _ in range(ctx.warmup):
        _generation(model, factory, ids, new, attention)
        _generation(model, paired_with, ids, new)
    res = paired.interleave({"case": arm("case", factory, attention), "dynamic": arm("dynamic", paired_with, False)},
                            {"tpot_ratio_vs_dynamic": ("case", "dynamic", _tpot_ratio)},
                            budget_s=budget_s(ctx), min_pairs=paired.min_pairs_for(ctx.samples))
    res.release()
    return runs["case"], runs["dynamic"], res


def _reset_peaks(ctx: RunContext) -> None:
    if ctx.cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        if hasattr(torch.cuda.memory, "reset_peak_host_memory_stats"):
            torch.cuda.memory.reset_peak_host_memory_stats()


def _peaks(ctx: RunContext, cc: CacheCase, paged: dict[str, Any] | None) -> tuple[dict, dict, list[str]]:
    """(metrics, config entries, notes) of peak memory since ``_reset_peaks``."""
    if not ctx.cuda:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ({"peak_memory_bytes": int(r if sys.platform == "darwin" else r * 1024)},  # Linux: KiB
                {"peak_memory_method": "rss_peak_process"},
                ["peak memory: the process's RSS high-water mark (process-lifetime: it only grows "
                 "case to case); peak pinned host memory: not measured, no CUDA (host memory is pageable)"])
    import torch

    from kvbench.tiers import tier_class

    metrics = {"peak_memory_bytes": int(torch.cuda.max_memory_allocated())}
    cfg = {"peak_memory_method": "cuda_max_memory_allocated"}
    notes = ["peak memory: torch.cuda.max_memory_allocated over one generation of this cache alone "
             "(the teacher-forced one)"]
    if hasattr(torch.cuda.memory, "host_memory_stats"):
        metrics["peak_pinned_host_bytes"] = int(torch.cuda.memory.host_memory_stats().get("allocated_bytes.peak", 0))
        cfg["peak_pinned_host_method"] = "torch.cuda.memory.host_memory_stats allocated_bytes.peak"
        notes.append("peak_pinned_host_bytes: torch's pinned-memory allocator (pin_memory, offload buffers), "
                     "peak over the same generation")
    else:
        notes.append(f"peak pinned host memory: not measured, torch {torch.__version__} has no "
                     "torch.cuda.memory.host_memory_stats")
    tier = tier_class(cc.tier) if cc.kind == "kvbench" else None
    if tier is not None and tier.host_memory and not tier.remote and paged and paged.get("pages"):
        metrics["pinned_pool_bytes"] = int(paged["pages"]) * int(paged["page_bytes"])
        notes.append("pinned_pool_bytes: kvbench's page pool, pinned with cudaHostRegister outside torch's "
                     "allocator (pages x page_bytes, rounded up to whole OS pages when pinned)")
    return metrics, cfg, notes


def _config(ctx: RunContext, cc: CacheCase, st: dict[str, Any], used: dict[str, Any],
            first: dict[str, Any]) -> dict[str, Any]:
    """The case's resolved configuration; ``first``: one of its generations."""
    cfg: dict[str, Any] = {"cache": cc.kind, **st, **used, "seed": ctx.seed, "warmup": ctx.warmup,
                           "samples": ctx.samples, "device": ctx.device,
                           "step_context_tokens": first["step_context"],
                           "kv_format": cc.kv_format or None, "decode_placement": cc.decode_placement or None}
    if cc.kind == "kvbench":
        paged = first["paged"]
        cfg.update({"tier": cc.tier, "hot_tier": cc.hot_tier or None, "warm_tier": cc.warm_tier or None,
                    "format": cc.fmt,
                    "tokens_per_page": ctx.tokens_per_page, "paged": paged,
                    # layer layout: a page holds tokens_per_page tokens of one layer, K and V
                    "kv_bytes_per_token": paged["page_bytes"] // paged["tokens_per_page"] * used["layers_used"]})
    elif not cc.kv_format:
        cfg["kv_bytes_per_token"] = None  # QuantizedCache's own format: not a kvbench one
    if not cc.is_reference:
        cfg["budget_s"] = budget_s(ctx)
    return cfg


def _notes(st: dict[str, Any], used: dict[str, Any], paired: bool) -> list[str]:
    what = ("random weights" if used["weights"] == "random" else f"the weights in {used['weights']}")
    notes = [f"{'shrunk ' if st['shrunk'] else ''}{used['architecture']} with {what} "
             f"({used['layers_used']} of {used['layers_config']} layers, hidden {used['hidden_size_used']}), "
             f"{used['dtype']}, greedy, EOS ignored",
             "fidelity vs the dynamic case: free-running tokens; logits teacher-forced on the "
             "dynamic run's tokens",
             "step_s: every decode step of every timed generation, one generation after another; "
             "step j of each attends over config.step_context_tokens[j] tokens"]
    if paired:
        notes.append("tpot_ratio_vs_dynamic: per pair, this cache's median decode-step time over "
                     "DynamicCache's, whole generations sampled alternately in this case (A B B A ...), "
                     "same model and inputs; dynamic_tpot_s: DynamicCache's side of the pairs")
    return notes


def run_cache(ctx: RunContext, cc: CacheCase) -> dict[str, Any]:
    """One cache's case: timed (paired with DynamicCache unless it is DynamicCache),
    fidelity against the reference, peak memory over one generation of its own."""
    from kvbench.hf import e2e as H
    from kvbench.measure import paired

    st = settings(ctx)
    ok, why = support(ctx)
    if not ok:
        raise Skip(why)
    why = unmet(ctx, cc)
    if why:
        raise Skip(why)
    ref = _reference(ctx, st)
    model, used = ref["model"], ref["used"]
    factory = H.make_cache_factory(cc.kind, model, fmt=cc.fmt, tier=cc.tier, tokens_per_page=ctx.tokens_per_page,
                                   max_tokens=st["prompt_tokens"] + st["new_tokens"], nvme_dir=ctx.nvme_dir,
                                   placement=cc.placement(st["hot_window"], st["warm_window"]))
    attention = cc.kind == "kvbench" and st["attention"] == "kvbench"
    try:
        probe = factory()  # PagedCache refuses what it cannot page (sliding-window layers) here
    except KvbenchError as exc:
        raise Skip(str(exc)) from None
    if hasattr(probe, "close"):
        probe.close()
    dynamic = None if cc.is_reference else H.make_cache_factory("dynamic", model)
    runs, dyn_runs, res = _timed(ctx, st, ref, factory, dynamic, attention)
    _reset_peaks(ctx)
    forced = _generation(model, factory, ref["ids"], st["new_tokens"], attention, forced=ref["tokens"],
                         keep_logits=True)
    mem, mem_cfg, mem_notes = _peaks(ctx, cc, forced.get("paged"))
    agree, first_div = H.agreement(runs[-1]["tokens"], ref["tokens"])
    max_err, kl = H.logit_errors(forced["logits"], ref["logits"])
    tok = st["batch"] * st["new_tokens"]
    samples = {"ttft_s": [r["ttft_s"] for r in runs], "tpot_s": [statistics.median(r["step_s"]) for r in runs],
               "out_tok_s": [tok / (r["ttft_s"] + sum(r["step_s"])) for r in runs],
               "step_s": [s for r in runs for s in r["step_s"]],
               "step_logit_max_abs_err": max_err, "step_logit_kl": kl}
    if dyn_runs:
        samples["dynamic_tpot_s"] = [statistics.median(r["step_s"]) for r in dyn_runs]
    case = make_case(
        BENCH_KEY, cc.name, {**_config(ctx, cc, st, used, runs[0]), **mem_cfg}, samples=samples,
        metrics={"token_agreement": agree, "first_divergence": first_div, "logit_max_abs_err": max(max_err),
                 "logit_kl": sum(kl) / len(kl), **mem},
        units=UNITS, notes=_notes(st, used, res is not None) + mem_notes)
    if res is not None:
        paired.record(case, res)
    return case
