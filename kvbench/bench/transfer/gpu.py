"""Transfer cases with a CUDA device at one end: contiguous ceilings, paged copies
per copy method (each paired with a contiguous copy of the same bytes), both
directions at once, NVMe -> HBM through pinned staging, copies during a matmul."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kvbench import movers
from kvbench.measure import check_limits, gbps, label_cache
from kvbench.bench import RunContext, Skip, odirect_tier_or_skip, tier_or_skip
from kvbench.results import make_case, summarize
from kvbench.timing import ahead_note
from kvbench.spec import PageSpec, get_format
from kvbench.tiers import tier_class
from kvbench.units import MiB
from kvbench.bench.transfer.files import _fill_file_pool, _read_ceiling
from kvbench.bench.transfer.common import (BENCH_KEY, PER_PAGE_CHUNK, _cfg, _name, _pages_for, _rng,
                                           budget_s, ceiling_bytes, sample_bytes)

# ----------------------------------------------------------------------------- GPU cases
def _cuda_stream():
    import torch

    return torch.cuda.Stream()


def _contiguous_buffers(src: str, dst: str, nbytes: int):
    import torch

    from kvbench.tiers.dram import aligned_host_empty

    def make(where: str):
        if tier_class(where).device_memory:
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
    nbytes = ceiling_bytes(ctx)
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


def _pool_copy(p: _Pools, stream: Any) -> movers.PoolCopy:
    return movers.PoolCopy(p.src.tensor, p.dst.tensor, p.src_ids, p.dst_ids, p.spec.page_bytes, stream)


def _mover(ctx: RunContext, method: str, p: _Pools, stream: Any) -> Callable[[], None]:
    """The registered copy method ``method`` over the pools' pages, on ``stream``."""
    return movers.copy_method(method).copy(_pool_copy(p, stream))


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
        if movers.copy_method(method).contiguous_span:
            ok = torch.equal(p.src.tensor.view(-1)[: n * p.src.stride].to("cuda"),
                             p.dst.tensor.view(-1)[: n * p.src.stride].to("cuda"))
            if not ok:
                raise AssertionError(f"{method} copy moved wrong data")
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
        m = movers.copy_method(method)
        if m.call_per_page:
            # each direction's pages on its own stream, enqueued in alternating chunks of
            # PER_PAGE_CHUNK pages (a stream switch per chunk, not per page; a chunk stays
            # below CUDA's ~1000 queued operations per stream, so neither direction waits
            # for the other's enqueue), behind a GPU sleep
            k = PER_PAGE_CHUNK
            chunks = [(m.copy(_pool_copy(up, s1).part(i, i + k)),
                       m.copy(_pool_copy(down, s2).part(i, i + k))) for i in range(0, n, k)]

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
        if not m.contiguous_span:
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


def staged_pipeline(src: Any, dst: Any, src_ids: list[int], dst_ids: list[int], pool: Any) -> Callable[[], None]:
    """nvme->hbm through pinned staging: O_DIRECT page reads (``pool``'s depth) into two
    pinned slots of 8 MiB of rows, each copied to HBM and scattered into the destination
    pages on one stream while the other fills (kvbench.measure.staged)."""
    import torch

    from kvbench.measure import staged
    from kvbench.tiers.dram import aligned_host_empty

    n, pb, stride = len(src_ids), src.page_bytes, src.stride
    chunk = max(1, min(n, (8 * MiB) // stride))
    slots = [aligned_host_empty(chunk * stride, pin=True).view(chunk, stride) for _ in range(2)]
    dev = [torch.empty(chunk, stride, dtype=torch.uint8, device="cuda") for _ in range(2)]
    done = [torch.cuda.Event() for _ in range(2)]
    stream = _cuda_stream()
    idx = torch.tensor(dst_ids, dtype=torch.long, device="cuda")

    def hand_on(c: staged.Chunk):
        with torch.cuda.stream(stream):
            dev[c.slot][:c.rows].copy_(slots[c.slot][:c.rows], non_blocking=True)
            dst.tensor[:, :pb].index_copy_(0, idx[c.start: c.start + c.rows], dev[c.slot][:c.rows, :pb])
            done[c.slot].record(stream)
        return done[c.slot]
    chunks = staged.page_chunks(src.file(), stride, src_ids, slots, "odirect", pool, pb, chunk)
    return staged.StagedReader(chunks, 2, hand_on)


def _nvme_to_hbm(ctx, spec, n, cfg, rng, src, dst, depth):
    import torch

    from kvbench.measure import paired

    direction = "nvme->hbm"
    src_ids, dst_ids = rng.sample(range(2 * n), n), rng.sample(range(2 * n), n)
    data = _fill_file_pool(src, 2 * n, spec.page_bytes, True)[src_ids]
    f = src.file()
    pool = ThreadPoolExecutor(depth)
    resid: list[float] = []
    try:
        run = staged_pipeline(src, dst, src_ids, dst_ids, pool)
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
        p.verify() if not movers.copy_method(method).contiguous_span else None
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
