"""GPUDirect Storage (GDS): pages of a file read straight into device memory and written
from it, through cuFile (``cuda.bindings.cufile``: cuda-bindings >= 12.9.1, with
libcufile from the nvidia-cufile wheel or a CUDA install), or kvikio where only that is.

cuFile moves bytes in one of two ways, and a result must say which: GDS proper (DMA
between the drive and GPU memory, through the nvidia-fs kernel driver or the kernel's
PCI P2PDMA) or its compatibility mode (POSIX reads and writes through host bounce
buffers: a staged pipeline inside the library). ``gds_status()`` says beforehand which
would run, from the driver's properties after cuFileDriverOpen; ``GdsFile.observe``
says afterwards which did, from cuFile's per-GPU counts of nvidia-fs, P2PDMA and POSIX
requests. Compatibility mode is reported as ``cufile-compat``, never as GDS.

The calls (cuda-bindings 13.0.0, 13.1.0, 13.5.0 wheels: cuda/bindings/cufile.pyx and
the compiled module's docstrings; struct layouts from cufile.h of nvidia-cufile 1.20):
``driver_open()``, ``driver_close()``, ``driver_get_properties(ptr to CUfileDrvProps_t)``,
``get_parameter_bool(BoolConfigParameter)``, ``handle_register(Descr.ptr) -> handle``,
``handle_deregister(handle)``, ``buf_register(ptr, nbytes, flags)``, ``buf_deregister(ptr)``,
``read / write(handle, buf_ptr_base, size, file_offset, buf_ptr_offset)`` (bytes moved;
13.0 returns None; a failure raises cuFileError, or returns a negative error), and the
stats calls of 13.1+ (``set_stats_level``, ``stats_start``, ``get_stats_l3(StatsLevel3.ptr)``).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kvbench.errors import Skip
from kvbench.movers import queue_depth
from kvbench.tiers.nvme import FileBuffer

#: what ``config.gds_path`` may say: GDS proper, cuFile's compatibility mode, some
#: requests each way, kvikio through cuFile, kvikio's own POSIX mode
GDS_PATHS = ("cufile", "cufile-unverified", "cufile-compat", "cufile-mixed", "kvikio", "kvikio-compat")
#: bytes of the buffer cuFile's level-3 stats are read into: larger than any libcufile's
#: CUfileStatsLevel3_t (5,000 B up to 1.18, 5,112 B from 1.19), so a newer library
#: never writes past it
STATS_BUFFER_BYTES = 16384
#: bit positions (cufile.h): CU_FILE_NVME_SUPPORTED of CUfileDriverStatusFlags_t,
#: CU_FILE_ALLOW_COMPAT_MODE of CUfileDriverControlFlags_t, CU_FILE_P2P_SUPPORTED of
#: CUfileFeatureFlags_t; a flag is set when ``word & (1 << bit)`` (as kvikio's
#: DriverProperties reads them; nvidia-fs version 0.0: the driver is not loaded)
NVME_SUPPORTED_BIT, ALLOW_COMPAT_BIT, P2P_SUPPORTED_BIT = 4, 1, 4
#: what cuFile's log says when cuFileDriverOpen falls back (libcufile 1.20, cufio-drv)
COMPAT_LOG_LINE = "running in compatible mode"


class GdsIOError(RuntimeError):
    """A cuFile read or write failed after the file registered: a broken path, recorded
    as an error case, never a skip."""


# ------------------------------------------------------------------ what would run (pure)
class _Nvfs(ctypes.Structure):
    _fields_ = [("major_version", ctypes.c_uint), ("minor_version", ctypes.c_uint),
                ("poll_thresh_size", ctypes.c_size_t), ("max_direct_io_size", ctypes.c_size_t),
                ("dstatusflags", ctypes.c_uint), ("dcontrolflags", ctypes.c_uint)]


class _DrvProps(ctypes.Structure):
    """CUfileDrvProps_t (cufile.h); the binding takes its address, it has no wrapper."""
    _fields_ = [("nvfs", _Nvfs), ("fflags", ctypes.c_uint), ("max_device_cache_size", ctypes.c_uint),
                ("per_buffer_cache_size", ctypes.c_uint), ("max_device_pinned_mem_size", ctypes.c_uint),
                ("max_batch_io_size", ctypes.c_uint), ("max_batch_io_timeout_msecs", ctypes.c_uint)]


@dataclass(frozen=True)
class DriverProps:
    """What cuFileDriverGetProperties says: the nvidia-fs driver's version ((0, 0): not
    loaded) and its flag words (bit positions: the *_BIT constants)."""
    nvfs_version: tuple[int, int]
    dstatusflags: int
    dcontrolflags: int
    fflags: int

    @property
    def nvme_supported(self) -> bool:
        return bool(self.dstatusflags >> NVME_SUPPORTED_BIT & 1)

    @property
    def compat_allowed(self) -> bool:
        return bool(self.dcontrolflags >> ALLOW_COMPAT_BIT & 1)

    @property
    def p2pdma_supported(self) -> bool:
        return bool(self.fflags >> P2P_SUPPORTED_BIT & 1)


def cufile_decision(props: DriverProps, force_compat: bool | None = None, use_p2pdma: bool | None = None,
                    log_compat: bool = False) -> tuple[bool, str, str]:
    """(usable, path, reason) from an open driver's properties, the force_compat_mode and
    use_pci_p2pdma settings (None: unknown) and whether cuFile's log said it fell back."""
    compat = ("cuFile compatibility mode (POSIX I/O through host bounce buffers, not GDS)")
    if force_compat:
        return True, "cufile-compat", f"{compat}: force_compat_mode is set"
    if log_compat:
        return True, "cufile-compat", f"{compat}: cuFile's log says '{COMPAT_LOG_LINE}'"
    major, minor = props.nvfs_version
    if (major, minor) != (0, 0) and props.nvme_supported:
        return True, "cufile", f"GDS through nvidia-fs {major}.{minor} (NVMe supported)"
    if props.p2pdma_supported and use_p2pdma:
        return True, "cufile", "GDS through the kernel's PCI P2PDMA (use_pci_p2pdma)"
    why = ["the nvidia-fs driver is not loaded" if (major, minor) == (0, 0)
           else f"nvidia-fs {major}.{minor} reports no NVMe support",
           "no PCI P2PDMA" if not props.p2pdma_supported else "PCI P2PDMA off (use_pci_p2pdma)"]
    if props.compat_allowed:
        return True, "cufile-compat", f"{compat}: {', '.join(why)}"
    return False, "none", f"GDS unusable ({', '.join(why)}) and cuFile's allow_compat_mode is off"


def kvikio_decision(compat: Any) -> tuple[bool, str, str]:
    """(usable, path, reason) from kvikio's compat mode (a bool in older releases, a
    CompatMode ON / OFF / AUTO in newer ones)."""
    name = getattr(compat, "name", None) or {True: "ON", False: "OFF"}.get(compat, str(compat)).upper()
    if name == "ON":
        return True, "kvikio-compat", "kvikio in its compatibility mode: POSIX I/O, cuFile not used (not GDS)"
    if name in ("OFF", "AUTO"):
        return True, "kvikio", (f"kvikio through cuFile (compat_mode {name}); whether cuFile runs GDS or its "
                                "own compatibility mode cannot be told without cuda.bindings.cufile")
    return False, "none", f"kvikio's compat_mode is {compat!r}: neither ON, OFF nor AUTO"


def stats_layout_problem(mod: Any) -> str:
    """Why cuFile's level-3 stats cannot be read safely here ("" when they can): the
    binding's CUfileStatsLevel3_t must be libcufile's (libcufile 1.19 added the readv /
    writev counters to level 1, and a binding built for the other layout reads every
    per-GPU count at the wrong offset: cuda-python issue 2794)."""
    try:
        v = int(mod.get_version())
    except Exception:  # noqa: BLE001 - any failure: the layout cannot be told
        return "libcufile's version is unknown"
    names = getattr(getattr(mod, "stats_level1_dtype", None), "names", None)
    if not names or not hasattr(getattr(mod, "StatsLevel3", None), "from_ptr"):
        return "this cuda-bindings does not describe its stats layout"
    if any(n.startswith("readv") for n in names) != (v >= 1190):
        return (f"cuda-bindings' CUfileStatsLevel3_t and libcufile {v // 1000}.{v % 1000 // 10}'s differ "
                "(cuda-python issue 2794)")
    return ""


def observed_path(nvfs: int, p2p: int, posix: int) -> str | None:
    """The path cuFile's per-GPU request counts show (None: it counted nothing)."""
    direct = nvfs + p2p
    if direct and posix:
        return "cufile-mixed"
    return "cufile" if direct else "cufile-compat" if posix else None


def _quietly(step: Callable[[], Any]) -> None:
    """``step()``, any failure ignored (restoring state after another failure)."""
    try:
        step()
    except Exception:  # noqa: BLE001 - best effort by design
        pass


# ------------------------------------------------------------------ probing this machine
def _log_path() -> str:
    """cuFile's log file: $CUFILE_LOGFILE_PATH, else a per-process one in the temp folder
    (removed at exit), so cuFile never writes ``cufile.log`` into the working directory."""
    if "CUFILE_LOGFILE_PATH" not in os.environ:
        path = str(Path(tempfile.gettempdir()) / f"kvbench-cufile-{os.getpid()}.log")
        os.environ["CUFILE_LOGFILE_PATH"] = path
        atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return os.environ["CUFILE_LOGFILE_PATH"]


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _log_says_compat(path: str, since: int) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            return COMPAT_LOG_LINE.encode() in fh.read(1 << 20)
    except OSError:
        return False


def cufile_module() -> Any:
    """``cuda.bindings.cufile``, or ImportError saying what is missing."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        raise ImportError("cuda-bindings is not installed (no cuda.bindings)")
    try:
        import cuda.bindings.cufile as mod
    except ImportError as exc:
        raise ImportError(f"cuda-bindings has no cufile module (needs cuda-bindings >= 12.9.1): {exc}") from None
    return mod


def _param(mod: Any, name: str) -> bool | None:
    try:
        return bool(mod.get_parameter_bool(getattr(mod.BoolConfigParameter, name)))
    except Exception:  # noqa: BLE001 - libcufile < 1.14 or a binding without the call
        return None


def _cuda_context() -> None:
    """Make torch's CUDA context current in this thread (cuFile opens on it)."""
    import torch

    torch.empty(1, device="cuda")


class _Driver:
    """cuFileDriverOpen .. cuFileDriverClose; ``status`` is cufile_decision's verdict.
    Opening raises Skip with the reason where cuFile cannot run."""

    def __init__(self, mod: Any):
        self.mod, self.status, self.version = mod, (False, "none", ""), ""

    def __enter__(self) -> "_Driver":
        log = _log_path()
        try:
            v = int(self.mod.get_version())
            self.version = f"{v // 1000}.{v % 1000 // 10}"
        except self.mod.cuFileError:
            self.version = "unknown"
        except Exception as exc:  # noqa: BLE001 - DynamicLibNotFoundError, OSError: no libcufile
            raise Skip(f"libcufile cannot load: {str(exc).splitlines()[0]}") from None
        _cuda_context()
        since = _log_size(log)
        try:
            self.mod.driver_open()
        except Exception as exc:  # noqa: BLE001 - cuFileError, or a ValueError for a code the binding lacks
            raise Skip(f"cuFileDriverOpen failed: {exc}") from None
        try:
            raw = _DrvProps()
            self.mod.driver_get_properties(ctypes.addressof(raw))
            self.props = DriverProps((raw.nvfs.major_version, raw.nvfs.minor_version), raw.nvfs.dstatusflags,
                                     raw.nvfs.dcontrolflags, raw.fflags)
            self.status = cufile_decision(self.props, _param(self.mod, "FORCE_COMPAT_MODE"),
                                          _param(self.mod, "USE_PCIP2PDMA"), _log_says_compat(log, since))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.mod.driver_close()
        except Exception:  # noqa: BLE001 - closing must not hide what ended the session
            pass


def _kvikio_status() -> tuple[bool, str, str] | None:
    """kvikio's verdict where kvikio is installed, else None."""
    if importlib.util.find_spec("kvikio") is None:
        return None
    try:
        import kvikio.defaults as d

        compat = d.compat_mode() if hasattr(d, "compat_mode") else d.get("compat_mode")
    except Exception as exc:  # noqa: BLE001 - a broken install says why
        return False, "none", f"kvikio cannot tell its compatibility mode: {type(exc).__name__}: {exc}"
    return kvikio_decision(compat)


def gds_status(odirect: tuple[bool, str] | None = None) -> tuple[bool, str, str]:
    """(usable, path, reason): which path a GDS case would take here (``GDS_PATHS``;
    "none" when unusable, the reason saying why in one line). ``odirect``: the nvme
    tier's ``odirect_status()``, when its folder is known."""
    from kvbench.tiers.hbm import cuda_status

    ok, why = cuda_status()
    if not ok:
        return False, "none", f"needs a CUDA device: {why}"
    if odirect is not None and not odirect[0]:
        return False, "none", f"O_DIRECT unavailable: {odirect[1]}"
    try:
        mod = cufile_module()
    except ImportError as exc:
        return _kvikio_status() or (False, "none", str(exc))
    try:
        with _Driver(mod) as drv:
            return drv.status
    except Skip as exc:
        return False, "none", str(exc)


# ------------------------------------------------------------------ moving pages
def _bind_context() -> Callable[[], None] | None:
    """A thread initializer making this thread's CUDA context current in the pool's
    threads (cuFile runs on the calling thread's context), or None without one."""
    try:
        from cuda.bindings import driver as cu

        err, ctx = cu.cuCtxGetCurrent()
    except Exception:  # noqa: BLE001 - no driver binding: threads use the runtime's default
        return None
    if int(err) != 0 or not int(ctx):
        return None
    return lambda: cu.cuCtxSetCurrent(ctx)


def io_pool(depth: int) -> ThreadPoolExecutor:
    """``depth`` threads, each with the caller's CUDA context current: one request in
    flight per thread (also fine for the movers' O_DIRECT reads)."""
    bind = _bind_context()
    return ThreadPoolExecutor(depth, initializer=bind) if bind else ThreadPoolExecutor(depth)


def _parallel(do: Callable[[int], None], n: int, pool: ThreadPoolExecutor | None) -> None:
    """do(0..n-1) with as many in flight as the pool has threads (movers._parallel_io's
    shared queue: each thread takes the next request as its last one completes)."""
    depth = min(queue_depth(pool), n)
    if depth <= 1:
        for r in range(n):
            do(r)
        return
    queue = iter(range(n))
    futs = [pool.submit(lambda: [do(r) for r in queue]) for _ in range(depth)]
    wait(futs)
    for fut in futs:
        fut.result()


def _checked(mod: Any, got: Any, want: int, what: str) -> None:
    """A cuFileRead/Write result: the bytes moved (None from bindings that drop it);
    negative is -errno, or -CUfileOpError above 5000 (cufile.h IS_CUFILE_ERR)."""
    if got is None or got == want:
        return
    if got < 0:
        code = -int(got)
        text = mod.op_status_error(code) if code > 5000 and mod else os.strerror(code)
        raise GdsIOError(f"{what} failed: {text} ({got})")
    raise GdsIOError(f"{what}: short transfer, {got} of {want} bytes")


class GdsFile:
    """A file pool's file opened for GDS, as a context manager: the driver opened, the
    file's O_DIRECT descriptor registered (cuFileHandleRegister with a CUfileDescr_t),
    the device ``buffers`` registered (cuFileBufRegister; where refused, cuFile uses its
    own bounce buffers, and ``notes`` says so); all released on every exit path.
    ``path`` / ``reason``: what gds_status says for it; Skip where it cannot run."""

    def __init__(self, f: FileBuffer, buffers: Sequence[Any] = (), pool: ThreadPoolExecutor | None = None):
        self.file, self.buffers, self.pool = f, list(buffers), pool
        self.notes: list[str] = []
        self.path, self.reason, self.backend = "none", "", ""
        self._mod = self._handle = self._driver = None
        self._registered: list[int] = []

    def __enter__(self) -> "GdsFile":
        if self.file.fd_direct is None:
            raise Skip(f"O_DIRECT unavailable: {self.file.tier.odirect_status()[1]}")
        try:
            self._mod = cufile_module()
        except ImportError as exc:
            return self._enter_kvikio(str(exc))
        self._driver = _Driver(self._mod).__enter__()
        try:
            ok, self.path, self.reason = self._driver.status
            if not ok:
                raise Skip(self.reason)
            self.backend = f"cuda.bindings.cufile (libcufile {self._driver.version})"
            self._register()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _register(self) -> None:
        mod = self._mod
        descr = mod.Descr()
        descr.type = mod.FileHandleType.OPAQUE_FD
        descr.handle.fd = self.file.fd_direct
        descr.fs_ops = 0
        self._descr = descr  # alive while the handle is
        try:
            self._handle = mod.handle_register(descr.ptr)
        except Exception as exc:  # noqa: BLE001 - cuFileError, or a ValueError for a code it lacks
            raise Skip(f"cuFileHandleRegister refused the O_DIRECT file in {self.file.tier.base_dir}: {exc}") from None
        for t in self.buffers:
            ptr, nbytes = t.data_ptr(), t.numel() * t.element_size()
            if ptr % 4096:
                self.notes.append(f"device buffer at {ptr:#x} is not 4 KiB aligned ({ptr % 4096} B off): "
                                  "cuFile may move its pages through bounce buffers")
            try:
                mod.buf_register(ptr, nbytes, 0)
                self._registered.append(ptr)
            except Exception as exc:  # noqa: BLE001 - cuFileError, or a ValueError for a code it lacks
                self.notes.append(f"cuFileBufRegister of {nbytes:,} B refused ({exc}): cuFile moved "
                                  "these pages through its own device bounce buffers")

    def _enter_kvikio(self, why: str) -> "GdsFile":
        got = _kvikio_status()
        if got is None:
            raise Skip(why)
        ok, self.path, self.reason = got
        if not ok:
            raise Skip(self.reason)
        import kvikio

        self._handle = kvikio.CuFile(str(self.file.path), "r+")
        self.backend = f"kvikio {getattr(kvikio, '__version__', '')}".strip()
        return self

    def __exit__(self, *exc: Any) -> None:
        """Every step runs, whatever an earlier one raised; the first failure is raised
        afterwards unless an exception is already on its way out."""
        mod, handle = self._mod, self._handle
        steps = [lambda p=p: mod.buf_deregister(p) for p in self._registered] if mod is not None else []
        if handle is not None:
            steps.append(lambda: mod.handle_deregister(handle) if mod is not None else handle.close())
        if self._driver is not None:
            steps.append(self._driver.__exit__)
        self._registered, self._handle, self._driver = [], None, None
        failed: list[BaseException] = []
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the rest must still be released
                failed.append(e)
        if failed and not (exc and exc[0] is not None):
            raise failed[0]

    def _op(self, write: bool, dev: Any) -> Callable[[int, int, int], Any]:
        """(size, file offset, offset in ``dev``) -> bytes moved, by this backend."""
        if self._mod is None:
            h = self._handle
            fn = h.raw_write if write else h.raw_read
            return lambda size, foff, doff: fn(dev, size, foff, doff)
        fn, handle, base = (self._mod.write if write else self._mod.read), self._handle, dev.data_ptr()
        return lambda size, foff, doff: fn(handle, base, size, foff, doff)

    def page_io(self, write: bool, dev: Any, rows: Sequence[int], page_ids: Sequence[int], nbytes: int,
                file_stride: int) -> Callable[[], None]:
        """A callable moving ``nbytes`` of each page between the file (page ``page_ids[i]``
        at byte ``page_ids[i] * file_stride``) and row ``rows[i]`` of ``dev`` (``[rows,
        stride]`` uint8 device memory): one cuFileRead / cuFileWrite per page, as many in
        flight as the pool has threads, then a device synchronize (compat mode copies on
        the library's own streams). A failed request raises GdsIOError. (cuFile takes
        host buffers too: a CPU ``dev`` needs no synchronize.)"""
        import torch

        op, mod = self._op(write, dev), self._mod
        reqs = [(pid * file_stride, row * dev.stride(0)) for row, pid in zip(rows, page_ids)]
        what = "cuFileWrite" if write else "cuFileRead"

        def do(r: int) -> None:
            foff, doff = reqs[r]
            try:
                got = op(nbytes, foff, doff)
            except Exception as exc:  # noqa: BLE001 - cuFileError, kvikio's RuntimeError: with the message
                raise GdsIOError(f"{what} of {nbytes:,} B at file offset {foff:,} raised "
                                 f"{type(exc).__name__}: {exc}") from exc
            _checked(mod, got, nbytes, f"{what} of {nbytes:,} B at file offset {foff:,}")

        def run() -> None:
            _parallel(do, len(reqs), self.pool)
            if dev.is_cuda:
                torch.cuda.synchronize()
        return run

    def observe(self, fn: Callable[[], None], write: bool) -> tuple[str, str]:
        """Run ``fn`` once with cuFile's per-GPU counters on: (the path its requests took,
        how that is known). Where cuFile cannot count (kvikio, a binding or library
        without the stats calls), the path gds_status predicted, said so."""
        mod = self._mod
        calls = ("set_stats_level", "get_stats_level", "stats_start", "stats_stop", "stats_reset",
                 "get_stats_l3", "StatsLevel3")
        if mod is None or not all(hasattr(mod, c) for c in calls):
            fn()
            return self._predicted("no cuFile request counts from this binding")
        problem = stats_layout_problem(mod)
        if problem:
            fn()
            return self._predicted(f"cuFile's counts not read: {problem}")
        old = None
        try:
            old = mod.get_stats_level()
            mod.set_stats_level(3)
            mod.stats_reset()
            mod.stats_start()
        except Exception as exc:  # noqa: BLE001 - libcufile < 1.15
            if old is not None:
                _quietly(lambda: mod.set_stats_level(old))
            fn()
            return self._predicted(f"cuFile stats unavailable: {exc}")
        kind = "writes" if write else "reads"
        try:
            fn()
            try:
                buf = ctypes.create_string_buffer(STATS_BUFFER_BYTES)
                mod.get_stats_l3(ctypes.addressof(buf))
                st = mod.StatsLevel3.from_ptr(ctypes.addressof(buf), owner=buf)
                gpus = [st.per_gpu_stats[i] for i in range(min(int(st.num_gpus), 16))]
                n = {k: sum(int(getattr(g, f"n_{k}_{kind}")) for g in gpus) for k in ("nvfs", "p2p", "posix")}
            except Exception as exc:  # noqa: BLE001 - the pass itself ran: only the counts are missing
                return self._predicted(f"cuFile's counts unreadable: {exc}")
        finally:
            for step in (mod.stats_stop, mod.stats_reset, lambda: mod.set_stats_level(old)):
                try:
                    step()
                except Exception:  # noqa: BLE001 - restoring the stats level is best effort
                    pass
        seen = observed_path(n["nvfs"], n["p2p"], n["posix"])
        counts = f"nvidia-fs {n['nvfs']}, P2PDMA {n['p2p']}, POSIX {n['posix']} {kind}"
        if seen is None:
            return self._predicted(f"cuFile counted no {kind} per GPU")
        if min(n.values()) < 0 or max(n.values()) > 10 ** 12:
            return self._predicted(f"cuFile's counts are implausible ({counts})")
        return seen, f"observed: cuFile's per-GPU counts in one verification pass: {counts}"

    def _predicted(self, why: str) -> tuple[str, str]:
        """What gds_status predicted, when the pass itself could not be observed; a
        predicted GDS is ``cufile-unverified`` (cuFile may still have fallen back to its
        compatibility mode for this file's filesystem)."""
        path = "cufile-unverified" if self.path == "cufile" else self.path
        return path, f"predicted ({self.reason}); {why}"
