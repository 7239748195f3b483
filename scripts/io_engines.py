"""Which engine should kvbench's O_DIRECT page reader use: threads issuing os.preadv
(what kvbench.movers does) or io_uring through the liburing binding (pip install
liburing)? Both read the same random pages of the same file, cold (O_DIRECT), at queue
depths 1, 4, 16 and 64, sampled alternately; the ratio is taken per pair.

    python scripts/io_engines.py [--dir /var/tmp] [--page 64KiB] [--mib 256] [--budget 6]

What it found on the CI-class VM (2 cores, virtio disk) is in docs/method.md."""

from __future__ import annotations

import argparse
import mmap
import os
import random
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from kvbench.measure.paired import Arm, interleave
from kvbench.units import GB, parse_size


def thread_reader(fd: int, views: list[memoryview], offsets: list[int], qd: int):
    from kvbench.movers import _parallel_io  # noqa: PLC2701 - the reader under test

    pool = ThreadPoolExecutor(qd) if qd > 1 else None
    return _parallel_io(fd, False, views, offsets, pool), pool


def uring_reader(fd: int, views: list[memoryview], offsets: list[int], qd: int):
    import liburing as u

    ring = u.Ring()
    u.io_uring_queue_init(max(qd, 1), ring)
    cqe = u.Cqe()
    iovs = [u.Iovec([v]) for v in views]  # the binding takes buffers as Iovec of memoryviews

    def run() -> None:
        # keep qd requests queued; submit them together, then reap every completion
        # that is ready at once (one Python round trip per batch, not per request)
        nxt, done, inflight = 0, 0, 0
        while done < len(views):
            while inflight < qd and nxt < len(views):
                sqe = u.io_uring_get_sqe(ring)
                u.io_uring_prep_readv(sqe, fd, iovs[nxt], offsets[nxt])
                nxt += 1
                inflight += 1
            u.io_uring_submit_and_wait(ring, 1)
            seen = 0
            for _ in u.CqeIter(ring, cqe):
                if cqe[0].res != len(views[0]):
                    raise OSError(f"io_uring read: {cqe[0].res}")
                seen += 1
            u.io_uring_cq_advance(ring, seen)
            done += seen
            inflight -= seen
    return run, ring


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.environ.get("KVBENCH_NVME_DIR", "/var/tmp"))
    ap.add_argument("--page", default="64KiB")
    ap.add_argument("--mib", type=int, default=256, help="file size in MiB (half of it read per sample)")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per queue depth")
    a = ap.parse_args()
    try:
        import liburing  # noqa: F401
    except ImportError:
        print("io_engines: liburing is not installed (pip install liburing)", file=sys.stderr)
        return 2
    page = parse_size(a.page)
    n_file = a.mib * 2 ** 20 // page
    fd_path = tempfile.NamedTemporaryFile(dir=a.dir, prefix="kvbench-io-engines-", delete=False)
    path = fd_path.name
    try:
        with open(path, "wb") as f:
            for _ in range(n_file):
                f.write(os.urandom(page))
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        rng = random.Random(0)
        ids = rng.sample(range(n_file), n_file // 2)
        buf = mmap.mmap(-1, len(ids) * page)
        views = [memoryview(buf)[i * page:(i + 1) * page] for i in range(len(ids))]
        offsets = [p * page for p in ids]
        print(f"{len(ids)} random {page // 1024} KiB O_DIRECT reads per sample from {path}")
        print(f"{'qd':>4} {'threads GB/s':>13} {'io_uring GB/s':>14} {'uring/threads':>14} {'95% CI':>16}")
        for qd in (1, 4, 16, 64):
            th, pool = thread_reader(fd, views, offsets, qd)
            ur, ring = uring_reader(fd, views, offsets, qd)
            import time

            def timer(fn):
                def sample(k):
                    out = []
                    for _ in range(k):
                        t0 = time.perf_counter()
                        fn()
                        out.append(time.perf_counter() - t0)
                    return out
                return sample
            nbytes = len(ids) * page
            res = interleave({"threads": Arm(timer(th), nbytes), "uring": Arm(timer(ur), nbytes)},
                             {"ratio": ("uring", "threads")}, budget_s=a.budget, warmup=1)
            med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            r = res.ratios["ratio"]
            print(f"{qd:>4} {nbytes / med(res.arms['threads'].seconds) / GB:>13.3f} "
                  f"{nbytes / med(res.arms['uring'].seconds) / GB:>14.3f} {r['median']:>14.3f} "
                  f"{r['ci_low']:>7.3f}-{r['ci_high']:.3f}  n={r['n']}")
            if pool:
                pool.shutdown()
            import liburing as u
            u.io_uring_queue_exit(ring)
        os.close(fd)
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
