"""Without CUDA: the torch reference decode on the CPU with the KV read from pageable
DRAM or, layer by layer, from an NVMe file (O_DIRECT, cold), labelled as CPU
reference numbers; and on any machine the Triton kernel checked against the torch
reference at a small size (compiled on CUDA, interpreted on the CPU)."""

from __future__ import annotations

from typing import Any

from kvbench.bench import RunContext, Skip, odirect_tier_or_skip
from kvbench.bench.decode.cache import Cache, LayerStore, _fill, _host_store
from kvbench.bench.decode.common import BENCH_KEY, REL_TOL, _budget, _cfg, _name
from kvbench.bench.decode.record import _finish
from kvbench.results import make_case
from kvbench.spec import get_format
from kvbench.store import PagePool


def _cpu_step(ctx: RunContext, fmt: str, batch: int, context: int, placement: str):
    """(cache, step, setup, close, resid) of the torch reference decode on the CPU, KV
    read from pageable DRAM or layer by layer from an NVMe file (O_DIRECT, cold)."""
    from kvbench import movers
    from kvbench.attention import decode_reference

    cache = Cache(ctx, fmt, batch, context)
    paged = _host_store(cache, pin=False)
    host = paged.pool.tensor
    tables = paged.tables("cpu")
    resid: list[float] = []
    out: dict[str, Any] = {}
    if placement == "dram":
        def step():
            for layer in range(cache.L):
                out["o"] = decode_reference(cache.q, host, tables[layer], cache.lens, cache.spec, 0, cache.side)
        return cache, step, None, lambda: None, resid
    from kvbench.tiers.dram import DramTier

    tier = odirect_tier_or_skip(ctx)
    pool = PagePool(tier, cache.spec, cache.L * cache.BP)
    on_file = LayerStore(cache, pool)
    for layer in range(cache.L):  # layer by layer: the same pages at the same offsets
        pool.write_pages(list(on_file.rows[layer]), paged.view(layer), method="odirect")
    f = pool.file()
    f.sync()
    # one layer at a time lands in a staging store with the file's row stride
    staging = LayerStore(cache, PagePool(DramTier(pinned=False), cache.spec, cache.BP, stride=pool.stride),
                         layers=1)
    stage = staging.pool.tensor
    readers = [movers.file_reader(f, pool.stride, list(on_file.rows[layer]),
                                  stage, "odirect", None, cache.spec.page_bytes)
               for layer in range(cache.L)]
    local = staging.tables("cpu")[0]

    def step_nvme():
        for layer in range(cache.L):
            readers[layer]()
            out["o"] = decode_reference(cache.q, stage, local, cache.lens, cache.spec, 0, cache.side)

    def close():
        pool.close()
        tier.close()
    return cache, step_nvme, lambda: resid.append(f.drop_cache()), close, resid


def cpu_reference_case(ctx: RunContext, fmt: str, batch: int, context: int, placement: str) -> dict:
    """The torch reference decode on the CPU, KV read from pageable DRAM or from an NVMe
    file (O_DIRECT, cold) layer by layer; a quantized format is sampled alternately with
    fp16 at the same placement and shape (speedup_vs_fp16, per pair). CPU reference
    numbers, not GPU figures."""
    from kvbench.measure import paired

    notes = ["CPU reference numbers (torch gather + fp32 softmax attention), not GPU figures"]
    closers = []
    try:
        cache, step, setup, close, resid = _cpu_step(ctx, fmt, batch, context, placement)
        closers.append(close)
        arms = {"step": paired.host_arm(step, cache.B, setup)}
        ratios = {}
        if fmt != "fp16":
            _, step16, setup16, close16, _ = _cpu_step(ctx, "fp16", batch, context, placement)
            closers.append(close16)
            arms["fp16"] = paired.host_arm(step16, cache.B, setup16)
            ratios["speedup_vs_fp16"] = ("step", "fp16")
            notes.append("speedup_vs_fp16: per pair of this step and an fp16 step of the same "
                         "placement and shape, sampled alternately in this case")
        res = paired.interleave(arms, ratios, budget_s=_budget(ctx),
                                min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
    finally:
        for c in closers:
            c()
    if resid:
        worst = max(resid[ctx.warmup:] or [1.0])
        notes.append(f"{'cold' if worst <= 0.01 else 'warm'}: at most {worst:.1%} of the file "
                     "resident before each step")
    cfg = _cfg(ctx, placement, fmt, batch, context, True, implementation="torch reference")
    return _finish(ctx, _name(placement, fmt, batch, context, True) + "/cpu-reference", cfg,
                   cache, res, notes)


def kernel_check_case(ctx: RunContext, fmt: str) -> dict:
    """The Triton kernel (fused and, for quantized formats, unfused) against the torch
    reference at a small size: compiled on CUDA, interpreted on the CPU."""
    from kvbench.attention import decode_fused, decode_reference, decode_unfused
    from kvbench.tiers.dram import DramTier
    from kvbench.tiers.hbm import HbmTier

    gap = ctx.model.attention_gap("decode")
    if gap:
        raise Skip(gap)
    cache = Cache(ctx, fmt, 2, 3 * ctx.tokens_per_page - 5)
    dev = "cuda" if ctx.cuda else "cpu"
    tier = HbmTier() if ctx.cuda else DramTier(pinned=False)
    paged = LayerStore(cache, PagePool(tier, cache.spec, cache.BP), layers=1)
    pool = paged.pool.tensor
    _fill(pool, cache.templates)
    t = paged.tables(dev)[0]
    ref = decode_reference(cache.q, pool, t, cache.lens, cache.spec, 0, cache.side)
    metrics = {}
    for fused, fn in ((True, decode_fused), (False, decode_unfused)):
        if not fused and not get_format(fmt).quantized:
            continue
        o = fn(cache.q, pool, t, cache.lens, cache.spec, 0, cache.side)
        err = float((o.float() - ref).norm() / ref.norm())
        if not err < REL_TOL:
            raise AssertionError(f"{'fused' if fused else 'unfused'} kernel differs from the reference: {err:.2e}")
        metrics["rel_err" if fused else "unfused_rel_err"] = err
    return make_case(BENCH_KEY, f"kernel-check/{fmt}",
                     {"kind": "kernel_check", "format": fmt, "device": dev, "model": ctx.model.name,
                      "interpreted": not ctx.cuda},
                     metrics=metrics, units={k: "relative Frobenius error" for k in metrics},
                     notes=["Triton kernel vs fp32 torch reference" + ("" if ctx.cuda else
                            " (Triton interpreter: correctness only)")])
