"""Transfer cases through GPUDirect Storage (kvbench.gds): nvme->hbm pages read by cuFile
straight into the HBM pool's rows, sampled alternately with the staged pinned pipeline
(gpu.nvme_to_hbm_case's) and the file's sequential cold read; hbm->nvme pages written
by cuFile from the HBM pool, then fdatasync, against a sequential O_DIRECT write of the
same bytes. Each case says which path ran (``config.gds_path``): GDS proper or cuFile's
compatibility mode, which is POSIX I/O through host bounce buffers and never called GDS."""

from __future__ import annotations

import os
from typing import Any, Callable

from kvbench import movers
from kvbench.bench import Case, RunContext, Skip, odirect_tier_or_skip, tier_or_skip
from kvbench.bench.transfer import footprint as fp
from kvbench.bench.transfer.common import (BENCH_KEY, FILE_BLOCK, _cfg, _name, _pages_for, _rng, budget_s,
                                           sample_bytes)
from kvbench.bench.transfer.files import _fill_file_pool, _read_ceiling
from kvbench.bench.transfer.gpu import staged_pipeline
from kvbench.measure import check_limits, gbps, label_cache
from kvbench.results import make_case, skipped_case
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB

METHOD = "cufile"
READ, WRITE = "nvme->hbm", "hbm->nvme"


def plan_gds(ctx: RunContext, cases: list[Case], depth: int) -> None:
    """nvme->hbm and hbm->nvme through cuFile at queue depth ``depth``, every format and
    layout; without CUDA each is a skip saying why (what kvbench.gds.gds_status says
    first: no CUDA device; with one, each case asks gds_status when it runs)."""
    from kvbench.tiers.hbm import cuda_status

    ok, dev = (True, "") if ctx.cuda else cuda_status()
    why = None if ctx.cuda else f"needs a CUDA device: {dev}" if not ok else "needs a CUDA device (planned without)"
    for d, run, size in ((READ, gds_read_case, fp.gds_read), (WRITE, gds_write_case, fp.gds_write)):
        for f in ctx.formats:
            for lay in ctx.layouts:
                name = _name(d, PageSpec(ctx.model, get_format(f), ctx.tokens_per_page, lay), METHOD, depth)
                if why is not None:
                    cfg = {"direction": d, "kind": "paged", "method": METHOD}
                    cases.append(Case(name, cfg, lambda c, n=name, cfg=cfg: skipped_case(BENCH_KEY, n, cfg, why)))
                    continue
                cases.append(Case(name, {}, lambda c, run=run, f=f, lay=lay: run(c, f, lay, depth),
                                  footprint=lambda c, size=size, f=f, lay=lay: size(c, f, lay)))


def _pools(ctx: RunContext, spec: PageSpec, file_pages: int, hbm_pages: int) -> tuple[Any, Any, Any]:
    """(nvme tier, file pool, HBM pool whose rows have the file's aligned stride), or
    Skip where O_DIRECT or GDS cannot run (gds_status's reason)."""
    from kvbench.gds import gds_status
    from kvbench.store import PagePool

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    nvme = odirect_tier_or_skip(ctx)
    try:
        ok, _path, why = gds_status(nvme.odirect_status())
        if not ok:
            raise Skip(why)
        fpool = PagePool(nvme, spec, file_pages)
        hpool = PagePool(tier_or_skip("hbm", ctx), spec, hbm_pages, stride=fpool.stride)
    except BaseException:
        nvme.close()
        raise
    return nvme, fpool, hpool


def _in_pools(ctx: RunContext, spec: PageSpec, n: int, hbm_pages: int,
              body: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """``body(file pool, HBM pool)`` with a file pool of 2n pages and an HBM pool of
    ``hbm_pages`` (_pools), all closed after."""
    nvme, fpool, hpool = _pools(ctx, spec, 2 * n, hbm_pages)
    try:
        return body(fpool, hpool)
    finally:
        fpool.close()
        hpool.close()
        nvme.close()


def _check_pages(got: Any, data: Any, what: str) -> None:
    import torch

    if not torch.equal(got.cpu(), data.cpu()):
        bad = int((got.cpu() != data.cpu()).any(dim=1).sum())
        raise AssertionError(f"{bad} of {len(data)} pages differ after {what}")


def _path_notes(g: Any, seen: str, how: str) -> list[str]:
    """What ran, said plainly: GDS proper, or cuFile's compatibility mode (not GDS)."""
    notes = [f"gds_path {seen}: {how}; {g.backend}"]
    if seen == "cufile-unverified":
        notes.append("GPUDirect Storage predicted by cuFile's driver properties, not observed: cuFile may have "
                     "run this file through its compatibility mode (host bounce buffers)")
    elif seen != "cufile":
        notes.append(f"not GPUDirect Storage ({seen}): some or all bytes went through host bounce "
                     "buffers by POSIX I/O inside the library")
    return notes + g.notes


def gds_read_case(ctx: RunContext, fmt: str, layout: str, depth: int) -> dict[str, Any]:
    """nvme->hbm: one cuFileRead per page at queue depth ``depth``, into the HBM pool's
    rows, cold (page cache dropped before every sample, residency recorded). Sampled
    alternately with the staged pinned pipeline (``staged``) and the ceiling: the same
    file's sequential O_DIRECT read, cold (files._read_ceiling)."""
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, READ))
    return _in_pools(ctx, spec, n, 2 * n, lambda f, h: _read(ctx, spec, n, f, h, depth))


def _read(ctx: RunContext, spec: PageSpec, n: int, src: Any, dst: Any, depth: int) -> dict[str, Any]:
    import torch

    from kvbench.gds import GdsFile, io_pool
    from kvbench.measure import paired

    rng = _rng(ctx, READ, spec.fmt.name, spec.layout, METHOD)
    src_ids, dst_ids = rng.sample(range(2 * n), n), rng.sample(range(2 * n), n)
    data = _fill_file_pool(src, 2 * n, spec.page_bytes, True)[src_ids]
    f, nbytes, pool, resid = src.file(), n * spec.page_bytes, io_pool(depth), []
    try:
        with GdsFile(f, [dst.tensor], pool) as g:
            gds = g.page_io(False, dst.tensor, dst_ids, src_ids, src.stride, src.stride)
            staged = staged_pipeline(src, dst, src_ids, dst_ids, pool)
            ceiling, note, keep = _read_ceiling(f, n * src.stride, None, "odirect", "cold", pool, src.stride)
            arms = {"paged": paired.host_arm(gds, nbytes, setup=lambda: resid.append(f.drop_cache())),
                    "staged": paired.host_arm(staged, nbytes, setup=f.drop_cache), "ceiling": ceiling}
            res = paired.interleave(arms, {"pct_of_ceiling": ("paged", "ceiling"),
                                           "pct_of_staged": ("paged", "staged")}, budget_s=budget_s(ctx),
                                    min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup,
                                    block=FILE_BLOCK)
            # both paths wrote the same rows while sampling: each verified on its own
            dst.tensor.zero_()
            torch.cuda.synchronize()
            f.drop_cache()
            seen, how = g.observe(gds, write=False)
            _check_pages(dst.read_pages(dst_ids), data, "nvme->hbm by cuFile reads")
            dst.tensor.zero_()
            torch.cuda.synchronize()
            staged()
            _check_pages(dst.read_pages(dst_ids), data, "nvme->hbm by the staged pipeline")
            notes = [note + "; sampled alternately", "staged: gpu.staged_pipeline, nvme_to_hbm_case's (O_DIRECT "
                     f"reads at depth {depth} into two pinned 8 MiB slots, H2D + scatter on one stream)"]
            notes += _path_notes(g, seen, how)
            backend = g.backend
        res.release()
        del keep
    finally:
        pool.shutdown()
    case = _record(ctx, READ, spec, (n, src.stride), depth, res, notes, seen, backend)
    label_cache(case, resid[ctx.warmup:], want="cold")
    return case


def gds_write_case(ctx: RunContext, fmt: str, layout: str, depth: int) -> dict[str, Any]:
    """hbm->nvme: one cuFileWrite per page from the HBM pool's rows at queue depth
    ``depth``, then fdatasync (durable). Sampled alternately with the ceiling: a
    sequential O_DIRECT write of the same bytes (from pinned memory) to the same file,
    + fdatasync, the faster of 4 MiB and page-sized requests in two untimed looks."""
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, WRITE))
    return _in_pools(ctx, spec, n, n, lambda f, h: _write(ctx, spec, n, h, f, depth))


def _write(ctx: RunContext, spec: PageSpec, n: int, src: Any, dst: Any, depth: int) -> dict[str, Any]:
    import torch

    from kvbench.gds import GdsFile, io_pool
    from kvbench.measure import paired
    from kvbench.tiers.dram import aligned_host_empty

    ids = _rng(ctx, WRITE, spec.fmt.name, spec.layout, METHOD).sample(range(2 * n), n)
    data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8, device="cuda")
    src.tensor.zero_()
    src.tensor[:, : spec.page_bytes].copy_(data)
    f, nseq, stride = dst.file(), n * dst.stride, dst.stride
    host = aligned_host_empty(nseq, pin=True)  # the ceiling's source
    host.random_(0, 256)
    _fill_file_pool(dst, 2 * n, spec.page_bytes, True)
    pool = io_pool(depth)
    try:
        with GdsFile(f, [src.tensor], pool) as g:
            io = g.page_io(True, src.tensor, list(range(n)), ids, stride, stride)

            def write() -> None:
                io()
                os.fdatasync(f.fd)
            seqs = {r: paired.host_arm(movers.sequential_writer(f, nseq, host, r, pool, direct=True), nseq)
                    for r in sorted({min(nseq, 4 * MiB), stride})}
            best = paired.best_of(seqs)
            res = paired.interleave({"paged": paired.host_arm(write, n * spec.page_bytes), "ceiling": seqs[best]},
                                    {"pct_of_ceiling": ("paged", "ceiling")}, budget_s=budget_s(ctx),
                                    min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup,
                                    block=FILE_BLOCK)
            seen, how = g.observe(write, write=True)  # the ceiling overwrote pages: write them again
            f.drop_cache()
            _check_pages(dst.read_pages(ids, method="odirect"), data, "hbm->nvme by cuFile writes")
            notes = ["each sample ends with fdatasync (durable)",
                     f"ceiling: the same {nseq:,} B written sequentially to the same file by O_DIRECT from "
                     f"pinned memory, {best:,} B requests at depth {depth}, + fdatasync: the faster of 4 MiB "
                     "and page-sized requests in two untimed looks; sampled alternately"]
            notes += _path_notes(g, seen, how)
            backend = g.backend
        res.release()
    finally:
        pool.shutdown()
    return _record(ctx, WRITE, spec, (n, stride), depth, res, notes, seen, backend)


def _record(ctx: RunContext, direction: str, spec: PageSpec, pages: tuple[int, int], depth: int, res: Any,
            notes: list[str], seen: str, backend: str) -> dict[str, Any]:
    """The case (``pages``: how many, and the file's stride): payload GB/s, the ceiling's
    GB/s of the bytes it moved, the paired ratios, and which path ran."""
    from kvbench.measure import paired

    n, stride = pages
    nbytes = n * spec.page_bytes
    cfg = _cfg(ctx, direction, spec, METHOD, n, "paged", depth=depth)
    cfg.update(gds_path=seen, gds_backend=backend)
    ceil = res.arms["ceiling"]
    samples = {"gbps": gbps(nbytes, res.arms["paged"].seconds), "seconds": res.arms["paged"].seconds,
               "ceiling_gbps": gbps(int(ceil.work), ceil.seconds)}
    if "staged" in res.arms:
        samples["staged_gbps"] = gbps(nbytes, res.arms["staged"].seconds)
    units = {k: "GB/s" for k in samples}
    units["seconds"] = "s"
    case = make_case(BENCH_KEY, _name(direction, spec, METHOD, depth), cfg, samples=samples, units=units,
                     notes=[f"{n} pages of {spec.page_bytes:,} B, scattered, random order, one request each "
                            f"of the file's {stride:,} B stride", *notes])
    paired.record(case, res, percent=("pct_of_ceiling", "pct_of_staged"))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    case["units"]["pct_of_ceiling"] = ("% (median of per-pair ratios: cuFile's payload GB/s over the "
                                       "ceiling's GB/s of the bytes it moved)")
    if "pct_of_staged" in case["metrics"]:
        case["units"]["pct_of_staged"] = ("% (median of per-pair ratios: cuFile's payload GB/s over the "
                                          "staged pinned pipeline's, the same pages)")
    return check_limits(ctx, case, direction)

