"""Transfer benchmark: how fast real KV pages move between HBM, DRAM and NVMe, and how
close that is to what this machine allows.

Cases (``kind`` in each case's config):
  ``ceiling``  large contiguous copies measured in the same run: pinned host->device,
               device->host, both at once, device->device.
  ``paged``    scattered pages of a model's KV shape (random page ids, random order on
               both sides), per direction, format, layout and copy method (every method
               in kvbench.movers.COPY_METHODS that applies to the kinds of the two
               tiers: kvbench.tiers.base.TIER_KINDS); file reads
               cold (page cache dropped and checked with mincore before every sample)
               or warm, each with the same file's own sequential read or write
               measured in the same case as its ceiling; nvme->hbm and hbm->nvme
               also through cuFile (GPUDirect Storage, or cuFile's compatibility
               mode, said which: ``gds``), against the staged pinned pipeline.
  ``sweep``    page size from 16 to 1024 tokens per page.
  components   a model's other growing KV components (indexer keys, compressed
               entries): cold O_DIRECT reads of each one's own pages.
  ``remote/*`` the remote tier's directions: measured by the remote benchmark in a
               launched group (the case says so).
  ``overlap``  copies while a matmul runs on another stream (copy rate and the
               matmul's slowdown).
Bytes counted: payload bytes moved, once (a copy counts what it moves, not read plus
write). GB = 1e9 B.
"""

from __future__ import annotations

from typing import Any, Callable

from kvbench import movers
from kvbench.bench import Benchmark, Case, Plot, RunContext, Skip
from kvbench.bench.transfer import footprint as fp
from kvbench.bench.transfer import plots
from kvbench.bench.transfer.common import (BENCH_KEY, GPU_DIRECTIONS, SWEEP_TOKENS, SWEEP_TOKENS_QUICK,
                                           _kinds, _name, budget_s, ceiling_bytes, depth_sweep, file_bytes,
                                           fio_wanted, sample_bytes)
from kvbench.bench.transfer.files import file_read_case, file_write_case
from kvbench.bench.transfer.gds import plan_gds
from kvbench.bench.transfer.gpu import ceiling_case, gpu_paged_case, nvme_to_hbm_case, overlap_case
from kvbench.results import skipped_case
from kvbench.spec import PageSpec, get_format


def _methods(direction: str) -> list[movers.CopyMethod]:
    """The registered copy methods that apply to a direction, by its tiers' kinds (both
    ways for 'a<->b')."""
    src, dst = _kinds(direction)
    return [m for m in movers.methods_for(src, dst) if "<->" not in direction or m.applies(dst, src)]


def _method_case(ctx: RunContext, name: str, m: movers.CopyMethod, run: Callable,
                 footprint: Callable | None = None) -> Case:
    """A case timing copy method ``m`` (holding ``footprint``: transfer.footprint), or a
    skip saying what it needs when that is missing (it holds nothing: no footprint)."""
    why = m.unmet(ctx.cuda)
    if why is None:
        return Case(name, {}, run, footprint=footprint)

    def skip(c: RunContext) -> dict[str, Any]:
        raise Skip(why)
    return Case(name, {"method": m.name}, skip)


def _read_depths(m: movers.CopyMethod, sweep: list[int], depths: list[int]) -> list[int]:
    return {"one": [1], "sweep": sweep, "deepest": [max(depths)]}[m.queue_depths]


def _write_depths(m: movers.CopyMethod, sweep: list[int], depths: list[int]) -> list[int]:
    """Writes at a swept depth: its shallowest and deepest only."""
    return {"one": [1], "sweep": sorted({min(sweep), max(sweep)}), "deepest": [max(depths)]}[m.queue_depths]


def _plan_gpu(ctx: RunContext, cases: list[Case]) -> None:
    """Ceilings and paged copies between host and device memory, every method that applies."""
    fmts, layouts, t = ctx.formats, ctx.layouts, ctx.tokens_per_page
    add = lambda name, m, fn, size: cases.append(_method_case(ctx, name, m, fn, size))  # noqa: E731
    depths = depth_sweep(ctx)
    for d in ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm"):
        cases.append(Case(f"ceiling/{d}", {"kind": "ceiling", "direction": d}, lambda c, d=d: ceiling_case(c, d),
                          footprint=lambda c, d=d: fp.ceiling(c, d)))
    for d in ("dram->hbm", "hbm->dram"):
        for f in fmts:
            for lay in layouts:
                for m in _methods(d):
                    add(f"{d}/{lay}/{f}/{m.name}", m,
                        lambda c, d=d, f=f, lay=lay, m=m.name: gpu_paged_case(c, d, f, lay, t, m),
                        lambda c, d=d, f=f, lay=lay: fp.gpu_paged(c, d, f, lay, t))
    for lay in layouts:
        for d in ("dram<->hbm", "hbm->hbm"):
            for m in _methods(d):
                add(f"{d}/{lay}/{m.name}", m,
                    lambda c, d=d, lay=lay, m=m.name: gpu_paged_case(c, d, fmts[0], lay, t, m),
                    lambda c, d=d, lay=lay: fp.gpu_paged(c, d, fmts[0], lay, t))
    for f in fmts:
        for lay in layouts:
            cases.append(Case(f"nvme->hbm/{lay}/{f}", {},
                              lambda c, f=f, lay=lay: nvme_to_hbm_case(c, f, lay, max(depths)),
                              footprint=lambda c, f=f, lay=lay: fp.nvme_to_hbm(c, f, lay)))
    plan_gds(ctx, cases, max(depths))  # the same directions through cuFile


def _plan_files(ctx: RunContext, cases: list[Case]) -> None:
    """File reads (cold, then warm where the method reads through the page cache) and
    writes, every registered file method; the queue-depth sweep on the first format."""
    fmts, t, depths = ctx.formats, ctx.tokens_per_page, depth_sweep(ctx)
    add = lambda name, m, fn, size: cases.append(_method_case(ctx, name, m, fn, size))  # noqa: E731
    reads, writes = _methods("nvme->dram"), _methods("dram->nvme")
    for f in fmts:
        for lay in ctx.layouts:
            sweep = depths if f == fmts[0] else [max(depths)]
            at = lambda m, th: f"/qd{th}" if m.queue_depths == "sweep" else ""  # noqa: E731
            cold = lambda c, f=f, lay=lay: fp.file_read(c, f, lay, t, "cold")  # noqa: E731
            for m in reads:
                for th in _read_depths(m, sweep, depths):
                    add(f"nvme->dram/{lay}/{f}/{m.name}{at(m, th)}/cold", m, lambda c, f=f, lay=lay, m=m.name, th=th:
                        file_read_case(c, f, lay, t, m, th, "cold"), cold)
            for m in reads:
                if not m.direct_io:  # O_DIRECT bypasses the page cache: no warm case
                    add(f"nvme->dram/{lay}/{f}/{m.name}/warm", m, lambda c, f=f, lay=lay, m=m.name:
                        file_read_case(c, f, lay, t, m, 1, "warm"),
                        lambda c, f=f, lay=lay: fp.file_read(c, f, lay, t, "warm"))
            for m in writes:
                for th in _write_depths(m, sweep, depths):
                    add(f"dram->nvme/{lay}/{f}/{m.name}{at(m, th)}", m, lambda c, f=f, lay=lay, m=m.name, th=th:
                        file_write_case(c, f, lay, m, th), lambda c, f=f, lay=lay: fp.file_write(c, f, lay))


def _plan_components(ctx: RunContext, cases: list[Case]) -> None:
    """A model with further KV components that grow with context (MLA's indexer keys,
    DeepSeek-V4's compressed entries and their indexer keys): cold O_DIRECT reads of each
    one's own pages (PageSpec.component), first format, every layout, the deepest queue
    depth; page bytes, not what the bytes mean, set the rate, so one method is enough."""
    f, t, depth = ctx.formats[0], ctx.tokens_per_page, max(depth_sweep(ctx))
    m = movers.copy_method("odirect")
    for comp in (c.name for c in ctx.model.components[1:] if c.grows):
        for lay in ctx.layouts:
            name = _name("nvme->dram", PageSpec(ctx.model, get_format(f), t, lay, comp), m.name, depth, "cold")
            cases.append(_method_case(ctx, name, m, lambda c, lay=lay, comp=comp: file_read_case(
                c, f, lay, t, "odirect", depth, "cold", component=comp),
                lambda c, lay=lay, comp=comp: fp.file_read(c, f, lay, t, "cold", comp)))


def _plan_sweeps(ctx: RunContext, cases: list[Case]) -> None:
    """Page size swept (first format, per-layer layout: the small-page case), for the
    methods that declare it; then copies beside a matmul (the methods that declare it)."""
    f, depths = ctx.formats[0], depth_sweep(ctx)
    add = lambda name, m, fn, size: cases.append(_method_case(ctx, name, m, fn, size))  # noqa: E731
    gpu_dirs = ("dram->hbm", "hbm->dram") if ctx.cuda else ()
    for tok in SWEEP_TOKENS_QUICK if ctx.quick else SWEEP_TOKENS:
        for m in _methods("nvme->dram"):
            if m.page_size_sweep:
                add(f"sweep/nvme->dram/{tok}tok/{m.name}", m, lambda c, tok=tok, m=m.name: file_read_case(
                    c, f, "layer", tok, m, max(depths), "cold", kind="sweep"),
                    lambda c, tok=tok: fp.file_read(c, f, "layer", tok, "cold"))
        for d in gpu_dirs:
            for m in _methods(d):
                if m.page_size_sweep:
                    add(f"sweep/{d}/{tok}tok/{m.name}", m, lambda c, d=d, tok=tok, m=m.name: gpu_paged_case(
                        c, d, f, "layer", tok, m, kind="sweep"), lambda c, d=d, tok=tok: fp.gpu_paged(
                        c, d, f, "layer", tok))
    for d in gpu_dirs:
        for m in _methods(d):
            if m.compute_overlap:
                add(f"overlap/{d}/{m.name}", m, lambda c, d=d, m=m.name: overlap_case(c, d, m),
                    lambda c, d=d: fp.overlap(c, d))


#: where the remote tier's directions are measured (they need a peer rank serving pages)
REMOTE_WHY = ("the remote tier's directions (remote->dram, dram->remote, remote->hbm, hbm->remote) are the "
              "remote benchmark's cases, per format, layout, batching and page size against the same-run "
              "contiguous send/recv: they need a peer rank holding the pages (kvbench run --bench remote "
              "--ranks 2, or torchrun; README: Beyond one machine)")


def _plan_remote(cases: list[Case]) -> None:
    """The remote tier in this benchmark's plan: one case naming where it is measured."""
    cfg = {"direction": "remote", "kind": "paged"}
    cases.append(Case("remote/*", cfg, lambda c: skipped_case(BENCH_KEY, "remote/*", cfg, REMOTE_WHY)))


def plan(ctx: RunContext) -> list[Case]:
    """Every case, the copy methods taken from kvbench.movers.COPY_METHODS by the kinds
    of the tiers each direction moves between."""
    # a malformed --set fails before anything runs (one line, exit 2)
    budget_s(ctx), fio_wanted(ctx), depth_sweep(ctx), file_bytes(ctx), ceiling_bytes(ctx)
    sample_bytes(ctx, "dram->hbm")  # transfer.bytes
    cases: list[Case] = []
    if not ctx.cuda:
        from kvbench.tiers.hbm import cuda_status
        why = f"needs a CUDA device: {cuda_status()[1]}"
        for d in GPU_DIRECTIONS:
            cases.append(Case(f"{d}/*", {"direction": d}, lambda c, d=d, why=why: skipped_case(
                BENCH_KEY, f"{d}/*", {"direction": d, "kind": "paged"}, why)))
        cases.append(Case("overlap/*", {"kind": "overlap"}, lambda c, why=why: skipped_case(
            BENCH_KEY, "overlap/*", {"kind": "overlap"}, why)))
        plan_gds(ctx, cases, max(depth_sweep(ctx)))  # by name, each a skip saying why
    else:
        _plan_gpu(ctx, cases)
    _plan_files(ctx, cases)
    _plan_components(ctx, cases)
    _plan_sweeps(ctx, cases)
    _plan_remote(cases)
    return cases


BENCH = Benchmark(
    key=BENCH_KEY,
    description="paged KV bandwidth between hbm, dram and nvme, against ceilings measured in the same run",
    plan=plan,
    headline="gbps",
    headline_unit="GB/s",
    columns=("pct_of_ceiling", "ceiling_gbps", "pct_of_staged", "pct_of_fio", "fio_gbps",
             "pct_of_physical_limit", "physical_limit_gbps", "matmul_slowdown_pct"),
    plots=(Plot("transfer_bandwidth.png", plots.plot_bandwidth), Plot("transfer_page_sweep.png", plots.plot_sweep)),
    highlights=plots.highlights,
    options={
        'transfer.bytes': 'payload bytes per timed sample between hbm and dram, e.g. 256MiB (default 64MiB quick, 512MiB full)',
        'transfer.file_bytes': 'payload bytes per sample to and from files (default 32MiB quick, 256MiB full)',
        'transfer.ceiling_bytes': 'bytes of the contiguous ceiling copies (default 256MiB quick, 1GiB full)',
        'transfer.queue_depths': 'queue depths of O_DIRECT file I/O (requests in flight, one per thread), e.g. 1,4,16,64 (the default)',
        'transfer.budget_s': 'seconds a case samples its paired figures for before it stops short of +-5% (default 6 quick, 20 full)',
        'transfer.fio': 'on (default: fio on the same file as a reference, where fio is installed) or off',
    },
)
