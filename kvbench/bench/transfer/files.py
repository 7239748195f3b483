"""Transfer cases to and from files: paged reads (cold or warm) and writes at a queue
depth, each sampled alternately with the same file's sequential ceiling and fio."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvbench import movers
from kvbench.measure import check_limits, gbps, label_cache
from kvbench.bench import RunContext, Skip, tier_or_skip
from kvbench.results import make_case
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB
from kvbench.bench.transfer.common import (BENCH_KEY, FILE_BLOCK, SEQ_READ_REQUESTS, _cfg, _name,
                                           _pages_for, _rng, budget_s, depth_sweep, fio_engine, fio_wanted,
                                           sample_bytes)

# ----------------------------------------------------------------------------- file cases
def _fill_file_pool(pool: Any, n_total: int, page_bytes: int, odirect: bool):
    """Write random data to every page of a file pool (so sequential reads touch real
    written blocks, never unwritten extents that read as zeros without I/O)."""
    import torch

    data = torch.randint(0, 256, (n_total, page_bytes), dtype=torch.uint8)
    pool.write_pages(list(range(n_total)), data, method="odirect" if odirect else "buffered")
    pool.file().sync()
    return data


def _fio_arm(ctx: RunContext, case_notes: list[str], job_kw: dict[str, Any], log: list) -> Any:
    """fio on the case's file as one more arm, or None (and a note) where fio is missing."""
    from kvbench.measure import fio
    from kvbench.measure.paired import Arm

    if not fio_wanted(ctx):
        case_notes.append("fio reference: off (--set transfer.fio=off)")
        return None
    if fio.fio_path() is None:
        case_notes.append(fio.missing_note())
        return None
    job = fio.FioJob(**job_kw)
    return Arm(fio.sampler(job, log), job.io_bytes), job


def _sample_file_case(ctx: RunContext, arms: dict[str, Any], ceiling: str) -> Any:
    """Interleave the case's arms; ratios of the paged path to its ceiling and to fio."""
    from kvbench.measure.paired import interleave, min_pairs_for

    ratios: dict[str, Any] = {"pct_of_ceiling": ("paged", ceiling)}
    if "fio" in arms:
        # fio does exactly the case's I/O (the same requests' bytes), so per pair: fio's
        # time over kvbench's (not payload bytes over raw bytes)
        ratios["pct_of_fio"] = ("paged", "fio", lambda s: s["fio"] / s["paged"])
    return interleave(arms, ratios, budget_s=budget_s(ctx), min_pairs=min_pairs_for(ctx.samples),
                      warmup=ctx.warmup, block=FILE_BLOCK)


def _file_case(ctx: RunContext, name: str, cfg: dict, res: Any, nbytes: int, notes: list[str],
               direction: str, fio_job: Any, fio_log: list, ceiling: str) -> dict[str, Any]:
    from kvbench.measure import paired

    secs = res.arms["paged"].seconds
    ceil = res.arms[ceiling]
    samples = {"gbps": gbps(nbytes, secs), "seconds": secs,
               "ceiling_gbps": gbps(int(ceil.work), ceil.seconds)}
    units = {"gbps": "GB/s", "seconds": "s", "ceiling_gbps": "GB/s"}
    if fio_job is not None:
        samples["fio_gbps"] = gbps(int(res.arms["fio"].work), res.arms["fio"].seconds)
        units["fio_gbps"] = "GB/s (fio's own bandwidth)"
        cfg["fio"] = {**fio_job.describe(), "version": fio_log[-1]["version"] if fio_log else ""}
        notes.append(f"fio reference: {fio_job.rw}, bs {fio_job.block:,} B, iodepth "
                     f"{fio_job.queue_depth}, {fio_job.engine}, direct={int(fio_job.direct)}, on the "
                     "same file, sampled alternately with this case")
    case = make_case(BENCH_KEY, name, cfg, samples=samples, units=units, notes=notes)
    paired.record(case, res, percent=("pct_of_ceiling", "pct_of_fio"))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    case["units"]["pct_of_ceiling"] = ("% (median of per-pair ratios: the paged path's payload GB/s "
                                       "over the ceiling's GB/s of the bytes it moved)")
    if "pct_of_fio" in case["metrics"]:
        case["units"]["pct_of_fio"] = "% (median of per-pair ratios: fio's time for the same I/O over kvbench's)"
    return check_limits(ctx, case, direction)


def _best_of(candidates: dict[str, Any]) -> str:
    """The candidate arm with the highest rate, each judged by the faster of two untimed
    looks (the first may pay first-touch costs: page faults, a mapping's TLB)."""
    rate = {k: a.work / min(a.sample(2)) for k, a in candidates.items()}
    return max(rate, key=rate.__getitem__)


def _read_ceiling(f: Any, nbytes: int, out: Any, method: str, cache: str, pool: Any,
                  stride: int) -> tuple[Any, str, Any]:
    """A paged read's ceiling: the same number of bytes of the same file read
    sequentially, the best of a few request sizes (judged in two untimed looks each).
    Cold: O_DIRECT (buffered where O_DIRECT is unavailable) after dropping the page
    cache, at queue depth 1 and the largest. Warm: a copy out of the page cache into the
    case's own buffer, by read() (and for mmap also by one copy out of the mapping)."""
    from kvbench.measure.paired import host_arm
    from kvbench.tiers.dram import aligned_host_empty

    sizes = sorted({min(nbytes, r) for r in (stride, *SEQ_READ_REQUESTS)})
    if cache == "cold":
        how = "odirect" if f.fd_direct is not None else "buffered"
        dst = aligned_host_empty(nbytes, pin=False)
        # queue depth 1 and the largest: a virtual disk may serve one stream of large
        # reads faster than many in flight
        cands = {f"{r:,} B requests at depth {movers.queue_depth(tp)}": host_arm(
            movers.sequential_reader(f, nbytes, dst, r, how, tp), nbytes, setup=f.drop_cache)
            for tp in (None, pool) for r in sizes}
        what = f"sequential {'O_DIRECT' if how == 'odirect' else 'buffered'} read, cold"
    else:
        dst = out
        cands = {f"read(), {r:,} B requests": host_arm(movers.sequential_reader(f, nbytes, out, r, "buffered", None),
                                                       nbytes) for r in sizes}
        if movers.copy_method(method).memory_mapped:
            cands["one copy out of the mapped file"] = host_arm(movers.sequential_mmap_reader(f, nbytes, out), nbytes)
        what = "sequential copy out of the page cache (the file cached) into the case's own buffer"
    best = _best_of(cands)
    note = (f"ceiling: the same {nbytes:,} B of the same file, {what}; the best of "
            f"{', '.join(cands)} in two untimed looks each: {best}")
    return cands[best], note, dst


def file_read_case(ctx: RunContext, fmt: str, layout: str, tokens: int, method: str,
                   depth: int, cache: str, kind: str = "paged", component: str = "") -> dict[str, Any]:
    """nvme->dram: scattered pages of a file read into host rows at queue depth
    ``depth``. Sampled alternately with, in the same case: its ceiling (``_read_ceiling``:
    the same bytes of the same file read sequentially, cold, or warm as a copy out of
    the page cache into the same buffer) and fio on the same file (same block size,
    depth, direction and O_DIRECT). ``component``: pages of that KV component of the
    model instead of its primary one (PageSpec.component)."""
    import torch

    from kvbench.measure.paired import host_arm
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    direction = "nvme->dram"
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout, component)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, kind, depth=depth)
    cfg["cache_state"] = cache
    nvme = tier_or_skip("nvme", ctx)
    direct = movers.copy_method(method).direct_io
    if direct and not nvme.odirect_status()[0]:
        raise Skip(f"O_DIRECT unavailable: {nvme.odirect_status()[1]}")
    rng = _rng(ctx, direction, fmt, layout, tokens)
    pool = PagePool(nvme, spec, 2 * n)
    ids = rng.sample(range(2 * n), n)
    out = aligned_host_empty(n * pool.stride, pin=ctx.cuda).view(n, pool.stride)
    tp = ThreadPoolExecutor(depth) if depth > 1 else None
    seq_depth = max(depth_sweep(ctx))
    seq_tp = ThreadPoolExecutor(seq_depth)
    f = pool.file()
    notes: list[str] = []
    fio_log: list = []
    try:
        data = _fill_file_pool(pool, 2 * n, spec.page_bytes, nvme.odirect_status()[0])[ids]
        read = movers.file_reader(f, pool.stride, ids, out, method, tp, spec.page_bytes)
        resid: list[float] = []
        if cache == "cold":
            paged = host_arm(read, n * spec.page_bytes, setup=lambda: resid.append(f.drop_cache()))
        else:
            warm_all = aligned_host_empty(f.nbytes, pin=False)  # held: the reader keeps raw views
            movers.sequential_reader(f, f.nbytes, warm_all, 4 * MiB, "buffered", seq_tp)()
            del warm_all
            paged = host_arm(read, n * spec.page_bytes, setup=lambda: resid.append(f.resident_fraction()))
        seq, note, keep = _read_ceiling(f, n * pool.stride, out, method, cache, seq_tp, pool.stride)
        notes.append(note)
        arms = {"paged": paged, "ceiling": seq}
        got = None if cache == "warm" else _fio_arm(ctx, notes, dict(
            path=str(f.path), rw="randread", block=pool.stride if direct else spec.page_bytes,
            queue_depth=depth, io_bytes=n * (pool.stride if direct else spec.page_bytes),
            direct=direct, engine=fio_engine(method), size=f.nbytes,
            invalidate=cache == "cold"), fio_log)
        fio_job = None
        if got:
            arms["fio"], fio_job = got
        elif cache == "warm":
            notes.append("fio reference: not run for warm reads (copies out of the page cache take "
                         "a few ms; fio times a job to the millisecond)")
        res = _sample_file_case(ctx, arms, "ceiling")
        del keep
        read()  # the ceiling arm may share ``out``: read the pages once more to verify them
        if not torch.equal(out[:, : spec.page_bytes], data):
            raise AssertionError("pages read back differ from pages written")
    finally:
        seq_tp.shutdown()
        if tp:
            tp.shutdown()
        pool.close()
        nvme.close()
    case = _file_case(ctx, _name(direction, spec, method, depth, cache, kind), cfg, res,
                      n * spec.page_bytes, notes, direction, fio_job, fio_log, "ceiling")
    label_cache(case, resid[ctx.warmup:], want=cache)
    return case


def file_write_case(ctx: RunContext, fmt: str, layout: str, method: str, depth: int) -> dict[str, Any]:
    """dram->nvme: scattered pages written at queue depth ``depth``, then fdatasync
    (durable). Sampled alternately with, in the same case: a sequential O_DIRECT and a
    sequential buffered write (+ fdatasync) of the same bytes to the same file, 4 MiB
    requests (the ceiling: the better of the two), and fio on the same file."""
    import torch

    from kvbench.measure.paired import host_arm
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    direction = "dram->nvme"
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, "paged", depth=depth)
    nvme = tier_or_skip("nvme", ctx)
    direct = movers.copy_method(method).direct_io
    if direct and not nvme.odirect_status()[0]:
        raise Skip(f"O_DIRECT unavailable: {nvme.odirect_status()[1]}")
    rng = _rng(ctx, direction, fmt, layout)
    pool = PagePool(nvme, spec, 2 * n)
    ids = rng.sample(range(2 * n), n)
    src = aligned_host_empty(n * pool.stride, pin=ctx.cuda).view(n, pool.stride)
    src.zero_()
    data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8)
    src[:, : spec.page_bytes].copy_(data)
    tp = ThreadPoolExecutor(depth) if depth > 1 else None
    f = pool.file()
    notes = ["each sample ends with fdatasync (durable)"]
    fio_log: list = []
    try:
        _fill_file_pool(pool, 2 * n, spec.page_bytes, nvme.odirect_status()[0])
        write = movers.file_writer(f, pool.stride, ids, src, method, tp, spec.page_bytes)
        nseq = n * pool.stride
        arms = {"paged": host_arm(write, n * spec.page_bytes)}
        for how in ("odirect", "buffered"):
            if how == "odirect" and f.fd_direct is None:
                continue
            for r in sorted({min(nseq, 4 * MiB), min(nseq, pool.stride)}):
                arms[f"seq_{how}_{r}"] = host_arm(movers.sequential_writer(
                    f, nseq, src.view(-1), r, tp, direct=how == "odirect"), nseq)
        got = _fio_arm(ctx, notes, dict(
            path=str(f.path), rw="randwrite", block=pool.stride if direct else spec.page_bytes,
            queue_depth=depth, io_bytes=n * (pool.stride if direct else spec.page_bytes),
            direct=direct, engine=fio_engine(method), size=f.nbytes, invalidate=False,
            fsync_end=True), fio_log)
        fio_job = None
        if got:
            arms["fio"], fio_job = got
        # the ceiling: whichever sequential write is faster, judged on a first look
        first = {k: a.sample(1)[0] / a.work for k, a in arms.items()}
        best = min((k for k in arms if k.startswith("seq_")), key=first.__getitem__)
        res = _sample_file_case(ctx, {k: v for k, v in arms.items()
                                      if k == best or not k.startswith("seq_")}, best)
        write()  # fio and the sequential writes overwrite pages: write them once more to verify
        if not torch.equal(pool.read_pages(ids), data):
            raise AssertionError("pages in the file differ from pages written")
    finally:
        if tp:
            tp.shutdown()
        pool.close()
        nvme.close()
    how, size = best[4:].rsplit("_", 1)
    notes.append(f"ceiling: sequential {how} write of the same bytes to the same file, {int(size):,} B "
                 f"requests at queue depth {depth}, + fdatasync: the fastest of O_DIRECT and buffered "
                 "writes in 4 MiB and page-sized requests in a first untimed round")
    return _file_case(ctx, _name(direction, spec, method, depth), cfg, res, n * spec.page_bytes,
                      notes, direction, fio_job, fio_log, best)
