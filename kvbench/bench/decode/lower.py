"""The placements below HBM on CUDA. ``dram_prefetch``, ``hot_window`` and ``nvme``
stage each layer's pages into a two-slot HBM ring on a copy stream while the previous
layer's attention runs (from pinned DRAM, or from an NVMe file through pinned staging);
``dram_zero_copy`` has the kernel read pinned host pages in place."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvbench.bench import RunContext, Skip, odirect_tier_or_skip
from kvbench.bench.decode.cache import Cache, LayerStore, _fill, _host_store
from kvbench.bench.decode.common import _budget, _cfg, _name, _nvme_threads
from kvbench.bench.decode.record import _finish, _launch_overhead, _step_note, _tier_roofline, _verify
from kvbench.bench.decode.steps import _copy_arms, _graph, _kernel_step, _layer_fn, _tuned_tile
from kvbench.store import PagePool
from kvbench.units import MiB

#: staging slots in HBM: a layer is copied into one while attention reads the other
RING_SLOTS = 2


def _ring_tables(slots: list[LayerStore], hot: LayerStore | None, cold_blocks: int,
                 layers: int) -> dict[tuple[int, int], Any]:
    """Per (slot, layer), int32 ``[B, P]`` on the CPU: the cold blocks of every
    sequence in the staging slot, its hot blocks (if any) in the layer's hot pages."""
    hot_tables = hot.tables("cpu") if hot is not None else None
    out = {}
    for s, slot in enumerate(slots):
        staged = slot.tables("cpu")[0]
        for layer in range(layers):
            t = staged.clone()
            if hot_tables is not None:
                t[:, cold_blocks:] = hot_tables[layer]
            out[(s, layer)] = t
    return out


class _Ring:
    """HBM for a pipelined placement, one page pool: ``RING_SLOTS`` staging slots of one
    layer of the batch each, then the hot pages of every layer (``hot_window``: the last
    ``window`` tokens of every sequence); rows padded to the file's 4 KiB stride for
    nvme, so a layer read from the file moves in one copy. Also the pinned host pages
    (not for nvme), the block tables per (slot, layer), the two streams and their
    events, and the prepared attention launches."""

    def __init__(self, ctx: RunContext, cache: Cache, fmt: str, placement: str, window: int) -> None:
        import torch

        from kvbench.tiers.hbm import HbmTier
        from kvbench.tiers.nvme import DIRECT_ALIGN
        from kvbench.units import align_up

        self.cache, self.R = cache, RING_SLOTS
        pb = cache.spec.page_bytes
        self.hot_blocks = min(cache.P, -(-window // cache.spec.tokens)) if window else 0
        self.cold_blocks = cache.P - self.hot_blocks
        row = align_up(pb, DIRECT_ALIGN) if placement == "nvme" else pb
        self.hbm = PagePool(HbmTier(), cache.spec, self.R * cache.BP + cache.L * cache.B * self.hot_blocks,
                            stride=row)
        _fill(self.hbm.tensor, cache.templates)
        self.slots = [LayerStore(cache, self.hbm, layers=1) for _ in range(self.R)]
        for slot in self.slots:
            slot.view(0).zero_()  # staging starts unlike any page: verification sees missed copies
        # the tokens past the cold blocks: hot_blocks pages per sequence and layer
        self.hot = LayerStore(cache, self.hbm, tokens=cache.C - self.cold_blocks * cache.spec.tokens) \
            if self.hot_blocks else None
        self.host = _host_store(cache, pin=True) if placement != "nvme" else None
        self.tables = {key: t.cuda() for key, t in
                       _ring_tables(self.slots, self.hot, self.cold_blocks, cache.L).items()}
        self.copy_s, self.comp_s = torch.cuda.Stream(), torch.cuda.Stream()
        self.copied = [torch.cuda.Event() for _ in range(self.R)]
        self.freed = [torch.cuda.Event() for _ in range(self.R)]
        self.tile = _tuned_tile(ctx, fmt)
        self.attend = {key: _layer_fn(cache, self.hbm.tensor, t, False, self.tile)
                       for key, t in self.tables.items()}
        self.out: dict[str, Any] = {}

    def h2d(self, layer: int, slot: int, src=None) -> None:
        """Move a layer's cold blocks (of every sequence) into a staging slot: from the
        pinned host pages, or from ``src`` (nvme: the pinned slot the file was read into)."""
        c = self.cache
        src = src if src is not None else self.host.view(layer)
        dst = self.slots[slot].view(0)
        if self.hot_blocks:  # the cold blocks of each sequence: one contiguous copy each
            s3, d3 = src.view(c.B, c.P, -1), dst.view(c.B, c.P, -1)
            for b in range(c.B):
                d3[b, :self.cold_blocks].copy_(s3[b, :self.cold_blocks], non_blocking=True)
        else:
            dst.copy_(src, non_blocking=True)

    def enqueue_layer(self, layer: int, slot: int, src=None, also=None) -> None:
        """Copy stream: wait until the slot is free, move the layer in, mark it copied;
        compute stream: wait for the copy, attend, mark the slot free."""
        import torch

        with torch.cuda.stream(self.copy_s):
            self.copy_s.wait_event(self.freed[slot])
            self.h2d(layer, slot, src)
            self.copied[slot].record(self.copy_s)
            if also is not None:
                also.record(self.copy_s)
        with torch.cuda.stream(self.comp_s):
            self.comp_s.wait_event(self.copied[slot])
            self.out["o"] = self.attend[(slot, layer)]()
            self.freed[slot].record(self.comp_s)

    def step(self) -> None:
        """One decode step from pinned DRAM: every layer through the ring."""
        self.copy_s.wait_stream(self.comp_s)  # copies start after the step's start event
        for layer in range(self.cache.L):
            self.enqueue_layer(layer, layer % self.R)
        self.comp_s.wait_stream(self.copy_s)

    def verify(self) -> float:
        """The last layer's output against the reference computed from where its pages
        came from (the host pages; for nvme, the slot the file's pages reached)."""
        last = self.cache.L - 1
        slot = last % self.R
        table = self.tables[(slot, last)]
        if self.host is None:
            return _verify(self.cache, self.out["o"], self.hbm.tensor, table)
        ref_pool = self.hbm.tensor.clone()
        r = self.slots[slot].rows[0]
        ref_pool[r.start: r.stop].copy_(self.host.view(last))
        return _verify(self.cache, self.out["o"], ref_pool, table)

    def release(self) -> None:
        """Drop the prepared launches and the pools (before the next case allocates)."""
        self.attend = None
        self.hbm.close()
        if self.host is not None:
            self.host.pool.close()
        self.hbm = self.host = self.slots = self.hot = None


def prefetch_case(ctx: RunContext, fmt: str, batch: int, context: int, placement: str,
                  window: int = 0) -> dict:
    """dram_prefetch / hot_window / nvme: a two-slot HBM staging ring fed per layer by a
    copy stream (from pinned DRAM, or from NVMe through pinned staging); sampled
    alternately with the copies its roofline is made of."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    ring = _Ring(ctx, cache, fmt, placement, window)
    extra_notes: list[str] = []
    # bytes moved per step: the cold blocks of every sequence, every layer
    cold_bytes = cache.L * cache.B * ring.cold_blocks * cache.spec.page_bytes
    info: dict[str, Any] = {}
    if placement == "nvme":
        step, cleanup, resid, seq_arm = _nvme_pipeline(ctx, cache, ring.enqueue_layer, ring.R)
        arms = {"step": paired.host_arm(step, cache.B, setup=cleanup["drop"]), "seq": seq_arm}
    else:
        arms = {"step": paired.cuda_arm(ring.step, cache.B, ring.comp_s, info=info)}
        cleanup = {"close": lambda: None}
    copies, keep = _copy_arms(ctx)
    arms.update(copies)
    try:
        res = paired.interleave(arms, {"pct_of_roofline": _tier_roofline(cache, cold_bytes, arms)},
                                budget_s=_budget(ctx), min_pairs=paired.min_pairs_for(ctx.samples),
                                warmup=ctx.warmup)
    finally:
        cleanup["close"]()
    if placement == "nvme":
        worst = max(resid[ctx.warmup:] or [1.0])
        state = "cold" if worst <= 0.01 else "warm"
        extra_notes.append(f"{state}: at most {worst:.1%} of the file resident before each step")
    else:
        from kvbench.timing import ahead_note

        extra_notes.append(ahead_note(info))
    torch.cuda.synchronize()
    err = ring.verify()
    cfg = _cfg(ctx, placement, fmt, batch, context, True, hot_window_tokens=ring.hot_blocks * cache.spec.tokens,
               staging_slots=ring.R, bytes_from_tier_per_step=cold_bytes, tile=ring.tile.describe())
    res.release()
    ring.release()  # free before the next case allocates
    del keep
    torch.cuda.empty_cache()
    return _finish(ctx, _name(placement, fmt, batch, context, True), cfg, cache, res,
                   [f"roofline: {cold_bytes:,} B per step from the tier (a contiguous pinned "
                    "host->device copy" + (", and for nvme the file read sequentially, the slower"
                                           if placement == "nvme" else "")
                    + "), overlapped with HBM reads (a device-to-device copy), each sampled "
                    "alternately with the step; pct_of_roofline per pair"] + extra_notes,
                   {"rel_err": err}, percent=("pct_of_roofline",))


def _nvme_pipeline(ctx, cache, enqueue_layer, R):
    """A file pool holding every layer's pages, layer-major (each layer one region of
    consecutive pages); per layer: O_DIRECT threads
    read the layer's region (4 MiB requests) into a pinned slot, one H2D copy moves it
    to the HBM staging slot, attention runs; the next layer's read overlaps it."""
    import torch

    from kvbench import movers
    from kvbench.measure import staged
    from kvbench.tiers.dram import aligned_host_empty

    tier = odirect_tier_or_skip(ctx)
    pool = PagePool(tier, cache.spec, cache.L * cache.BP)
    stride = pool.stride
    offsets = [r.start * stride for r in LayerStore(cache, pool).rows]  # layer l's region
    region = cache.BP * stride
    f = pool.file()
    tp = ThreadPoolExecutor(_nvme_threads(ctx))
    pinned = [aligned_host_empty(region, pin=True).view(cache.BP, stride) for _ in range(R)]
    pinned[0].zero_()
    _fill(pinned[0], cache.templates.cpu())
    for layer in range(cache.L):  # every layer's region holds the same encoded pages
        movers.sequential_writer(f, region, pinned[0], 64 * MiB, tp, offset=offsets[layer])()
    h2d_done = [torch.cuda.Event() for _ in range(R)]

    def hand_on(c: staged.Chunk):
        # chunk = layer c.index in pinned slot c.slot: H2D copy, then attention
        enqueue_layer(c.index, c.slot, src=pinned[c.slot], also=h2d_done[c.slot])
        return h2d_done[c.slot]  # the pinned slot is free once its H2D copy has finished
    reader = staged.StagedReader(staged.region_chunks(
        f, region, offsets, pinned, "odirect", tp, 4 * MiB),
        R, hand_on)
    resid: list[float] = []

    def step():
        reader()
        torch.cuda.synchronize()  # the last layers' attention too

    def close():
        tp.shutdown()
        pool.close()
        tier.close()

    try:
        from kvbench.measure.paired import host_arm

        seq_out = aligned_host_empty(min(f.nbytes, 4 * region), pin=True)
        n_seq = seq_out.numel()
        seq_arm = host_arm(movers.sequential_reader(f, n_seq, seq_out, 4 * MiB, "odirect", tp), n_seq,
                           setup=f.drop_cache)
    except BaseException:
        close()
        raise
    return step, {"drop": lambda: resid.append(f.drop_cache()), "close": close}, resid, seq_arm


def zero_copy_case(ctx: RunContext, fmt: str, batch: int, context: int) -> dict:
    """The kernel reads pinned host pages over PCIe (unified addressing); sampled
    alternately with the eager step (launch overhead) and a contiguous H2D copy (the
    roofline: every KV byte at the link's rate)."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    paged = _host_store(cache, pin=True)
    host = paged.pool.tensor
    tables = paged.tables("cuda")
    tile = _tuned_tile(ctx, fmt)
    step, ws = _kernel_step(cache, host, tables, zero_copy=True, tile=tile)
    step()
    torch.cuda.synchronize()
    replay, graph, note = _graph(step)
    graph_out = ws["out"]  # what the graph writes (fused: the prepared output)
    info: dict[str, Any] = {}
    copies, keep = _copy_arms(ctx)
    arms = {"step": paired.cuda_arm(replay, cache.B, info=info),
            "eager": paired.cuda_arm(step, cache.B, ahead=False), "h2d": copies["h2d"]}
    res = paired.interleave(arms, {"pct_of_roofline": _tier_roofline(cache, cache.kv_bytes_per_step, arms)},
                            budget_s=_budget(ctx), min_pairs=paired.min_pairs_for(ctx.samples),
                            warmup=ctx.warmup)
    graph_out.fill_(float("nan"))
    replay()  # verify what the graph computes
    torch.cuda.synchronize()
    extra = {"rel_err": _verify(cache, graph_out, host, tables[-1].cpu()), **_launch_overhead(res)}
    cfg = _cfg(ctx, "dram_zero_copy", fmt, batch, context, True, tile=tile.describe())
    step_note = _step_note(note, info, graph)
    res.release()
    paged = host = step = ws = graph = replay = graph_out = None
    del keep
    return _finish(ctx, _name("dram_zero_copy", fmt, batch, context, True), cfg, cache, res,
                   ["the kernel loads pinned host pages over PCIe (unified addressing)", step_note,
                    "roofline: every KV byte at the rate of a contiguous pinned host->device copy "
                    "sampled alternately with the step; pct_of_roofline per pair"], extra,
                   percent=("pct_of_roofline",))
