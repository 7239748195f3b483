"""The ``hbm`` placement: every page in device memory (as many layers as fit, kernels
cycling over them), each case sampled alternately with its eager step, a device copy
(the roofline), a twin (fused fp16, or the fused kernel of an unfused case) and, for
unfused cases, the dequantization alone."""

from __future__ import annotations

from typing import Any

from kvbench.bench import RunContext, Skip
from kvbench.bench.decode.cache import Cache, LayerStore, _fill
from kvbench.bench.decode.common import _budget, _cfg, _name
from kvbench.bench.decode.record import _finish, _launch_overhead, _step_note, _verify
from kvbench.bench.decode.steps import _autotune, _copy_arms, _graph, _kernel_step, _layer_fn
from kvbench.results import summarize
from kvbench.store import PagePool
from kvbench.tiers.hbm import HbmTier
from kvbench.units import GB


def _hbm_step(ctx: RunContext, cache: Cache, fused: bool, budget: int) -> dict[str, Any]:
    """Pages of ``cache`` in HBM (as many layers as ``budget`` bytes hold, kernels cycling
    over them), its autotuned tile, and its step (all layers) captured in a CUDA graph."""
    import torch

    per_layer = cache.BP * cache.spec.page_bytes
    if budget < per_layer:
        raise Skip(f"one layer of {cache.B}x{cache.C} {cache.spec.fmt.name} ({per_layer / GB:.1f} GB) "
                   "does not fit in HBM")
    nres = max(1, min(cache.L, budget // per_layer))
    paged = LayerStore(cache, PagePool(HbmTier(), cache.spec, nres * cache.BP), layers=nres)
    pool = paged.pool.tensor  # [nres * BP, page_bytes]: layer l's pages at rows l * BP + b * P + p
    _fill(pool, cache.templates)
    tables = paged.tables("cuda")
    tile, tuned = _autotune(ctx, lambda t: _layer_fn(cache, pool, tables[0], not fused, t))
    step, ws = _kernel_step(cache, pool, tables, unfused=not fused, layers_resident=nres, tile=tile)
    step()
    torch.cuda.synchronize()
    replay, graph, note = _graph(step)
    # what the graph writes: the eager arm's calls re-point ws["out"] (an unfused step
    # allocates its output per call), so the verification reads this one
    graph_out = ws["out"]
    return {"cache": cache, "pool": pool, "tables": tables, "nres": nres, "tile": tile, "tuned": tuned,
            "step": step, "ws": ws, "replay": replay, "graph": graph, "note": note, "out": graph_out}


def _hbm_arms(ctx: RunContext, fmt: str, fused: bool, main: dict, twin: dict | None, info: dict):
    """The arms an hbm case samples alternately, and the ratios taken per pair."""
    import torch

    from kvbench.measure.paired import cuda_arm

    cache = main["cache"]
    copies, keep = _copy_arms(ctx, with_h2d=False)
    arms = {"step": cuda_arm(main["replay"], cache.B, info=info),
            "eager": cuda_arm(main["step"], cache.B, ahead=False), **copies}
    kvb, copied = cache.kv_bytes_per_step, copies["hbm_copy"].work

    def pct_of_roofline(s: dict[str, float]) -> float:
        return (kvb / s["step"]) / (copied / s["hbm_copy"])
    ratios: dict[str, Any] = {"pct_of_roofline": pct_of_roofline}
    if twin is not None:
        arms["twin"] = cuda_arm(twin["replay"], cache.B)
        if fused:
            ratios["speedup_vs_fp16"] = ("step", "twin")
        else:
            ratios["unfused_over_fused_time"] = ("twin", "step")
    if not fused:
        from kvbench.quantized_pages import dequantize_pages

        def dq_only():
            for layer in range(cache.L):
                dequantize_pages(main["pool"], main["tables"][layer % main["nres"]], cache.spec, cache.side,
                                 layer=0, dtype=torch.bfloat16, backend="triton", check=False)
        arms["dq"] = cuda_arm(dq_only, cache.B)
        ratios["dequant_share"] = ("step", "dq")
    return arms, ratios, keep


def hbm_case(ctx: RunContext, fmt: str, batch: int, context: int, fused: bool) -> dict:
    """Decode with every page in HBM, sampled alternately in the case with: the same
    step issued eagerly (launch overhead), a device-to-device copy (the roofline), and
    a twin (fused fp16 for a fused case: speed-up; the fused kernel of the same format
    for an unfused case: its cost) and the separate dequantization (unfused)."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    free = torch.cuda.mem_get_info()[0]
    m = ctx.model
    bf16_kv = 2 * cache.BP * cache.spec.tokens * m.kv_heads * m.head_dim * 2  # unfused K+V copy
    has_twin = not (fused and fmt == "fp16")
    budget = int((0.45 if has_twin else 0.55) * free) - (2 * bf16_kv if not fused else 0)
    main = _hbm_step(ctx, cache, fused, budget // (2 if has_twin else 1))
    twin = None
    if has_twin:
        twin = _hbm_step(ctx, Cache(ctx, "fp16", batch, context) if fused else cache, True,
                         budget // 2)
    info: dict[str, Any] = {}
    arms, ratios, keep = _hbm_arms(ctx, fmt, fused, main, twin, info)
    res = paired.interleave(arms, ratios, budget_s=_budget(ctx),
                            min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
    main["out"].fill_(float("nan"))
    main["replay"]()  # verify what the graph computes
    torch.cuda.synchronize()
    out = main["out"] if main["graph"] is not None else main["ws"]["out"]  # eager: its latest
    extra = {"rel_err": _verify(cache, out, main["pool"],
                                main["tables"][(cache.L - 1) % main["nres"]]), **_launch_overhead(res)}
    notes = [_step_note(main["note"], info, main["graph"]),
             f"{main['nres']} of {cache.L} layers resident (distinct pages), kernels cycle over them; "
             "every step still reads L x the per-layer bytes from HBM",
             "tile (tokens per step x warps x stages) chosen by a per-case autotune of one layer: "
             + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in main["tuned"].items()),
             "roofline: a device-to-device copy (bytes read + written) sampled alternately in this "
             "case; pct_of_roofline per pair"]
    if twin is not None:
        notes.append(("speedup_vs_fp16: per pair with fused fp16 of the same shape" if fused else
                      "unfused_over_fused_time: per pair with the fused kernel of the same format")
                     + ", sampled alternately in this case")
    cfg = _cfg(ctx, "hbm", fmt, batch, context, fused, layers_resident=main["nres"],
               tile=main["tile"].describe())
    res.release()
    del main, twin, arms, keep  # free before the next case allocates
    torch.cuda.empty_cache()
    if not fused:
        extra["dequant_s"] = summarize(res.arms["dq"].seconds)["median"]
    return _finish(ctx, _name("hbm", fmt, batch, context, fused), cfg, cache, res, notes, extra,
                   percent=("pct_of_roofline",),
                   units={"dequant_share": "fraction of step_s (per pair: dequantization alone / unfused step)"})
