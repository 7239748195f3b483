"""Transfer benchmark: how fast real KV pages move between HBM, DRAM and NVMe, and how
close that is to what this machine allows.

Cases (``kind`` in each case's config):
  ``ceiling``  large contiguous copies measured in the same run: pinned host->device,
               device->host, both at once, device->device.
  ``paged``    scattered pages of a model's KV shape (random page ids, random order on
               both sides), per direction, format, layout and copy method; file reads
               cold (page cache dropped and checked with mincore before every sample)
               or warm, each with the same file's own sequential read or write
               measured in the same case as its ceiling.
  ``sweep``    page size from 16 to 1024 tokens per page.
  ``overlap``  copies while a matmul runs on another stream (copy rate and the
               matmul's slowdown).
Bytes counted: payload bytes moved, once (a copy counts what it moves, not read plus
write). GB = 1e9 B.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kvbench import movers
from kvbench.measure import check_limits, gbps, label_cache
from kvbench.bench import Benchmark, Case, RunContext, Skip, odirect_tier_or_skip, tier_or_skip
from kvbench.results import make_case, skipped_case, summarize
from kvbench.timing import ahead_note
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB, parse_size

BENCH_KEY = "transfer"

GPU_DIRECTIONS = ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm", "nvme->hbm")
FILE_DIRECTIONS = ("nvme->dram", "dram->nvme")
SWEEP_TOKENS = (16, 32, 64, 128, 256, 512, 1024)
SWEEP_TOKENS_QUICK = (16, 64, 256, 1024)

#: file cases sample each arm this many times in a row per round: 1, strict
#: alternation (on the CI VM's virtual disk, blocks of 4 pair kvbench with fio 5%
#: worse than strict alternation: the disk's state drifts within a second)
FILE_BLOCK = 1
#: request sizes a sequential read ceiling tries (with the page's own size), the best kept
SEQ_READ_REQUESTS = (1 * 2 ** 20, 4 * 2 ** 20)

#: bidirectional per_page copies alternate between the two streams every this many pages
PER_PAGE_CHUNK = 256


# ----------------------------------------------------------------------------- sizes
def sample_bytes(ctx: RunContext, direction: str) -> int:
    """Bytes moved per timed sample (enough that per-call overheads are visible but
    a sample lasts milliseconds, not seconds)."""
    if "nvme" in direction:
        return ctx.opt("transfer.file_bytes", (32 if ctx.quick else 256) * MiB, parse_size)
    return ctx.opt("transfer.bytes", (64 if ctx.quick else 512) * MiB, parse_size)


def depth_sweep(ctx: RunContext) -> list[int]:
    """Queue depths of O_DIRECT file I/O: requests in flight, one per thread."""
    return ctx.opt_list("transfer.queue_depths", [1, 4, 16, 64])


def fio_engine(method: str) -> str:
    from kvbench.measure.fio import ENGINES

    return ENGINES[method]


def _pages_for(spec: PageSpec, nbytes: int) -> int:
    return max(2, nbytes // spec.page_bytes)


def _rng(ctx: RunContext, *key: Any) -> random.Random:
    return random.Random(f"{ctx.seed}/{'/'.join(map(str, key))}")


# ----------------------------------------------------------------------------- GPU cases
def _cuda_stream():
    import torch

    return torch.cuda.Stream()


def _contiguous_buffers(src: str, dst: str, nbytes: int):
    import torch

    from kvbench.tiers.dram import aligned_host_empty

    def make(where: str):
        if where == "hbm":
            return torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        return aligned_host_empty(nbytes, pin=True)
    a, b = make(src), make(dst)
    a.copy_(torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=a.device)) if a.is_cuda else a.random_(0, 256)
    return a, b


def ceiling_case(ctx: RunContext, direction: str) -> dict[str, Any]:
    """A large contiguous copy: the copy engine's best (or HBM's, for hbm->hbm)."""
    import torch

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    nbytes = ctx.opt("transfer.ceiling_bytes", (256 if ctx.quick else 1024) * MiB, parse_size)
    cfg = {"kind": "ceiling", "direction": direction, "bytes": nbytes, "method": "contiguous copy_"}
    if direction == "dram<->hbm":
        h2d = _contiguous_buffers("dram", "hbm", nbytes)
        d2h = _contiguous_buffers("hbm", "dram", nbytes)
        res = _bidir_time(ctx, lambda: h2d[1].copy_(h2d[0], non_blocking=True),
                          lambda: d2h[1].copy_(d2h[0], non_blocking=True), nbytes, nbytes)
        case = make_case(BENCH_KEY, f"ceiling/{direction}", cfg, samples=res,
                         units={k: "GB/s" for k in res})
        ok = torch.equal(h2d[0][:4096].cuda(), h2d[1][:4096]) and torch.equal(d2h[0][-4096:].cpu(), d2h[1][-4096:])
    else:
        src, dst = direction.split("->")
        a, b = _contiguous_buffers(src, dst, nbytes)
        from kvbench.timing import time_cuda
        secs = time_cuda(lambda: b.copy_(a, non_blocking=True), warmup=ctx.warmup,
                         samples=ctx.samples, stream=_cuda_stream())
        torch.cuda.synchronize()
        ok = torch.equal(a.cpu() if a.is_cuda else a, b.cpu() if b.is_cuda else b)
        case = make_case(BENCH_KEY, f"ceiling/{direction}", cfg,
                         samples={"gbps": gbps(nbytes, secs), "seconds": secs},
                         units={"gbps": "GB/s", "seconds": "s"})
    if not ok:
        raise AssertionError(f"ceiling copy {direction} moved wrong data")
    case["notes"].append("contiguous; bytes counted once")
    return check_limits(ctx, case, direction)


def _bidir_time(ctx: RunContext, h2d: Callable[[], Any], d2h: Callable[[], Any],
                h2d_bytes: int, d2h_bytes: int, streams: tuple[Any, Any] | None = None
                ) -> dict[str, list[float]]:
    """Both directions at once on two streams: per-direction and summed GB/s (the sum
    over the span from the first start to the last end)."""
    from kvbench.timing import time_cuda_pair

    s1, s2 = streams or (_cuda_stream(), _cuda_stream())
    t1, t2, span = time_cuda_pair(h2d, s1, d2h, s2, warmup=ctx.warmup, samples=ctx.samples)
    both = gbps(h2d_bytes + d2h_bytes, span)
    # "gbps" (the headline every transfer case has) is the sum of both directions
    return {"gbps": both, "h2d_gbps": gbps(h2d_bytes, t1), "d2h_gbps": gbps(d2h_bytes, t2),
            "sum_gbps": both}


class _Pools:
    """Source and destination page pools with random data at random page ids."""

    def __init__(self, ctx: RunContext, src: str, dst: str, spec: PageSpec, n: int, key: tuple):
        import torch

        self.spec, self.n = spec, n
        rng = _rng(ctx, *key)
        from kvbench.store import PagePool

        self.src = PagePool(tier_or_skip(src, ctx), spec, 2 * n)
        self.dst = PagePool(tier_or_skip(dst, ctx), spec, 2 * n)
        self.src_ids = rng.sample(range(2 * n), n)
        self.dst_ids = rng.sample(range(2 * n), n)
        gen_dev = "cuda" if ctx.cuda else "cpu"
        self.data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8, device=gen_dev)
        self.src.write_pages(self.src_ids, self.data)

    def verify(self) -> None:
        import torch

        got = self.dst.read_pages(self.dst_ids)
        if not torch.equal(got.to(self.data.device), self.data):
            bad = int((got.to(self.data.device) != self.data).any(dim=1).sum())
            raise AssertionError(f"{bad} of {self.n} pages differ after the copy")

    def close(self) -> None:
        self.src.close()
        self.dst.close()


def _mover(ctx: RunContext, method: str, p: _Pools, stream: Any) -> Callable[[], None]:
    a, b = p.src.tensor, p.dst.tensor
    pb = p.spec.page_bytes
    if method == "per_page":
        return movers.per_page(a, b, p.src_ids, p.dst_ids, pb)
    if method == "batched":
        return movers.batched(a, b, p.src_ids, p.dst_ids, pb, stream)
    if method == "coalesced":
        return movers.coalesced(a, b, p.n * p.src.stride)
    if method == "triton":
        return movers.triton_gather(a, b, p.src_ids, p.dst_ids, pb, "cuda")
    raise ValueError(method)


def gpu_paged_case(ctx: RunContext, direction: str, fmt: str, layout: str, tokens: int,
                   method: str, kind: str = "paged") -> dict[str, Any]:
    import torch

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, kind)
    if direction == "dram<->hbm":
        return _bidir_paged(ctx, spec, n, method, cfg)
    src, dst = direction.split("->")
    p = _Pools(ctx, src, dst, spec, n, (direction, fmt, layout, tokens))
    nbytes = n * spec.page_bytes
    try:
        from kvbench.measure import paired

        stream = _cuda_stream()
        fn = _mover(ctx, method, p, stream)
        # the ceiling, sampled alternately in this case: one contiguous copy of the
        # same bytes between the same tiers on the same stream
        a, b = _contiguous_buffers(src, dst, nbytes)
        # the host enqueue (thousands of copy_ calls, or cuda-python checking every page
        # address for batched) runs behind a GPU sleep, checked per sample: the time is
        # the copies' own, and the enqueue time is reported beside it
        ahead: dict[str, Any] = {}
        res = paired.interleave(
            {"paged": paired.cuda_arm(fn, nbytes, stream, info=ahead),
             "ceiling": paired.cuda_arm(lambda: b.copy_(a, non_blocking=True), nbytes, stream)},
            {"pct_of_ceiling": ("paged", "ceiling")}, budget_s=budget_s(ctx),
            min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
        torch.cuda.synchronize()
        if method == "coalesced":
            ok = torch.equal(p.src.tensor.view(-1)[: n * p.src.stride].to("cuda"),
                             p.dst.tensor.view(-1)[: n * p.src.stride].to("cuda"))
            if not ok:
                raise AssertionError("coalesced copy moved wrong data")
        else:
            p.verify()
        a = b = None
    finally:
        p.close()
    secs = res.arms["paged"].seconds
    notes = [f"{n} pages of {spec.page_bytes:,} B, scattered, random order", ahead_note(ahead),
             f"ceiling: one contiguous {nbytes:,} B copy {direction} on the same stream, sampled "
             "alternately with the paged copies"]
    case = make_case(BENCH_KEY, _name(direction, spec, method, kind=kind), cfg,
                     samples={"gbps": gbps(nbytes, secs), "seconds": secs,
                              "ceiling_gbps": gbps(nbytes, res.arms["ceiling"].seconds)},
                     units={"gbps": "GB/s", "seconds": "s", "host_enqueue_s": "s", "ceiling_gbps": "GB/s"},
                     metrics={"host_enqueue_s": ahead["enqueue_s"], "host_bound": ahead["host_bound"]},
                     notes=notes)
    paired.record(case, res, percent=("pct_of_ceiling",))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    return check_limits(ctx, case, direction)


def _both(up: Callable[[], Any], down: Callable[[], Any], s1: Any, s2: Any) -> Callable[[], None]:
    """Both directions at once: ``up`` on s1 (the timed stream), ``down`` on s2, which
    starts after s1's start event and is joined back into s1 at the end."""
    import torch

    def both() -> None:
        s2.wait_stream(s1)
        with torch.cuda.stream(s1):
            up()
        with torch.cuda.stream(s2):
            down()
        s1.wait_stream(s2)
    return both


def _bidir_paged(ctx: RunContext, spec: PageSpec, n: int, method: str, cfg: dict) -> dict[str, Any]:
    """Pages up and down at once on two streams, sampled alternately with the same two
    directions as contiguous copies of the same bytes (the ceiling)."""
    import torch

    from kvbench.measure import paired

    up = _Pools(ctx, "dram", "hbm", spec, n, ("up", spec.describe()))
    down = _Pools(ctx, "hbm", "dram", spec, n, ("down", spec.describe()))
    notes: list[str] = ["both directions at once on two streams; gbps is the sum"]
    nbytes = n * spec.page_bytes
    try:
        s1, s2 = _cuda_stream(), _cuda_stream()
        if method == "per_page":
            # each direction's pages on its own stream, enqueued in alternating chunks of
            # PER_PAGE_CHUNK pages (a stream switch per chunk, not per page; a chunk stays
            # below CUDA's ~1000 queued operations per stream, so neither direction waits
            # for the other's enqueue), behind a GPU sleep
            pb, k = spec.page_bytes, PER_PAGE_CHUNK
            chunks = [(movers.per_page(up.src.tensor, up.dst.tensor, up.src_ids[i:i + k],
                                       up.dst_ids[i:i + k], pb),
                       movers.per_page(down.src.tensor, down.dst.tensor, down.src_ids[i:i + k],
                                       down.dst_ids[i:i + k], pb)) for i in range(0, n, k)]

            def paged() -> None:
                s2.wait_stream(s1)  # after the start event
                for up_copy, down_copy in chunks:
                    with torch.cuda.stream(s1):
                        up_copy()
                    with torch.cuda.stream(s2):
                        down_copy()
                s1.wait_stream(s2)
        else:
            paged = _both(_mover(ctx, method, up, s1), _mover(ctx, method, down, s2), s1, s2)
        h2d, d2h = _contiguous_buffers("dram", "hbm", nbytes), _contiguous_buffers("hbm", "dram", nbytes)
        ceiling = _both(lambda: h2d[1].copy_(h2d[0], non_blocking=True),
                        lambda: d2h[1].copy_(d2h[0], non_blocking=True), s1, s2)
        info: dict[str, Any] = {}
        res = paired.interleave({"paged": paired.cuda_arm(paged, 2 * nbytes, s1, info=info),
                                 "ceiling": paired.cuda_arm(ceiling, 2 * nbytes, s1)},
                                {"pct_of_ceiling": ("paged", "ceiling")}, budget_s=budget_s(ctx),
                                min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
        notes += [ahead_note(info), "ceiling: both directions as contiguous copies of the same bytes "
                  "on the same two streams, sampled alternately"]
        torch.cuda.synchronize()
        if method != "coalesced":
            up.verify()
            down.verify()
        res.release()
        h2d = d2h = None
    finally:
        up.close()
        down.close()
    secs = res.arms["paged"].seconds
    samples = {"gbps": gbps(2 * nbytes, secs), "sum_gbps": gbps(2 * nbytes, secs), "seconds": secs,
               "ceiling_gbps": gbps(2 * nbytes, res.arms["ceiling"].seconds)}
    case = make_case(BENCH_KEY, _name("dram<->hbm", spec, method), cfg, samples=samples,
                     units={**{k: "GB/s" for k in samples}, "seconds": "s"}, notes=notes)
    paired.record(case, res, percent=("pct_of_ceiling",))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    return check_limits(ctx, case, "dram<->hbm")


def nvme_to_hbm_case(ctx: RunContext, fmt: str, layout: str, depth: int) -> dict[str, Any]:
    """O_DIRECT page reads at queue depth ``depth`` into two pinned staging buffers,
    each copied to HBM and scattered into the destination pages while the other
    fills (``kvbench.measure.staged``); sampled alternately with its ceiling, a
    sequential O_DIRECT read of the same file into pinned memory, cold."""
    from kvbench.store import PagePool

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    direction = "nvme->hbm"
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, "odirect+pinned_staging", n, "paged", depth=depth)
    rng = _rng(ctx, direction, fmt, layout)
    nvme = odirect_tier_or_skip(ctx)
    try:
        src = PagePool(nvme, spec, 2 * n)
        dst = PagePool(tier_or_skip("hbm", ctx), spec, 2 * n)
    except BaseException:
        nvme.close()
        raise
    try:
        return _nvme_to_hbm(ctx, spec, n, cfg, rng, src, dst, depth)
    finally:
        src.close()
        dst.close()
        nvme.close()


def _nvme_to_hbm(ctx, spec, n, cfg, rng, src, dst, depth):
    import torch

    from kvbench.measure import paired, staged
    from kvbench.tiers.dram import aligned_host_empty

    direction = "nvme->hbm"
    src_ids, dst_ids = rng.sample(range(2 * n), n), rng.sample(range(2 * n), n)
    data = _fill_file_pool(src, 2 * n, spec.page_bytes, True)[src_ids]
    f = src.file()
    chunk = max(1, min(n, (8 * MiB) // src.stride))
    staging = [aligned_host_empty(chunk * src.stride, pin=True).view(chunk, src.stride) for _ in range(2)]
    dev_stage = [torch.empty(chunk, src.stride, dtype=torch.uint8, device="cuda") for _ in range(2)]
    done = [torch.cuda.Event() for _ in range(2)]
    stream = _cuda_stream()
    pool = ThreadPoolExecutor(depth)
    dst_idx = torch.tensor(dst_ids, dtype=torch.long, device="cuda")

    def hand_on(c: staged.Chunk):
        with torch.cuda.stream(stream):
            dev_stage[c.slot][:c.rows].copy_(staging[c.slot][:c.rows], non_blocking=True)
            dst.tensor[:, : spec.page_bytes].index_copy_(
                0, dst_idx[c.start: c.start + c.rows], dev_stage[c.slot][:c.rows, : spec.page_bytes])
            done[c.slot].record(stream)
        return done[c.slot]

    run = staged.StagedReader(staged.page_chunks(f, src.stride, src_ids, staging, "odirect", pool,
                                                 spec.page_bytes, chunk), 2, hand_on)
    resid: list[float] = []
    try:
        ceiling, note, keep = _read_ceiling(f, n * src.stride, None, "odirect", "cold", pool, src.stride)
        arms = {"paged": paired.host_arm(run, n * spec.page_bytes, setup=lambda: resid.append(f.drop_cache())),
                "ceiling": ceiling}
        res = paired.interleave(arms, {"pct_of_ceiling": ("paged", "ceiling")}, budget_s=budget_s(ctx),
                                min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
        got = dst.read_pages(dst_ids).cpu()
        if not torch.equal(got, data):
            raise AssertionError("pages differ after nvme->hbm")
        res.release()
        del keep
    finally:
        pool.shutdown()
    secs = res.arms["paged"].seconds
    case = make_case(BENCH_KEY, _name(direction, spec, "odirect", depth), cfg,
                     samples={"gbps": gbps(n * spec.page_bytes, secs), "seconds": secs,
                              "ceiling_gbps": gbps(n * src.stride, res.arms["ceiling"].seconds)},
                     units={"gbps": "GB/s", "seconds": "s", "ceiling_gbps": "GB/s"},
                     notes=[note + "; sampled alternately"])
    paired.record(case, res, percent=("pct_of_ceiling",))
    case["metrics"]["ceiling_gbps"] = case["stats"]["ceiling_gbps"]["median"]
    label_cache(case, resid[ctx.warmup:], want="cold")
    return check_limits(ctx, case, direction)


def overlap_case(ctx: RunContext, direction: str, method: str) -> dict[str, Any]:
    """Copies while a bf16 matmul loop runs on another stream: copy GB/s alone and
    during compute, and the matmul's slowdown (copy kernels take SMs; DMA does not)."""
    import torch

    from kvbench.timing import time_cuda, time_cuda_pair

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    spec = PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, "layer")
    n = _pages_for(spec, sample_bytes(ctx, direction))
    src, dst = direction.split("->")
    p = _Pools(ctx, src, dst, spec, n, ("overlap", direction))
    cfg = _cfg(ctx, direction, spec, method, n, "overlap")
    try:
        cs, ms = _cuda_stream(), _cuda_stream()
        copy = _mover(ctx, method, p, cs)
        m = 4096
        x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        copy_alone = time_cuda(copy, warmup=ctx.warmup, samples=ctx.samples, stream=cs)
        one_mm = time_cuda(lambda: torch.matmul(x, x, out=y), warmup=2, samples=3, stream=ms)
        reps = max(1, int(summarize(copy_alone)["median"] / max(summarize(one_mm)["median"], 1e-6)))
        mm_loop = lambda: [torch.matmul(x, x, out=y) for _ in range(reps)]  # noqa: E731
        mm_alone = time_cuda(mm_loop, warmup=1, samples=ctx.samples, stream=ms)
        # the matmuls are enqueued first, so the copy runs while they do
        mm_with, copy_with, _ = time_cuda_pair(mm_loop, ms, copy, cs, warmup=ctx.warmup,
                                               samples=ctx.samples)
        p.verify() if method != "coalesced" else None
    finally:
        p.close()
    nbytes = n * spec.page_bytes
    case = make_case(BENCH_KEY, f"overlap/{direction}/{method}", cfg,
                     samples={"gbps": gbps(nbytes, copy_with), "gbps_alone": gbps(nbytes, copy_alone),
                              "matmul_s": mm_with, "matmul_alone_s": mm_alone},
                     units={"gbps": "GB/s", "gbps_alone": "GB/s", "matmul_s": "s",
                            "matmul_alone_s": "s", "matmul_slowdown_pct": "%"})
    mw, ma = case["metrics"]["matmul_s"], case["metrics"]["matmul_alone_s"]
    case["metrics"]["matmul_slowdown_pct"] = 100.0 * (mw / ma - 1.0)
    case["notes"].append(f"{reps} bf16 {m}x{m} matmuls per sample on a second stream")
    return check_limits(ctx, case, direction)


# ----------------------------------------------------------------------------- file cases
def _fill_file_pool(pool: Any, n_total: int, page_bytes: int, odirect: bool):
    """Write random data to every page of a file pool (so sequential reads touch real
    written blocks, never unwritten extents that read as zeros without I/O)."""
    import torch

    data = torch.randint(0, 256, (n_total, page_bytes), dtype=torch.uint8)
    pool.write_pages(list(range(n_total)), data, method="odirect" if odirect else "buffered")
    pool.file().sync()
    return data


def budget_s(ctx: RunContext) -> float:
    """Seconds a case may sample for before it stops short of its target interval."""
    return ctx.opt_seconds("transfer.budget_s", 6.0 if ctx.quick else 20.0)


def fio_wanted(ctx: RunContext) -> bool:
    """--set transfer.fio=on|off (default on: fio runs beside file cases where installed)."""
    from kvbench.errors import KvbenchError

    v = ctx.opt("transfer.fio", "on").strip().lower()
    if v not in ("on", "off"):
        raise KvbenchError(f"--set transfer.fio={v!r}: expected on or off")
    return v == "on"


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
        if method == "mmap":
            cands["one copy out of the mapped file"] = host_arm(movers.sequential_mmap_reader(f, nbytes, out), nbytes)
        what = "sequential copy out of the page cache (the file cached) into the case's own buffer"
    best = _best_of(cands)
    note = (f"ceiling: the same {nbytes:,} B of the same file, {what}; the best of "
            f"{', '.join(cands)} in two untimed looks each: {best}")
    return cands[best], note, dst


def file_read_case(ctx: RunContext, fmt: str, layout: str, tokens: int, method: str,
                   depth: int, cache: str, kind: str = "paged") -> dict[str, Any]:
    """nvme->dram: scattered pages of a file read into host rows at queue depth
    ``depth``. Sampled alternately with, in the same case: its ceiling (``_read_ceiling``:
    the same bytes of the same file read sequentially, cold, or warm as a copy out of
    the page cache into the same buffer) and fio on the same file (same block size,
    depth, direction and O_DIRECT)."""
    import torch

    from kvbench.measure.paired import host_arm
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    direction = "nvme->dram"
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, kind, depth=depth)
    cfg["cache_state"] = cache
    nvme = tier_or_skip("nvme", ctx)
    if method.startswith("odirect") and not nvme.odirect_status()[0]:
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
        direct = method.startswith("odirect")
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
    if method == "odirect" and not nvme.odirect_status()[0]:
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
        direct = method == "odirect"
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


# ----------------------------------------------------------------------------- plan
def _cfg(ctx: RunContext, direction: str, spec: PageSpec, method: str, n: int, kind: str,
         depth: int | None = None) -> dict[str, Any]:
    src, _, dst = direction.replace("<->", "->").partition("->")
    cfg = {"kind": kind, "direction": direction, "src": src, "dst": dst, "method": method,
           "pages": n, "bytes": n * spec.page_bytes, "model": ctx.model.name, **spec.describe()}
    if depth is not None:
        cfg["queue_depth"] = depth
    return cfg


def _name(direction: str, spec: PageSpec, method: str, depth: int | None = None,
          cache: str | None = None, kind: str = "paged") -> str:
    """Unique within the bench: sweep cases carry their kind in front."""
    parts = ([kind] if kind != "paged" else []) + [direction, spec.layout, spec.fmt.name,
                                                   f"{spec.tokens}tok", method]
    if depth is not None:
        parts.append(f"qd{depth}")
    if cache:
        parts.append(cache)
    return "/".join(parts)


def plan(ctx: RunContext) -> list[Case]:
    budget_s(ctx), fio_wanted(ctx)  # a malformed --set fails before anything runs
    cases: list[Case] = []
    add = lambda name, cfg, fn: cases.append(Case(name, cfg, fn))  # noqa: E731
    fmts, layouts, t = ctx.formats, ctx.layouts, ctx.tokens_per_page
    depths = depth_sweep(ctx)
    if not ctx.cuda:
        from kvbench.tiers.hbm import cuda_status
        why = f"needs a CUDA device: {cuda_status()[1]}"
        for d in GPU_DIRECTIONS:
            add(f"{d}/*", {"direction": d},
                lambda c, d=d, why=why: skipped_case(BENCH_KEY, f"{d}/*", {"direction": d, "kind": "paged"}, why))
        add("overlap/*", {"kind": "overlap"},
            lambda c, why=why: skipped_case(BENCH_KEY, "overlap/*", {"kind": "overlap"}, why))
    else:
        for d in ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm"):
            add(f"ceiling/{d}", {"kind": "ceiling", "direction": d}, lambda c, d=d: ceiling_case(c, d))
        for d in ("dram->hbm", "hbm->dram"):
            for f in fmts:
                for lay in layouts:
                    for m in movers.TORCH_METHODS:
                        add(f"{d}/{lay}/{f}/{m}", {}, lambda c, d=d, f=f, lay=lay, m=m: gpu_paged_case(c, d, f, lay, t, m))
        for lay in layouts:
            for m in ("per_page", "batched", "coalesced", "triton"):
                add(f"dram<->hbm/{lay}/{m}", {}, lambda c, lay=lay, m=m: gpu_paged_case(c, "dram<->hbm", fmts[0], lay, t, m))
            for m in ("per_page", "coalesced", "triton"):
                add(f"hbm->hbm/{lay}/{m}", {}, lambda c, lay=lay, m=m: gpu_paged_case(c, "hbm->hbm", fmts[0], lay, t, m))
        for f in fmts:
            for lay in layouts:
                add(f"nvme->hbm/{lay}/{f}", {}, lambda c, f=f, lay=lay: nvme_to_hbm_case(c, f, lay, max(depths)))
    # files: every format and layout; the queue-depth sweep on the first format
    for f in fmts:
        for lay in layouts:
            sweep = depths if f == fmts[0] else [max(depths)]
            add(f"nvme->dram/{lay}/{f}/mmap/cold", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "mmap", 1, "cold"))
            add(f"nvme->dram/{lay}/{f}/buffered/cold", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "buffered", 1, "cold"))
            for th in sweep:
                add(f"nvme->dram/{lay}/{f}/odirect/qd{th}/cold", {},
                    lambda c, f=f, lay=lay, th=th: file_read_case(c, f, lay, t, "odirect", th, "cold"))
            add(f"nvme->dram/{lay}/{f}/odirect_merged/cold", {},
                lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "odirect_merged", max(depths), "cold"))
            add(f"nvme->dram/{lay}/{f}/mmap/warm", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "mmap", 1, "warm"))
            add(f"nvme->dram/{lay}/{f}/buffered/warm", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "buffered", 1, "warm"))
            add(f"dram->nvme/{lay}/{f}/buffered", {}, lambda c, f=f, lay=lay: file_write_case(c, f, lay, "buffered", 1))
            for th in sorted({min(sweep), max(sweep)}):
                add(f"dram->nvme/{lay}/{f}/odirect/qd{th}", {},
                    lambda c, f=f, lay=lay, th=th: file_write_case(c, f, lay, "odirect", th))
    # page-size sweep (first format, per-layer layout: the small-page case)
    sweep_tokens = SWEEP_TOKENS_QUICK if ctx.quick else SWEEP_TOKENS
    for tok in sweep_tokens:
        add(f"sweep/nvme->dram/{tok}tok", {}, lambda c, tok=tok: file_read_case(
            c, fmts[0], "layer", tok, "odirect", max(depths), "cold", kind="sweep"))
        if ctx.cuda:
            for d in ("dram->hbm", "hbm->dram"):
                for m in ("per_page", "triton"):
                    add(f"sweep/{d}/{tok}tok/{m}", {}, lambda c, d=d, tok=tok, m=m: gpu_paged_case(
                        c, d, fmts[0], "layer", tok, m, kind="sweep"))
    if ctx.cuda:
        for d in ("dram->hbm", "hbm->dram"):
            for m in ("coalesced", "triton"):
                add(f"overlap/{d}/{m}", {}, lambda c, d=d, m=m: overlap_case(c, d, m))
    return cases


BENCH = Benchmark(
    key=BENCH_KEY,
    description="paged KV bandwidth between hbm, dram and nvme, against ceilings measured in the same run",
    plan=plan,
    headline="gbps",
    headline_unit="GB/s",
    options={
        'transfer.bytes': 'payload bytes per timed sample between hbm and dram, e.g. 256MiB (default 64MiB quick, 512MiB full)',
        'transfer.file_bytes': 'payload bytes per sample to and from files (default 32MiB quick, 256MiB full)',
        'transfer.ceiling_bytes': 'bytes of the contiguous ceiling copies (default 256MiB quick, 1GiB full)',
        'transfer.queue_depths': 'queue depths of O_DIRECT file I/O (requests in flight, one per thread), e.g. 1,4,16,64 (the default)',
        'transfer.budget_s': 'seconds a case samples its paired figures for before it stops short of +-5% (default 6 quick, 20 full)',
        'transfer.fio': 'on (default: fio on the same file as a reference, where fio is installed) or off',
    },
)
