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
from kvbench.units import GB, MiB, parse_size

BENCH_KEY = "transfer"

GPU_DIRECTIONS = ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm", "nvme->hbm")
FILE_DIRECTIONS = ("nvme->dram", "dram->nvme")
SWEEP_TOKENS = (16, 32, 64, 128, 256, 512, 1024)
SWEEP_TOKENS_QUICK = (16, 64, 256, 1024)

#: bidirectional per_page copies alternate between the two streams every this many pages
PER_PAGE_CHUNK = 256


# ----------------------------------------------------------------------------- sizes
def sample_bytes(ctx: RunContext, direction: str) -> int:
    """Bytes moved per timed sample (enough that per-call overheads are visible but
    a sample lasts milliseconds, not seconds)."""
    if "nvme" in direction:
        return ctx.opt("transfer.file_bytes", (32 if ctx.quick else 256) * MiB, parse_size)
    return ctx.opt("transfer.bytes", (64 if ctx.quick else 512) * MiB, parse_size)


def threads_sweep(ctx: RunContext) -> list[int]:
    return ctx.opt_list("transfer.threads", [1, 4] if ctx.quick else [1, 4, 16, 32])


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

    from kvbench.timing import time_cuda

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, kind)
    if direction == "dram<->hbm":
        return _bidir_paged(ctx, spec, n, method, cfg)
    src, dst = direction.split("->")
    p = _Pools(ctx, src, dst, spec, n, (direction, fmt, layout, tokens))
    try:
        stream = _cuda_stream()
        fn = _mover(ctx, method, p, stream)
        # the host enqueue (thousands of copy_ calls, or cuda-python checking every page
        # address for batched) runs behind a GPU sleep, checked per sample: the time is
        # the copies' own, and the enqueue time is reported beside it
        ahead: dict[str, Any] = {}
        secs = time_cuda(fn, warmup=ctx.warmup, samples=ctx.samples, stream=stream,
                         ahead=True, info=ahead)
        torch.cuda.synchronize()
        nbytes = n * spec.page_bytes
        if method == "coalesced":
            ok = torch.equal(p.src.tensor.view(-1)[: n * p.src.stride].to("cuda"),
                             p.dst.tensor.view(-1)[: n * p.src.stride].to("cuda"))
            if not ok:
                raise AssertionError("coalesced copy moved wrong data")
        else:
            p.verify()
    finally:
        p.close()
    notes = [f"{n} pages of {spec.page_bytes:,} B, scattered, random order", ahead_note(ahead)]
    case = make_case(BENCH_KEY, _name(direction, spec, method, kind=kind), cfg,
                     samples={"gbps": gbps(nbytes, secs), "seconds": secs},
                     units={"gbps": "GB/s", "seconds": "s", "host_enqueue_s": "s"},
                     metrics={"host_enqueue_s": ahead["enqueue_s"], "host_bound": ahead["host_bound"]},
                     notes=notes)
    return check_limits(ctx, case, direction)


def _bidir_paged(ctx: RunContext, spec: PageSpec, n: int, method: str, cfg: dict) -> dict[str, Any]:
    import torch

    up = _Pools(ctx, "dram", "hbm", spec, n, ("up", spec.describe()))
    down = _Pools(ctx, "hbm", "dram", spec, n, ("down", spec.describe()))
    notes: list[str] = ["both directions at once on two streams; gbps is the sum"]
    try:
        s1, s2 = _cuda_stream(), _cuda_stream()
        nbytes = n * spec.page_bytes
        if method == "per_page":
            # each direction's pages on its own stream, enqueued in alternating chunks of
            # PER_PAGE_CHUNK pages (a stream switch per chunk, not per page; a chunk stays
            # below CUDA's ~1000 queued operations per stream, so neither direction waits
            # for the other's enqueue), behind a GPU sleep
            from kvbench.timing import time_cuda

            pb = spec.page_bytes
            k = PER_PAGE_CHUNK
            chunks = [(movers.per_page(up.src.tensor, up.dst.tensor, up.src_ids[i:i + k],
                                       up.dst_ids[i:i + k], pb),
                       movers.per_page(down.src.tensor, down.dst.tensor, down.src_ids[i:i + k],
                                       down.dst_ids[i:i + k], pb)) for i in range(0, n, k)]

            def both() -> None:
                s2.wait_stream(s1)  # after the start event
                for up_copy, down_copy in chunks:
                    up_copy()  # on s1, the timed stream
                    with torch.cuda.stream(s2):
                        down_copy()
                s1.wait_stream(s2)
            info: dict[str, Any] = {}
            secs = time_cuda(both, warmup=ctx.warmup, samples=ctx.samples, stream=s1,
                             ahead=True, info=info)
            res = {"gbps": gbps(2 * nbytes, secs), "sum_gbps": gbps(2 * nbytes, secs)}
            notes.append(ahead_note(info))
        else:
            f_up, f_down = _mover(ctx, method, up, s1), _mover(ctx, method, down, s2)
            res = _bidir_time(ctx, f_up, f_down, nbytes, nbytes, streams=(s1, s2))
        torch.cuda.synchronize()
        if method != "coalesced":
            up.verify()
            down.verify()
    finally:
        up.close()
        down.close()
    case = make_case(BENCH_KEY, _name("dram<->hbm", spec, method), cfg, samples=res,
                     units={k: "GB/s" for k in res}, notes=notes)
    return check_limits(ctx, case, "dram<->hbm")


def nvme_to_hbm_case(ctx: RunContext, fmt: str, layout: str, threads: int) -> dict[str, Any]:
    """O_DIRECT reads by a thread pool into two pinned staging buffers, each copied to
    HBM and scattered into the destination pages while the other fills."""
    from kvbench.store import PagePool

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    direction = "nvme->hbm"
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, "odirect+pinned_staging", n, "paged", threads=threads)
    rng = _rng(ctx, direction, fmt, layout)
    nvme = odirect_tier_or_skip(ctx)
    try:
        src = PagePool(nvme, spec, 2 * n)
        dst = PagePool(tier_or_skip("hbm", ctx), spec, 2 * n)
    except BaseException:
        nvme.close()
        raise
    try:
        return _nvme_to_hbm(ctx, spec, n, cfg, rng, nvme, src, dst, threads)
    finally:
        src.close()
        dst.close()
        nvme.close()


def _nvme_to_hbm(ctx, spec, n, cfg, rng, nvme, src, dst, threads):
    import torch

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
    pool = ThreadPoolExecutor(threads)
    dst_idx = torch.tensor(dst_ids, dtype=torch.long, device="cuda")
    readers = []
    for ci, start in enumerate(range(0, n, chunk)):
        ids = src_ids[start: start + chunk]
        readers.append((start, len(ids), movers.file_reader(
            f, src.stride, ids, staging[ci % 2], "odirect", pool, spec.page_bytes)))

    def run() -> None:
        for ci, (start, k, read) in enumerate(readers):
            b = ci % 2
            done[b].synchronize()  # staging b is free again
            read()
            with torch.cuda.stream(stream):
                dev_stage[b][:k].copy_(staging[b][:k], non_blocking=True)
                dst.tensor[:, : spec.page_bytes].index_copy_(
                    0, dst_idx[start: start + k], dev_stage[b][:k, : spec.page_bytes])
                done[b].record(stream)
        stream.synchronize()

    resid: list[float] = []

    def setup() -> None:
        resid.append(f.drop_cache())
    try:
        from kvbench.timing import time_host
        secs = time_host(run, warmup=ctx.warmup, samples=ctx.samples, setup=setup)
        got = dst.read_pages(dst_ids).cpu()
        if not torch.equal(got, data):
            raise AssertionError("pages differ after nvme->hbm")
        # this case's ceiling: the same file read sequentially with O_DIRECT, cold
        seq_out = aligned_host_empty(f.nbytes, pin=True)
        seq = movers.sequential_reader(f, f.nbytes, seq_out, 4 * MiB, "odirect", pool)
        seq_gbps = gbps(f.nbytes, time_host(seq, warmup=ctx.warmup, samples=ctx.samples,
                                             setup=f.drop_cache))
    finally:
        pool.shutdown()
    case = make_case(BENCH_KEY, _name(direction, spec, "odirect", threads), cfg,
                     samples={"gbps": gbps(n * spec.page_bytes, secs), "seconds": secs,
                              "ceiling_gbps": seq_gbps},
                     units={"gbps": "GB/s", "seconds": "s", "ceiling_gbps": "GB/s"},
                     notes=["ceiling: sequential O_DIRECT read of the same file into pinned "
                            "memory, 4 MiB requests, cold"])
    label_cache(case, resid[ctx.warmup:], want="cold")
    return check_limits(ctx, case, direction, ceiling=summarize(seq_gbps)["median"])


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


def file_read_case(ctx: RunContext, fmt: str, layout: str, tokens: int, method: str,
                   threads: int, cache: str, kind: str = "paged") -> dict[str, Any]:
    """nvme->dram: scattered pages of a file read into host rows. Ceiling, measured in
    the same case: cold, a sequential O_DIRECT read of the same whole file in 4 MiB
    requests; warm, a sequential buffered read of the same cached file into the same
    buffer (a warm read is a copy out of the page cache)."""
    import torch

    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty
    from kvbench.timing import time_host

    direction = "nvme->dram"
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, kind, threads=threads)
    cfg["cache_state"] = cache
    nvme = tier_or_skip("nvme", ctx)
    if method.startswith("odirect") and not nvme.odirect_status()[0]:
        raise Skip(f"O_DIRECT unavailable: {nvme.odirect_status()[1]}")
    rng = _rng(ctx, direction, fmt, layout, tokens)
    pool = PagePool(nvme, spec, 2 * n)
    ids = rng.sample(range(2 * n), n)
    pinned = ctx.cuda
    out = aligned_host_empty(n * pool.stride, pin=pinned).view(n, pool.stride)
    tp = ThreadPoolExecutor(threads) if threads > 1 else None
    seq_threads = max(threads_sweep(ctx))
    seq_tp = ThreadPoolExecutor(seq_threads)
    f = pool.file()
    try:
        data = _fill_file_pool(pool, 2 * n, spec.page_bytes, nvme.odirect_status()[0])[ids]
        read = movers.file_reader(f, pool.stride, ids, out, method, tp, spec.page_bytes)
        resid: list[float] = []
        if cache == "cold":
            setup = lambda: resid.append(f.drop_cache())  # noqa: E731
        else:
            setup = lambda: resid.append(f.resident_fraction())  # noqa: E731
            seq_all = aligned_host_empty(f.nbytes, pin=False)
            movers.sequential_reader(f, f.nbytes, seq_all, 4 * MiB, "buffered", seq_tp)()
            del seq_all
        secs = time_host(read, warmup=ctx.warmup, samples=ctx.samples, setup=setup)
        if not torch.equal(out[:, : spec.page_bytes], data):
            raise AssertionError("pages read back differ from pages written")
        if cache == "cold" and f.fd_direct is not None:
            nseq = f.nbytes
            seq_out = aligned_host_empty(nseq, pin=pinned)
            seq = movers.sequential_reader(f, nseq, seq_out, 4 * MiB, "odirect", seq_tp)
            seq_gbps = gbps(nseq, time_host(seq, warmup=ctx.warmup, samples=ctx.samples,
                                             setup=f.drop_cache))
            ceiling_note = (f"ceiling: sequential O_DIRECT read of the same whole file "
                            f"({nseq:,} B), 4 MiB requests, {seq_threads} threads, cold")
        else:
            # a warm paged read is bounded by copying out of the page cache: the same
            # cached file read sequentially (buffered, 4 MiB requests, the case's threads)
            # into the case's own buffer
            nseq = n * pool.stride
            seq = movers.sequential_reader(f, nseq, out, 4 * MiB, "buffered", tp)
            seq_gbps = gbps(nseq, time_host(seq, warmup=ctx.warmup, samples=ctx.samples))
            ceiling_note = (f"ceiling: sequential buffered read of the same cached file "
                            f"({nseq:,} B) into the same buffer, 4 MiB requests, {threads} thread(s)")
    finally:
        seq_tp.shutdown()
        if tp:
            tp.shutdown()
        pool.close()
        nvme.close()
    nbytes = n * spec.page_bytes
    case = make_case(BENCH_KEY, _name(direction, spec, method, threads, cache, kind), cfg,
                     samples={"gbps": gbps(nbytes, secs), "seconds": secs, "ceiling_gbps": seq_gbps},
                     units={"gbps": "GB/s", "seconds": "s", "ceiling_gbps": "GB/s"},
                     notes=[ceiling_note])
    label_cache(case, resid[ctx.warmup:], want=cache)
    return check_limits(ctx, case, direction, ceiling=summarize(seq_gbps)["median"])


def file_write_case(ctx: RunContext, fmt: str, layout: str, method: str, threads: int) -> dict[str, Any]:
    """dram->nvme: scattered pages written, then fdatasync (durable). Ceiling, measured
    in the same case: the better of a sequential O_DIRECT and a sequential buffered
    write (+ fdatasync) of the same bytes to the same file, 4 MiB requests."""
    import torch

    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty
    from kvbench.timing import time_host

    direction = "dram->nvme"
    spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, layout)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    cfg = _cfg(ctx, direction, spec, method, n, "paged", threads=threads)
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
    tp = ThreadPoolExecutor(threads) if threads > 1 else None
    f = pool.file()
    try:
        write = movers.file_writer(f, pool.stride, ids, src, method, tp, spec.page_bytes)
        secs = time_host(write, warmup=ctx.warmup, samples=ctx.samples)
        if not torch.equal(pool.read_pages(ids), data):
            raise AssertionError("pages in the file differ from pages written")
        nseq = n * pool.stride
        flat = src.view(-1)
        seq = {}
        for how in ("odirect", "buffered"):
            if how == "odirect" and f.fd_direct is None:
                continue
            seq[how] = gbps(nseq, time_host(
                movers.sequential_writer(f, nseq, flat, 4 * MiB, tp, direct=how == "odirect"),
                warmup=ctx.warmup, samples=ctx.samples))
    finally:
        if tp:
            tp.shutdown()
        pool.close()
        nvme.close()
    best = max(seq, key=lambda k: summarize(seq[k])["median"])
    nbytes = n * spec.page_bytes
    case = make_case(BENCH_KEY, _name(direction, spec, method, threads), cfg,
                     samples={"gbps": gbps(nbytes, secs), "seconds": secs,
                              **{f"ceiling_{k}_gbps": v for k, v in seq.items()}},
                     units={"gbps": "GB/s", "seconds": "s", **{f"ceiling_{k}_gbps": "GB/s" for k in seq}},
                     notes=["each sample ends with fdatasync (durable)",
                            f"ceiling: sequential {best} write of the same bytes to the same file "
                            "(the better of O_DIRECT and buffered), 4 MiB requests, + fdatasync"])
    return check_limits(ctx, case, direction, ceiling=summarize(seq[best])["median"])


# ----------------------------------------------------------------------------- plan
def _cfg(ctx: RunContext, direction: str, spec: PageSpec, method: str, n: int, kind: str,
         threads: int | None = None) -> dict[str, Any]:
    src, _, dst = direction.replace("<->", "->").partition("->")
    cfg = {"kind": kind, "direction": direction, "src": src, "dst": dst, "method": method,
           "pages": n, "bytes": n * spec.page_bytes, "model": ctx.model.name, **spec.describe()}
    if threads is not None:
        cfg["threads"] = threads
    return cfg


def _name(direction: str, spec: PageSpec, method: str, threads: int | None = None,
          cache: str | None = None, kind: str = "paged") -> str:
    """Unique within the bench: sweep cases carry their kind in front."""
    parts = ([kind] if kind != "paged" else []) + [direction, spec.layout, spec.fmt.name,
                                                   f"{spec.tokens}tok", method]
    if threads is not None:
        parts.append(f"t{threads}")
    if cache:
        parts.append(cache)
    return "/".join(parts)


def plan(ctx: RunContext) -> list[Case]:
    cases: list[Case] = []
    add = lambda name, cfg, fn: cases.append(Case(name, cfg, fn))  # noqa: E731
    fmts, layouts, t = ctx.formats, ctx.layouts, ctx.tokens_per_page
    threads = threads_sweep(ctx)
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
                add(f"nvme->hbm/{lay}/{f}", {}, lambda c, f=f, lay=lay: nvme_to_hbm_case(c, f, lay, max(threads)))
    # files: every format and layout; the thread sweep on the first format
    for f in fmts:
        for lay in layouts:
            sweep = threads if f == fmts[0] else [max(threads)]
            add(f"nvme->dram/{lay}/{f}/mmap/cold", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "mmap", 1, "cold"))
            add(f"nvme->dram/{lay}/{f}/buffered/cold", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "buffered", 1, "cold"))
            for th in sweep:
                add(f"nvme->dram/{lay}/{f}/odirect/t{th}/cold", {},
                    lambda c, f=f, lay=lay, th=th: file_read_case(c, f, lay, t, "odirect", th, "cold"))
            add(f"nvme->dram/{lay}/{f}/odirect_merged/cold", {},
                lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "odirect_merged", max(threads), "cold"))
            add(f"nvme->dram/{lay}/{f}/mmap/warm", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "mmap", 1, "warm"))
            add(f"nvme->dram/{lay}/{f}/buffered/warm", {}, lambda c, f=f, lay=lay: file_read_case(c, f, lay, t, "buffered", 1, "warm"))
            add(f"dram->nvme/{lay}/{f}/buffered", {}, lambda c, f=f, lay=lay: file_write_case(c, f, lay, "buffered", 1))
            for th in sweep:
                add(f"dram->nvme/{lay}/{f}/odirect/t{th}", {},
                    lambda c, f=f, lay=lay, th=th: file_write_case(c, f, lay, "odirect", th))
    # page-size sweep (first format, per-layer layout: the small-page case)
    sweep_tokens = SWEEP_TOKENS_QUICK if ctx.quick else SWEEP_TOKENS
    for tok in sweep_tokens:
        add(f"sweep/nvme->dram/{tok}tok", {}, lambda c, tok=tok: file_read_case(
            c, fmts[0], "layer", tok, "odirect", max(threads), "cold", kind="sweep"))
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
        'transfer.threads': 'thread counts for file I/O, e.g. 1,4,16,32 (default 1,4 quick, 1,4,16,32 full)',
    },
)
