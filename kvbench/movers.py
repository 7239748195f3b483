"""Page movers: the copy methods the transfer benchmark times, and their registry.

Between torch-backed pools (device and host memory):
  ``per_page``   one ``copy_`` (one cudaMemcpyAsync) per page;
  ``batched``    one cuMemcpyBatchAsync call for all pages (CUDA >= 12.8 driver API,
                 through cuda-python's ``cuda.bindings``), where available;
  ``coalesced``  one copy of the same number of bytes, contiguous on both sides (what
                 the pages would cost if they were adjacent);
  ``triton``     a gather/scatter kernel (kernels/gather.py) that reads or writes
                 pinned host memory directly.
To and from files: ``mmap``, ``buffered`` and ``odirect`` with a thread pool, and
``odirect_merged`` (pages sorted by offset, adjacent ones read by one vectored preadv).

``COPY_METHODS`` (at the end) declares each method: the tier kinds it moves between
(kvbench.tiers.base.TIER_KINDS), what it needs, a one-line description, and the function
that builds it. The transfer benchmark plans every registered method that applies, so a
new copy method is its mover function here plus one ``register_copy_method`` entry.
"""

from __future__ import annotations

import importlib.util
import mmap as _mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from kvbench.errors import Skip
from kvbench.tiers.base import TIER_KINDS
from kvbench.tiers.nvme import FileBuffer, host_buffer


@dataclass(frozen=True)
class PoolCopy:
    """Pages to copy between two torch-backed pools: ``src`` and ``dst`` are
    ``[pages, stride]`` uint8 tensors (device or host memory); page ``src_ids[i]`` goes to
    page ``dst_ids[i]``, ``page_bytes`` of each. ``stream``: the CUDA stream a method that
    calls the driver itself enqueues on; ``device``: where a kernel runs."""

    src: Any
    dst: Any
    src_ids: Sequence[int]
    dst_ids: Sequence[int]
    page_bytes: int
    stream: Any = None
    device: str = "cuda"

    def part(self, start: int, stop: int) -> "PoolCopy":
        """The same copy for pages ``start``..``stop`` of the lists only."""
        return replace(self, src_ids=self.src_ids[start:stop], dst_ids=self.dst_ids[start:stop])


@dataclass(frozen=True)
class FileRows:
    """Pages of a file pool and the host rows they are read into or written from: page
    ``page_ids[r]`` (at byte ``page_ids[r] * stride``) <-> row r of ``rows`` (``[n, stride]``
    host uint8, 4 KiB-aligned rows). ``pool`` sets the queue depth (one request in flight
    per thread; None: one)."""

    file: FileBuffer
    stride: int
    page_ids: Sequence[int]
    rows: Any
    pool: ThreadPoolExecutor | None
    page_bytes: int


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
    """The descriptor a file method's requests go through (the O_DIRECT one, or None
    where O_DIRECT is unavailable, for a method with ``direct_io``)."""
    return f.fd_direct if copy_method(method).direct_io else f.fd


def _rows_io(job: FileRows, fd: int | None, write: bool, length: int) -> Callable[[], None]:
    """One request per page: ``length`` bytes of each row at its page's offset."""
    bufs = [host_buffer(job.rows[row, :length]) for row in range(len(job.page_ids))]
    return _parallel_io(fd, write, bufs, [p * job.stride for p in job.page_ids], job.pool)


def _durable(job: FileRows, io: Callable[[], None]) -> Callable[[], None]:
    """``io`` then fdatasync: a write counts only once it is durable."""
    def run() -> None:
        io()
        os.fdatasync(job.file.fd)
    return run


def mmap_reader(job: FileRows) -> Callable[[], None]:
    """Copy page_bytes of each page out of a fresh read-only shared mapping of the file
    (mapped per call: page faults and readahead are part of the time)."""
    import torch

    f, stride, pb = job.file, job.stride, job.page_bytes

    def run() -> None:
        mm = _mmap.mmap(f.fd, f.nbytes, _mmap.MAP_SHARED, _mmap.PROT_READ)
        try:
            with warnings.catch_warnings():  # a read-only mapping: torch warns, we only read
                warnings.simplefilter("ignore")
                view = torch.frombuffer(mm, dtype=torch.uint8)  # zero copy
            for row, pid in enumerate(job.page_ids):
                job.rows[row, :pb].copy_(view[pid * stride: pid * stride + pb])
            del view
        finally:
            mm.close()
    return run


def buffered_reader(job: FileRows) -> Callable[[], None]:
    """pread of page_bytes per page through the page cache."""
    return _rows_io(job, job.file.fd, False, job.page_bytes)


def odirect_reader(job: FileRows) -> Callable[[], None]:
    """O_DIRECT pread of each page's whole aligned stride."""
    return _rows_io(job, job.file.fd_direct, False, job.stride)


def odirect_merged_reader(job: FileRows) -> Callable[[], None]:
    """``file_reader_merged`` over the job's pages."""
    if job.file.fd_direct is None:
        raise Skip("O_DIRECT is not available in this directory")
    return file_reader_merged(job.file, job.stride, job.page_ids, job.rows, job.pool)


def buffered_writer(job: FileRows) -> Callable[[], None]:
    """pwrite of page_bytes per page through the page cache, then fdatasync."""
    return _durable(job, _rows_io(job, job.file.fd, True, job.page_bytes))


def odirect_writer(job: FileRows) -> Callable[[], None]:
    """O_DIRECT pwrite of each page's whole aligned stride, then fdatasync."""
    return _durable(job, _rows_io(job, job.file.fd_direct, True, job.stride))


def file_reader(f: FileBuffer, stride: int, page_ids: Sequence[int], out: Any, method: str,
                pool: ThreadPoolExecutor | None, page_bytes: int) -> Callable[[], None]:
    """Read pages ``page_ids`` of a file pool into rows of ``out`` (``[n, stride]`` host
    uint8, 4 KiB-aligned rows) by the registered file method ``method``. O_DIRECT reads
    the whole aligned stride; buffered and mmap read page_bytes. The pool sets the queue
    depth (``_parallel_io``)."""
    read = copy_method(method).read
    if read is None:
        raise ValueError(f"copy method {method} does not read files")
    return read(FileRows(f, stride, page_ids, out, pool, page_bytes))


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
    """Write rows of ``src`` (``[n, stride]`` host uint8) to pages of a file pool by the
    registered file method ``method``, then fdatasync: a write counts only once it is
    durable."""
    write = copy_method(method).write
    if write is None:
        raise ValueError(f"copy method {method} does not write files")
    return write(FileRows(f, stride, page_ids, src, pool, page_bytes))


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


# ------------------------------------------------------------------ the registry
#: queue depths a file method is timed at: one request at a time, the whole depth sweep
#: (writes: its shallowest and deepest), or the deepest only
QUEUE_DEPTH_RULES = ("one", "sweep", "deepest")


@dataclass(frozen=True)
class CopyMethod:
    """One way of moving pages, as the transfer benchmark times it.

    ``moves``: the (source kind, destination kind) pairs it applies to, kinds from
    kvbench.tiers.base.TIER_KINDS. Builders, each returning a callable that moves the
    pages once: ``copy`` (a PoolCopy, between memory tiers), ``read`` (FileRows, file ->
    host rows), ``write`` (FileRows, host rows -> file)."""

    name: str
    description: str
    moves: tuple[tuple[str, str], ...]
    copy: Callable[[PoolCopy], Callable[[], None]] | None = None
    read: Callable[[FileRows], Callable[[], None]] | None = None
    write: Callable[[FileRows], Callable[[], None]] | None = None
    needs_cuda: bool = False
    needs_triton: bool = False
    #: O_DIRECT file I/O: bypasses the page cache (so no warm-cache case), needs O_DIRECT
    #: in the folder, moves each page's whole aligned stride
    direct_io: bool = False
    #: QUEUE_DEPTH_RULES: the queue depths the transfer benchmark times it at
    queue_depths: str = "one"
    #: fio's ioengine for the same I/O (the fio reference beside a file case)
    fio_engine: str = ""
    #: reads through a memory mapping of the file (its warm ceiling also tries one copy
    #: out of a mapping)
    memory_mapped: bool = False
    #: moves one contiguous span of as many bytes instead of the listed pages (what they
    #: would cost if adjacent); checked by comparing that span
    contiguous_span: bool = False
    #: one host call per page: when both directions run at once they are enqueued in
    #: alternating chunks, so neither waits behind the other's whole enqueue
    call_per_page: bool = False
    #: also timed across page sizes (the transfer benchmark's ``sweep`` cases)
    page_size_sweep: bool = False
    #: also timed while a matmul runs on another stream (the ``overlap`` cases)
    compute_overlap: bool = False

    def applies(self, src_kind: str, dst_kind: str) -> bool:
        return (src_kind, dst_kind) in self.moves

    def unmet(self, cuda: bool) -> str | None:
        """Why this method cannot run here (one line), or None."""
        if self.needs_cuda and not cuda:
            return f"copy method {self.name} needs a CUDA device"
        if self.needs_triton and importlib.util.find_spec("triton") is None:
            return f"copy method {self.name} needs triton, which is not installed"
        return None


#: name -> CopyMethod, in the order plans list them
COPY_METHODS: dict[str, CopyMethod] = {}


def register_copy_method(m: CopyMethod) -> CopyMethod:
    """Add ``m`` to COPY_METHODS after checking that its kinds, builders and rules agree."""
    if not m.name or m.name in COPY_METHODS:
        raise ValueError(f"copy method name {m.name!r} is empty or already registered")
    for pair in m.moves:
        if len(pair) != 2 or not set(pair) <= set(TIER_KINDS):
            raise ValueError(f"copy method {m.name}: {pair!r} is not a pair of {TIER_KINDS}")
        src, dst = pair
        need = "read" if src == "file" else "write" if dst == "file" else "copy"
        if src == dst == "file" or getattr(m, need) is None:
            raise ValueError(f"copy method {m.name} moves {src}->{dst} but has no {need} builder")
    if m.queue_depths not in QUEUE_DEPTH_RULES:
        raise ValueError(f"copy method {m.name}: queue_depths must be one of {QUEUE_DEPTH_RULES}")
    COPY_METHODS[m.name] = m
    return m


def copy_method(name: str) -> CopyMethod:
    try:
        return COPY_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown copy method {name!r}; known: {', '.join(COPY_METHODS)}") from None


def methods_for(src_kind: str, dst_kind: str) -> list[CopyMethod]:
    """The registered methods that move pages from ``src_kind`` to ``dst_kind``, in order."""
    return [m for m in COPY_METHODS.values() if m.applies(src_kind, dst_kind)]


_MEMORY_PAIRS = (("host", "device"), ("device", "host"), ("device", "device"))
_HOST_DEVICE = (("host", "device"), ("device", "host"))

register_copy_method(CopyMethod(
    "per_page", "one copy_ (one cudaMemcpyAsync) per page", _MEMORY_PAIRS,
    copy=lambda j: per_page(j.src, j.dst, j.src_ids, j.dst_ids, j.page_bytes),
    call_per_page=True, page_size_sweep=True))
register_copy_method(CopyMethod(
    "batched", "all pages in one cuMemcpyBatchAsync call (CUDA >= 12.8, cuda-python)", _HOST_DEVICE,
    copy=lambda j: batched(j.src, j.dst, j.src_ids, j.dst_ids, j.page_bytes, j.stream),
    needs_cuda=True))
register_copy_method(CopyMethod(
    "coalesced", "one contiguous copy of the same bytes (the pages as if adjacent)", _MEMORY_PAIRS,
    copy=lambda j: coalesced(j.src, j.dst, len(j.src_ids) * j.src.shape[1]),
    contiguous_span=True, compute_overlap=True))
register_copy_method(CopyMethod(
    "triton", "a Triton gather/scatter kernel reading pinned host memory directly", _MEMORY_PAIRS,
    copy=lambda j: triton_gather(j.src, j.dst, j.src_ids, j.dst_ids, j.page_bytes, j.device),
    needs_cuda=True, needs_triton=True, page_size_sweep=True, compute_overlap=True))
register_copy_method(CopyMethod(
    "mmap", "copies out of a read-only shared mapping of the file", (("file", "host"),),
    read=mmap_reader, fio_engine="mmap", memory_mapped=True))
register_copy_method(CopyMethod(
    "buffered", "pread/pwrite of each page through the page cache", (("file", "host"), ("host", "file")),
    read=buffered_reader, write=buffered_writer, fio_engine="psync"))
register_copy_method(CopyMethod(
    "odirect", "O_DIRECT pread/pwrite of each page's aligned stride, one request per thread",
    (("file", "host"), ("host", "file")), read=odirect_reader, write=odirect_writer,
    direct_io=True, queue_depths="sweep", fio_engine="libaio", page_size_sweep=True))
register_copy_method(CopyMethod(
    "odirect_merged", "O_DIRECT reads sorted by offset, adjacent pages in one vectored preadv",
    (("file", "host"),), read=odirect_merged_reader, direct_io=True, queue_depths="deepest",
    fio_engine="libaio"))

#: the file methods that read and that write, in registry order
FILE_READ_METHODS = tuple(m.name for m in methods_for("file", "host"))
FILE_WRITE_METHODS = tuple(m.name for m in methods_for("host", "file"))
