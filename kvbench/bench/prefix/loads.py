"""The load side of the prefix benchmark: a prefix's KV pages moved from a DRAM or an
NVMe page pool into the destination pool, each load sampled alternately with a
recompute of the same tokens (the speed-up is paired)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvbench import movers
from kvbench.bench import RunContext, Skip, tier_or_skip
from kvbench.results import make_case
from kvbench.spec import PageSpec
from kvbench.units import GB, MiB
from kvbench.bench.prefix.prefill import Prefill, prefill_layers
from kvbench.bench.prefix.common import BENCH_KEY, CPU_NOTE, MIN_SAMPLES, PUBLISHED_CPU_LOAD_SPEEDUP, PUBLISHED_MODEL, _budget, _chunk_bytes, _load_cfg, _name, _spec, _threads, sources


def _prefix_pages(pool: Any, tokens: int) -> list[int]:
    """Allocate one sequence of ``tokens`` tokens in the pool; its page ids."""
    from kvbench.store import PagedKVStore

    store = PagedKVStore(pool)
    store.add_sequence(0)
    store.append_tokens(0, tokens)
    return store.block_table(0)[0]


def _span(ids: list[int]) -> int:
    """First page id of a run of consecutive ids (a fresh pool hands them out so)."""
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise AssertionError("the prefix's pages are not consecutive in a fresh pool")
    return ids[0]


def _fill_bytes(t: Any, ctx: RunContext, key: int) -> None:
    """Random bytes into a 1-D uint8 tensor (generated on the GPU when there is one)."""
    import torch

    dev = "cuda" if ctx.cuda else "cpu"
    g = torch.Generator(device=dev).manual_seed(ctx.seed * 1000 + key)
    step = 64 * MiB
    for s in range(0, t.numel(), step):
        m = min(step, t.numel() - s)
        r = torch.empty(-(-m // 8), dtype=torch.int64, device=dev).random_(generator=g)
        t[s: s + m].copy_(r.view(torch.uint8)[:m])


def _equal_rows(got: Any, want: Any) -> bool:
    """Byte equality of two [n, B] uint8 tensors (any devices), in 256 MiB slices."""
    import torch

    if got.shape != want.shape:
        return False
    rows = max(1, (256 * MiB) // max(1, got.shape[1]))
    for s in range(0, got.shape[0], rows):
        if not torch.equal(got[s: s + rows].cpu(), want[s: s + rows].cpu()):
            return False
    return True


def _dst_tier(ctx: RunContext):
    return tier_or_skip("hbm" if ctx.cuda else "dram", ctx)


def _recompute_arm(ctx: RunContext, tokens: int) -> tuple[Any, str]:
    """The recompute of the same N tokens as an arm of a load case, sampled alternately
    with the load: on CUDA every layer (CUDA events), on the CPU one layer of each
    distinct shape in fp32, weighted by how many layers have it (as recompute_case)."""
    import torch

    from kvbench.measure.paired import Arm, cuda_arm

    kinds, _ = prefill_layers(ctx.model)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    pf = Prefill(ctx.model, tokens, kinds, device=ctx.device, dtype=dtype, seed=ctx.seed,
                 kv_slots=len(kinds) if ctx.cuda else 1)
    if ctx.cuda:
        torch.cuda.synchronize()
        return cuda_arm(pf.run_all, 1.0, torch.cuda.Stream()), f"all {len(kinds)} layers, bf16"
    counts = Counter(kinds)

    def sample(k: int) -> list[float]:
        out = []
        for _ in range(k):
            total = 0.0
            for kd, c in counts.items():
                t0 = time.perf_counter()
                pf.run_one(kd)
                total += c * (time.perf_counter() - t0)
            out.append(total)
        return out
    return Arm(sample, 1.0), f"one layer per distinct shape in fp32, x its {len(kinds)}-layer count"


def _paired_load(ctx: RunContext, tokens: int, load: Any, notes: list[str]) -> Any:
    """Sample the load and the recompute of the same prefix alternately."""
    from kvbench.measure.paired import interleave, min_pairs_for

    why = "" if "recompute" in sources(ctx) else "recompute not among --set prefix.sources"
    if not why:
        try:
            rec, how = _recompute_arm(ctx, tokens)
        except Skip as e:
            why = str(e)
    if why:
        notes.append(f"{why}: break-even and speed-up not computed")
        return interleave({"load": load}, {}, budget_s=_budget(ctx), min_pairs=min_pairs_for(ctx.samples),
                          warmup=min(ctx.warmup, 1))
    # at least MIN_SAMPLES pairs, not paired.MIN_PAIRS: on the CPU one recompute of a long
    # prefix takes seconds to minutes (with 3 pairs the interval is their whole range)
    notes.append(f"speed-up vs recompute: per pair of a load and a recompute of the same {tokens} "
                 f"tokens sampled alternately in this case (recompute: {how})")
    return interleave({"load": load, "recompute": rec}, {"speedup_vs_recompute": ("load", "recompute")},
                      budget_s=_budget(ctx), min_pairs=min(MIN_SAMPLES, ctx.samples) if not ctx.cuda
                      else min_pairs_for(ctx.samples), warmup=min(ctx.warmup, 1))


def dram_case(ctx: RunContext, tokens: int) -> dict[str, Any]:
    """Pages of one prefix, consecutive in a host pool, moved by one coalesced copy."""
    import torch

    from kvbench.measure.paired import cuda_arm, host_arm
    from kvbench.store import PagePool

    spec = _spec(ctx)
    n = spec.pages_for_tokens(tokens)
    cfg = _load_cfg(ctx, "dram", tokens, spec, n)
    src = PagePool(tier_or_skip("dram", ctx), spec, n)
    dst = PagePool(_dst_tier(ctx), spec, n)
    notes: list[str] = []
    try:
        s0, d0 = _span(_prefix_pages(src, tokens)), _span(_prefix_pages(dst, tokens))
        _fill_bytes(src.tensor.view(-1), ctx, key=1)
        dst.tensor.zero_()
        a, b = src.tensor[s0: s0 + n], dst.tensor[d0: d0 + n]  # contiguous: stride == page_bytes
        cfg.update(src=src.tier.label, dst=dst.tier.label, method="one coalesced copy_")
        if ctx.cuda:
            torch.cuda.synchronize()
            load = cuda_arm(lambda: b.copy_(a, non_blocking=True), 1.0, torch.cuda.Stream())
            notes.append("one cudaMemcpyAsync of the prefix's pages, pinned host -> HBM; CUDA events")
        else:
            load = host_arm(lambda: b.copy_(a), 1.0)
            notes += [CPU_NOTE, "source: a pageable host pool; destination: a second host pool "
                      "standing in for HBM (no GPU here)"]
        res = _paired_load(ctx, tokens, load, notes)
        if ctx.cuda:
            torch.cuda.synchronize()
        if not _equal_rows(b, a):
            raise AssertionError("pages differ after the dram load")
    finally:
        src.close()
        dst.close()
    return _load_result(ctx, cfg, tokens, spec, n, res, notes, "dram->hbm")


def nvme_case(ctx: RunContext, tokens: int) -> dict[str, Any]:
    """Pages of one prefix in a file pool, read cold in chunks at queue depth
    ``prefix.threads`` into two staging buffers (pinned with CUDA), each copied to the
    destination while the other fills (``kvbench.measure.staged``)."""
    import torch

    from kvbench.measure import label_cache, staged
    from kvbench.measure.paired import host_arm
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    spec = _spec(ctx)
    n = spec.pages_for_tokens(tokens)
    cfg = _load_cfg(ctx, "nvme", tokens, spec, n)
    nvme = tier_or_skip("nvme", ctx)
    odirect, why = nvme.odirect_status()
    method = "odirect" if odirect else "buffered"
    threads, cuda, pb = _threads(ctx), ctx.cuda, spec.page_bytes
    notes: list[str] = []
    if not odirect:
        notes.append(f"O_DIRECT unavailable here ({why}): buffered reads")
    tp = ThreadPoolExecutor(threads)
    src = dst = None
    try:
        src = PagePool(nvme, spec, n)
        dst = PagePool(_dst_tier(ctx), spec, n)
        stride = src.stride
        s0, d0 = _span(_prefix_pages(src, tokens)), _span(_prefix_pages(dst, tokens))
        if s0 != 0:
            raise AssertionError("the prefix does not start at the file's first page")
        # the pages' bytes (padding to the 4 KiB stride included), written sequentially
        host = aligned_host_empty(n * stride, pin=False)
        _fill_bytes(host, ctx, key=2)
        f = src.file()
        movers.sequential_writer(f, n * stride, host, 4 * MiB, tp, direct=odirect)()
        data = host.view(n, stride)[:, :pb]
        dst.tensor.zero_()
        out = dst.tensor[d0: d0 + n]
        chunk = max(1, min(n, _chunk_bytes(ctx) // stride))
        staging = [aligned_host_empty(chunk * stride, pin=cuda).view(chunk, stride) for _ in range(2)]
        hand_on = _hand_on(cuda, out, staging, chunk, stride, pb)
        load = staged.StagedReader(staged.page_chunks(f, stride, list(range(s0, s0 + n)), staging,
                                                      method, tp, pb, chunk), 2, hand_on)
        resid: list[float] = []
        if cuda:
            torch.cuda.synchronize()
        res = _paired_load(ctx, tokens, host_arm(load, 1.0, setup=lambda: resid.append(f.drop_cache())),
                           notes)
        if cuda:
            torch.cuda.synchronize()
        if not _equal_rows(out, data):
            raise AssertionError("pages differ after the nvme load")
    finally:
        tp.shutdown()
        for p in (src, dst):
            if p is not None:
                p.close()
        nvme.close()
    cfg.update(src=f"nvme ({method})", dst="hbm" if cuda else "dram (pageable, standing in for hbm)",
               method=(f"{method} reads, {threads} threads, into pinned staging, double-buffered "
                       "with H2D copies" if cuda else
                       f"{method} reads, {threads} threads, into pageable staging, then a host copy"),
               threads=threads, chunk_pages=chunk, chunk_bytes=chunk * stride, file_stride=stride)
    notes.append(f"chunks of {chunk} pages read by {threads} threads; " + (
        "each chunk's H2D copy overlaps the next chunk's read" if cuda else
        "each chunk copied to the destination after its read (no overlap on the CPU)")
        + "; host timer around the whole load, final synchronisation included")
    if not cuda:
        notes.insert(0, CPU_NOTE)
    case = _load_result(ctx, cfg, tokens, spec, n, res, notes, "nvme->hbm")
    label_cache(case, resid[min(ctx.warmup, 1):], want="cold")
    return case


def _hand_on(cuda: bool, out: Any, staging: list[Any], chunk: int, stride: int, pb: int):
    """What happens to a chunk of a prefix's pages once read into staging: on CUDA an
    H2D copy (through a device staging buffer when the file's rows are padded), else a
    host copy."""
    import torch

    if not cuda:
        def host_copy(c):
            out[c.start: c.start + c.rows].copy_(staging[c.slot][:c.rows, :pb])
        return host_copy
    direct_rows = stride == pb  # staging rows match destination rows: copy them as is
    dev_stage = None if direct_rows else [torch.empty(chunk, stride, dtype=torch.uint8, device="cuda")
                                          for _ in range(2)]
    done = [torch.cuda.Event() for _ in range(2)]
    stream = torch.cuda.Stream()

    def h2d(c):
        rows = out[c.start: c.start + c.rows]
        with torch.cuda.stream(stream):
            if direct_rows:
                rows.copy_(staging[c.slot][:c.rows], non_blocking=True)
            else:
                dev_stage[c.slot][:c.rows].copy_(staging[c.slot][:c.rows], non_blocking=True)
                rows.copy_(dev_stage[c.slot][:c.rows, :pb])
            done[c.slot].record(stream)
        return done[c.slot]
    return h2d


def _load_result(ctx: RunContext, cfg: dict[str, Any], tokens: int, spec: PageSpec, n: int,
                 res: Any, notes: list[str], direction: str) -> dict[str, Any]:
    from kvbench.measure import paired

    nbytes = n * spec.page_bytes
    secs = res.arms["load"].seconds
    samples = {"seconds": secs, "load_s": secs, "gbps": [nbytes / s / GB for s in secs]}
    if "recompute" in res.arms:
        samples["recompute_s"] = res.arms["recompute"].seconds
    case = make_case(BENCH_KEY, _name(tokens, cfg["source"]), cfg, samples=samples,
                     units={"seconds": "s", "load_s": "s", "gbps": "GB/s", "kv_bytes": "B",
                            "bytes": "B", "recompute_s": "s (same N, sampled alternately in this case)",
                            "break_even_gbps": "GB/s (KV bytes / recompute_s: load is faster above it)",
                            "speedup_vs_recompute": "x (recompute_s / load_s, median of per-pair ratios)"},
                     metrics={"kv_bytes": cfg["kv_bytes"], "bytes": nbytes},
                     notes=notes)
    if nbytes != cfg["kv_bytes"]:
        case["notes"].append(f"pages hold {nbytes:,} B for the model's {cfg['kv_bytes']:,} B of KV "
                             "(whole pages; block pages hold every layer for every token)")
    paired.record(case, res)
    if "recompute_s" in case["metrics"]:
        case["metrics"]["break_even_gbps"] = cfg["kv_bytes"] / case["metrics"]["recompute_s"] / GB
    if ctx.cuda:
        from kvbench.measure import check_limits

        check_limits(ctx, case, direction)
        if cfg["source"] == "dram" and ctx.model.name == PUBLISHED_MODEL:
            lo, hi = PUBLISHED_CPU_LOAD_SPEEDUP
            case["notes"].append(f"published: time to first token with the prefix loaded from CPU vs "
                                 f"recomputed {lo:g}-{hi:g}x faster ({PUBLISHED_MODEL}, H100); a TTFT "
                                 "figure, this case times the KV load alone")
    return case
