"""Page movers: the copy methods the transfer benchmark times.

Between torch-backed pools (hbm, dram):
  ``per_page``   one ``copy_`` (one cudaMemcpyAsync) per page;
  ``batched``    one cuMemcpyBatchAsync call for all pages (CUDA >= 12.8 driver API,
                 through cuda-python's ``cuda.bindings``), where available;
  ``coalesced``  one copy of the same number of bytes, contiguous on both sides (what
                 the pages would cost if they were adjacent);
  ``triton``     a gather/scatter kernel (kernels/gather.py) that reads or writes
                 pinned host memory directly.
To and from files (nvme): ``mmap``, ``buffered`` and ``odirect`` with a thread pool, and
``odirect_merged`` (pages sorted by offset, adjacent ones read by one vectored preadv).
"""

from __future__ import annotations

import mmap as _mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence

from kvbench.errors import Skip
from kvbench.tiers.nvme import FileBuffer, host_buffer

TORCH_METHODS = ("per_page", "batched", "coalesced", "triton")
FILE_READ_METHODS = ("mmap", "buffered", "odirect", "odirect_merged")
FILE_WRITE_METHODS = ("buffered", "odirect")


# ------------------------------------------------------------------ torch-backed pools
def per_page(src: Any, dst: Any, src_ids: Sequence[int], dst_ids: Sequence[int],
             page_bytes: int) -> Callable[[], None]:
    """One copy per page (non-blocking between pinned host and device)."""
    pairs = [(src[s, :page_bytes], dst[d, :page_bytes]) for s, d in zip(src_ids, dst_ids)]

    def run() -> None:
        for a, b in pairs:
            b.copy_(a, non_blocking=True)
    return run


def coalesced(src: Any, dst: Any, nbytes: int) -> Callable[[], None]:
    """One contiguous copy of nbytes (src and dst are pools; their first bytes)."""
    a = src.view(-1)[:nbytes]
    b = dst.view(-1)[:nbytes]

    def run() -> None:
        b.copy_(a, non_blocking=True)
    return run


def triton_gather(src: Any, dst: Any, src_ids: Sequence[int], dst_ids: Sequence[int],
                  page_bytes: int, device: str) -> Callable[[], None]:
    """The gather/scatter kernel; on CUDA it touches pinned host pools directly."""
    import torch

    from kvbench.kernels_loader import load_kernels

    gather = load_kernels("gather")
    if device == "cuda":
        for t in (src, dst):
            if t.device.type == "cpu" and not t.is_pinned():
                raise Skip("the gather kernel reads host memory only when it is pinned")
    si = torch.tensor(list(src_ids), dtype=torch.int64, device=device)
    di = torch.tensor(list(dst_ids), dtype=torch.int64, device=device)

    def run() -> None:
        gather.page_copy(src, dst, si, di, page_bytes)
    return run


class BatchedCopyError(RuntimeError):
    """cuMemcpyBatchAsync is installed but failed (an exception from the binding or a
    non-zero CUresult): a broken method, recorded as an error case, never a skip."""


def _cu_error_text(cu: Any, err: Any) -> str:
    """'CUDA_ERROR_INVALID_VALUE: invalid argument (CUresult 1)', as far as the binding
    can say (cuGetErrorName / cuGetErrorString return (CUresult, bytes))."""
    parts = []
    for fn in ("cuGetErrorName", "cuGetErrorString"):
        try:
            res = getattr(cu, fn)(err)
            text = res[1] if isinstance(res, tuple) else res
            parts.append(text.decode() if isinstance(text, bytes) else str(text))
        except Exception:  # noqa: BLE001 - the number alone still identifies it
            pass
    return f"{': '.join(parts) or err} (CUresult {int(err)})"


def batched(src: Any, dst: Any, src_ids: Sequence[int], dst_ids: Sequence[int],
            page_bytes: int, stream: Any) -> Callable[[], None]:
    """All pages in one cuMemcpyBatchAsync call (CUDA 12.8+ driver API).

    Skip only when the binding is missing (no cuda-python, or one without the call);
    once it is there, any failure raises BatchedCopyError with the binding's message."""
    try:
        from cuda.bindings import driver as cu  # cuda-python
    except ImportError:
        raise Skip("cuMemcpyBatchAsync needs cuda-python (cuda.bindings), not installed") from None
    if not hasattr(cu, "cuMemcpyBatchAsync"):
        raise Skip("this cuda-python has no cuMemcpyBatchAsync (needs CUDA >= 12.8)")
    n = len(src_ids)
    sb, db = src.data_ptr(), dst.data_ptr()
    ss, ds = src.stride(0), dst.stride(0)
    try:
        # the binding type-checks every entry: CUdeviceptr, not int
        srcs = [cu.CUdeviceptr(sb + s * ss) for s in src_ids]
        dsts = [cu.CUdeviceptr(db + d * ds) for d in dst_ids]
        attr = cu.CUmemcpyAttributes()
        attr.srcAccessOrder = cu.CUmemcpySrcAccessOrder.CU_MEMCPY_SRC_ACCESS_ORDER_STREAM
        attr.flags = 0
        handle = cu.CUstream(stream.cuda_stream)
    except Exception as exc:  # noqa: BLE001 - whatever the binding raises, with its message
        raise BatchedCopyError(f"cuMemcpyBatchAsync arguments refused by cuda-python: "
                               f"{type(exc).__name__}: {exc}") from exc
    sizes = [page_bytes] * n

    def call() -> None:
        try:
            res = cu.cuMemcpyBatchAsync(dsts, srcs, sizes, n, [attr], [0], 1, handle)
        except Exception as exc:  # noqa: BLE001 - binding signatures vary by release
            raise BatchedCopyError(f"cuMemcpyBatchAsync raised {type(exc).__name__}: {exc}") from exc
        # cuda-python returns (CUresult,) or CUresult (13.x), (CUresult, failIdx) (12.8/12.9)
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise BatchedCopyError(f"cuMemcpyBatchAsync failed: {_cu_error_text(cu, err)}")
    call()  # probe once: a broken call is reported as an error before any timing
    stream.synchronize()
    return call


# ------------------------------------------------------------------ files
def queue_depth(pool: ThreadPoolExecutor | None) -> int:
    """Requests a file mover keeps in flight: one per pool thread (1 without a pool)."""
    return pool._max_workers if pool else 1  # noqa: SLF001


def _parallel_io(fd: int | None, write: bool, bufs: list[Any], offsets: list[int],
                 pool: ThreadPoolExecutor | None) -> Callable[[], None]:
    """A callable doing one pread/pwrite per (buffer, offset) at a queue depth of the
    pool's size: that many threads each take the next request from one shared queue
    as soon as their last one completes (os.preadv / os.pwritev release the GIL), so
    the device always sees that many requests in flight until the list runs out."""
    if fd is None:
        raise Skip("O_DIRECT is not available in this directory")
    op = os.pwritev if write else os.preadv
    vecs = [b if isinstance(b, list) else [b] for b in bufs]  # a list: one vectored call
    lengths = [sum(len(memoryview(x)) for x in v) for v in vecs]
    what = "write" if write else "read"

    def do(r: int) -> None:
        got = op(fd, vecs[r], offsets[r])
        if got != lengths[r]:
            raise OSError(f"short {what}: {got} of {lengths[r]} bytes at {offsets[r]}")

    depth = min(queue_depth(pool), len(bufs))

    def worker(queue: Any) -> None:
        for r in queue:  # next() on a shared iterator: each request taken exactly once
            do(r)

    def run() -> None:
        if depth <= 1:
            for r in range(len(bufs)):
                do(r)
            return
        queue = iter(range(len(bufs)))
        futs = [pool.submit(worker, queue) for _ in range(depth)]
        wait(futs)  # every worker done before an error propagates (the fd stays open for them)
        for fut in futs:
            fut.result()
    return run


def _fd(f: FileBuffer, method: str) -> int | None:
    return f.fd_direct if method == "odirect" else f.fd


def file_reader(f: FileBuffer, stride: int, page_ids: Sequence[int], out: Any, method: str,
                pool: ThreadPoolExecutor | None, page_bytes: int) -> Callable[[], None]:
    """Read pages ``page_ids`` of a file pool into rows of ``out`` (``[n, stride]`` host
    uint8, 4 KiB-aligned rows). O_DIRECT reads the whole aligned stride; buffered and
    mmap read page_bytes. The pool sets the queue depth (``_parallel_io``)."""
    if method == "mmap":
        import torch

        def run_mmap() -> None:
            mm = _mmap.mmap(f.fd, f.nbytes, _mmap.MAP_SHARED, _mmap.PROT_READ)
            try:
                with warnings.catch_warnings():  # a read-only mapping: torch warns, we only read
                    warnings.simplefilter("ignore")
                    view = torch.frombuffer(mm, dtype=torch.uint8)  # zero copy
                for row, pid in enumerate(page_ids):
                    out[row, :page_bytes].copy_(view[pid * stride: pid * stride + page_bytes])
                del view
            finally:
                mm.close()
        return run_mmap
    if method == "odirect_merged":
        if f.fd_direct is None:
            raise Skip("O_DIRECT is not available in this directory")
        return file_reader_merged(f, stride, page_ids, out, pool)
    length = stride if method == "odirect" else page_bytes
    bufs = [host_buffer(out[row, :length]) for row in range(len(page_ids))]
    return _parallel_io(_fd(f, method), False, bufs, [p * stride for p in page_ids], pool)


def file_reader_merged(f: FileBuffer, stride: int, page_ids: Sequence[int], out: Any,
                       pool: ThreadPoolExecutor | None, max_run: int = 256) -> Callable[[], None]:
    """O_DIRECT reads of pages sorted by file offset, each run of adjacent pages read by
    one vectored preadv straight into its (scattered) destination rows: fewer, larger
    requests for the same pages (what a storage engine's reader does)."""
    order = sorted(range(len(page_ids)), key=lambda r: page_ids[r])
    bufs: list[list[Any]] = []
    offsets: list[int] = []
    prev = None
    for r in order:
        pid = page_ids[r]
        if prev is not None and pid == prev + 1 and len(bufs[-1]) < max_run:
            bufs[-1].append(host_buffer(out[r, :stride]))
        else:
            bufs.append([host_buffer(out[r, :stride])])
            offsets.append(pid * stride)
        prev = pid
    return _parallel_io(f.fd_direct, False, bufs, offsets, pool)


def file_writer(f: FileBuffer, stride: int, page_ids: Sequence[int], src: Any, method: str,
                pool: ThreadPoolExecutor | None, page_bytes: int) -> Callable[[], None]:
    """Write rows of ``src`` (``[n, stride]`` host uint8) to pages of a file pool, then
    fdatasync: a write counts only once it is durable."""
    length = stride if method == "odirect" else page_bytes
    bufs = [host_buffer(src[row, :length]) for row in range(len(page_ids))]
    io = _parallel_io(_fd(f, method), True, bufs, [p * stride for p in page_ids], pool)

    def run() -> None:
        io()
        os.fdatasync(f.fd)
    return run


def _spans(out: Any, nbytes: int, chunk: int, offset: int) -> tuple[list[Any], list[int]]:
    flat = out.view(-1)
    starts = list(range(0, nbytes, chunk))
    bufs = [host_buffer(flat[o: min(nbytes, o + chunk)]) for o in starts]
    return bufs, [offset + o for o in starts]


def sequential_reader(f: FileBuffer, nbytes: int, out: Any, chunk: int, method: str,
                      pool: ThreadPoolExecutor | None, offset: int = 0) -> Callable[[], None]:
    """Read nbytes of the file from ``offset`` in ``chunk``-byte requests into ``out``
    (contiguous host uint8): the ceiling for paged file reads, and the way a
    layer-contiguous region is read."""
    return _parallel_io(_fd(f, method), False, *_spans(out, nbytes, chunk, offset), pool)


def sequential_mmap_reader(f: FileBuffer, nbytes: int, out: Any) -> Callable[[], None]:
    """Copy the file's first nbytes out of a read-only mapping into ``out`` (contiguous
    host uint8) in one copy: a warm mmap read's ceiling."""
    import torch

    def run() -> None:
        mm = _mmap.mmap(f.fd, f.nbytes, _mmap.MAP_SHARED, _mmap.PROT_READ)
        try:
            with warnings.catch_warnings():  # a read-only mapping: torch warns, we only read
                warnings.simplefilter("ignore")
                view = torch.frombuffer(mm, dtype=torch.uint8)
            out.view(-1)[:nbytes].copy_(view[:nbytes])
            del view
        finally:
            mm.close()
    return run


def sequential_writer(f: FileBuffer, nbytes: int, src: Any, chunk: int,
                      pool: ThreadPoolExecutor | None, direct: bool = True,
                      offset: int = 0) -> Callable[[], None]:
    """Write nbytes from ``src`` sequentially at ``offset`` (O_DIRECT when ``direct``,
    and available), then fdatasync."""
    fd = f.fd_direct if (direct and f.fd_direct is not None) else f.fd
    io = _parallel_io(fd, True, *_spans(src, nbytes, chunk, offset), pool)

    def run() -> None:
        io()
        os.fdatasync(f.fd)
    return run
