"""NVMe-backed files: a private 0700 folder of 0600 files, removed when done
(also on Ctrl-C and at interpreter exit). Each folder kvbench makes holds an owner
file (``.kvbench-owner``: pid, host, process start, boot, user), so the folder a
``kill -9`` left behind is removed by the next run (kvbench.owned_dirs.remove_stale_dirs).

Reads and writes go through one of three paths, each a measured variable:
``mmap`` (copy out of a shared mapping), ``buffered`` (pread/pwrite through the page
cache) and ``odirect`` (O_DIRECT: offsets, lengths and buffer addresses aligned to
``DIRECT_ALIGN``). Page-cache residency is checked with mincore(2), so a "cold" read
is only called cold when the file's pages were really evicted.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import mmap
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.owned_dirs import DIR_PREFIX, make_owned_dir
from kvbench.tiers.base import Tier, TierBuffer
from kvbench.units import GiB

#: O_DIRECT alignment for offsets, lengths and buffer addresses. 4 KiB is a multiple of
#: the logical block size of every NVMe and virtio disk kvbench expects (512 or 4096).
DIRECT_ALIGN = 4096
#: Disk space left free: 1 GiB or 5% of the filesystem, whichever is larger.
NVME_MARGIN_FRACTION = 0.05
NVME_MARGIN_MIN_BYTES = GiB

#: the smallest free space (beyond the margin) worth starting a run with, or choosing a
#: default directory for
MIN_NVME_FREE_BYTES = 64 << 20

READ_METHODS = ("mmap", "buffered", "odirect")
WRITE_METHODS = ("buffered", "odirect")

_live_dirs: "weakref.WeakSet[NvmeTier]" = weakref.WeakSet()

def _cleanup_all() -> None:
    for tier in list(_live_dirs):
        tier.close()


atexit.register(_cleanup_all)


def host_buffer(t: Any) -> Any:
    """A writable buffer-protocol object over a contiguous CPU uint8 tensor's memory
    (pinned or pageable), for os.preadv / os.pwritev without numpy."""
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("host_buffer needs a contiguous CPU tensor")
    buf = (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())
    buf._owner = t  # the memory lives as long as the buffer over it (no reads into freed memory)
    return buf


# ------------------------------------------------------------------ page-cache residency
_libc = None


def _get_libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc


def resident_fraction(fd: int, length: int) -> float:
    """Fraction of the first ``length`` bytes of the file that sit in the page cache,
    from mincore(2) over a fresh read-only shared mapping (maps no page in itself)."""
    if length <= 0:
        return 0.0
    libc = _get_libc()
    addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap for mincore failed: {os.strerror(err)}")
    try:
        pages = -(-length // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(addr, length, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore failed: {os.strerror(err)}")
        return sum(b & 1 for b in vec) / pages
    finally:
        libc.munmap(addr, length)


# ------------------------------------------------------------------ which directory
@dataclass(frozen=True)
class NvmeDirChoice:
    """A directory for NVMe files, what backs it ("disk", "ram", "overlay", "network",
    "unknown": kvbench.env.fs_backing) and why it was chosen (one line)."""

    path: Path
    backing: str
    reason: str


def nvme_dir_candidates(environ: Mapping[str, str] | None = None,
                        cwd: str | None = None) -> list[tuple[str, str | None]]:
    """(name, path or None when unset) in the order a default directory is looked for."""
    env = os.environ if environ is None else environ
    return [("$KVBENCH_NVME_DIR", env.get("KVBENCH_NVME_DIR") or None),
            ("$TMPDIR", env.get("TMPDIR") or None), ("/var/tmp", "/var/tmp"), ("/tmp", "/tmp"),
            ("the current directory", cwd if cwd is not None else os.getcwd())]


def dir_problem(path: str | Path, min_free: int = MIN_NVME_FREE_BYTES) -> str | None:
    """Why ``path`` cannot hold NVMe files (missing, not writable, read-only, fewer than
    ``min_free`` bytes beyond the tier's margin), or None when it can."""
    tier = NvmeTier(path)
    try:
        tier.validate_dir()
        free = tier.free_bytes()
    except (KvbenchError, OSError) as exc:
        return str(exc)
    if free < min_free:
        return f"{path} has {free:,} B free beyond the margin, under the {min_free:,} B needed"
    return None


def choose_nvme_dir(candidates: list[tuple[str, str | None]], rows: list[dict[str, str]],
                    min_free: int = MIN_NVME_FREE_BYTES) -> NvmeDirChoice:
    """The first usable candidate whose filesystem is on a disk (by the mount table
    ``rows``: kvbench.env.parse_mountinfo), else the first usable one, labelled; a
    one-line KvbenchError when none is usable. Pure but for the usability checks."""
    from kvbench.mounts import dir_backing

    notes: list[str] = []
    fallback: tuple[str, str, dict[str, Any]] | None = None
    seen: set[str] = set()
    for name, path in candidates:
        if not path:
            notes.append(f"{name} unset")
            continue
        label = name if name == path else f"{name}={path}"
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        problem = dir_problem(path, min_free)
        if problem is not None:
            notes.append(f"{label}: {problem}")
            continue
        b = dir_backing(real, rows)
        if b["backing"] == "disk":
            why = f"first disk-backed candidate: {label}, {b['why']}"
            if notes:
                why += f" (passed over: {'; '.join(notes)})"
            return NvmeDirChoice(Path(path), "disk", why)
        notes.append(f"{label} is {b['why']}")
        fallback = fallback or (label, path, b)
    if fallback is None:
        raise KvbenchError(f"no usable directory for NVMe files ({'; '.join(notes)}); pass --nvme-dir")
    label, path, b = fallback
    return NvmeDirChoice(Path(path), b["backing"],
                         f"no disk-backed candidate ({'; '.join(notes)}): using {label}, "
                         f"{b['why']}, so NVMe figures do not measure a disk")


def default_nvme_dir() -> NvmeDirChoice:
    """``choose_nvme_dir`` over this process's environment, directory and mounts."""
    from kvbench.mounts import read_mount_table

    return choose_nvme_dir(nvme_dir_candidates(), read_mount_table())


_chosen: dict[str, str] = {}


def record_choice(path: str | Path, reason: str) -> None:
    """Remember why ``path`` holds the NVMe files, for the environment block."""
    _chosen[os.path.realpath(path)] = reason


def chosen_because(path: str | Path) -> str | None:
    """What ``record_choice`` said about ``path``, or None."""
    return _chosen.get(os.path.realpath(path))


# ------------------------------------------------------------------ the tier
class NvmeTier(Tier):
    """Files in a private folder under ``base_dir`` (default: ``default_nvme_dir()``,
    a disk-backed one where there is one)."""

    name = "nvme"
    file_backed = True

    @classmethod
    def build(cls, nvme_dir: str | Path | None = None) -> "NvmeTier":
        return cls(nvme_dir)

    def __init__(self, base_dir: str | Path | None = None) -> None:
        if base_dir is None:
            try:
                base_dir = default_nvme_dir().path
            except KvbenchError:  # nothing usable: validate_dir says why, on use
                base_dir = tempfile.gettempdir()
        self.base_dir = Path(base_dir)
        self._private: Path | None = None
        self._buffers: "weakref.WeakSet[FileBuffer]" = weakref.WeakSet()
        self._odirect: tuple[bool, str] | None = None
        self._backing: dict[str, Any] | None = None

    def backing(self) -> dict[str, Any]:
        """What backs base_dir (kvbench.env.dir_backing: backing, why, fs_type, ...),
        read from the mount table once."""
        if self._backing is None:
            from kvbench.mounts import dir_backing, read_mount_table

            rows = read_mount_table()
            self._backing = dir_backing(self.base_dir, rows) if rows else {"backing": None}
        return self._backing

    @property
    def label(self) -> str:
        """'nvme', or what the directory really is when that is not a disk:
        'nvme (RAM-backed tmpfs: not a disk)'."""
        b = self.backing()
        fs = b.get("fs_type") or "unknown filesystem"
        return {
            "ram": f"nvme (RAM-backed {fs}: not a disk)",
            "overlay": f"nvme ({fs}: may not be a disk)",
            "network": f"nvme ({fs}: a network filesystem, not a local disk)",
            "unknown": f"nvme ({fs}: backing unknown)",
        }.get(b["backing"], "nvme")

    # -- checks
    def validate_dir(self) -> None:
        """Raise a one-line KvbenchError when base_dir cannot hold kvbench's files."""
        d = self.base_dir
        if not d.exists():
            raise KvbenchError(f"nvme directory {d} does not exist")
        if not d.is_dir():
            raise KvbenchError(f"nvme directory {d} is not a directory")
        if not os.access(d, os.W_OK | os.X_OK):
            raise KvbenchError(f"nvme directory {d} is not writable")
        try:
            st = os.statvfs(d)
        except OSError as exc:
            raise KvbenchError(f"nvme directory {d}: {exc.strerror}") from None
        if st.f_flag & os.ST_RDONLY:
            raise KvbenchError(f"nvme directory {d} is on a read-only filesystem")

    def available(self) -> tuple[bool, str]:
        try:
            self.validate_dir()
        except KvbenchError as exc:
            return False, str(exc)
        return True, f"files in {self.base_dir}"

    def odirect_status(self) -> tuple[bool, str]:
        """Whether O_DIRECT works in this folder (tmpfs and some overlays refuse it)."""
        if self._odirect is None:
            self._odirect = self._probe_odirect()
        return self._odirect

    def _probe_odirect(self) -> tuple[bool, str]:
        if not hasattr(os, "O_DIRECT"):
            return False, "O_DIRECT is not offered by this OS"
        from kvbench.tiers.dram import aligned_host_empty

        path = self.private_dir() / "odirect-probe"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        except OSError as exc:
            return False, f"open(O_DIRECT) failed: {exc.strerror}"
        try:
            buf = aligned_host_empty(DIRECT_ALIGN, pin=False)
            buf.fill_(7)
            os.pwritev(fd, [host_buffer(buf)], 0)
            os.preadv(fd, [host_buffer(buf)], 0)
            return True, f"O_DIRECT with {DIRECT_ALIGN} B alignment"
        except OSError as exc:
            return False, f"O_DIRECT I/O failed: {exc.strerror}"
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """Tier.describe, plus whether O_DIRECT works here ((ok, why) as ``odirect``)."""
        d = super().describe()
        if d["available"]:
            d["odirect"] = self.odirect_status()
        return d

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.base_dir)
        margin = max(NVME_MARGIN_MIN_BYTES, int(usage.total * NVME_MARGIN_FRACTION))
        return max(0, usage.free - margin)

    # -- lifecycle
    def private_dir(self) -> Path:
        if self._private is None:
            self.validate_dir()
            self._private = make_owned_dir(DIR_PREFIX, self.base_dir)
            _live_dirs.add(self)
        return self._private

    def close(self) -> None:
        for buf in list(self._buffers):
            buf.close()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
        _live_dirs.discard(self)

    def __enter__(self) -> "NvmeTier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _allocate(self, nbytes: int) -> "FileBuffer":
        buf = FileBuffer(self, nbytes)
        self._buffers.add(buf)
        return buf


class FileBuffer(TierBuffer):
    """nbytes of file space, fully allocated on disk (posix_fallocate)."""

    def __init__(self, tier: NvmeTier, nbytes: int) -> None:
        self.tier = tier
        self.nbytes = nbytes
        fd, name = tempfile.mkstemp(prefix="kv-", suffix=".pages", dir=tier.private_dir())
        self.path = Path(name)  # mkstemp creates it 0600
        self.fd = fd
        self.fd_direct: int | None = None
        self._mmap: mmap.mmap | None = None
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            self.close()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TierUnavailable(
                    f"nvme directory {tier.base_dir}: no space for {nbytes:,} B"
                ) from None
            raise TierUnavailable(f"nvme file allocation failed: {exc.strerror}") from None
        ok, _why = tier.odirect_status()
        if ok:
            self.fd_direct = os.open(self.path, os.O_RDWR | os.O_DIRECT)

    # -- I/O
    def _fd_for(self, method: str) -> int:
        if method == "odirect":
            if self.fd_direct is None:
                raise TierUnavailable(f"O_DIRECT unavailable: {self.tier.odirect_status()[1]}")
            return self.fd_direct
        return self.fd

    def read_into(self, offset: int, dst: Any, method: str = "buffered") -> None:
        """Read dst.numel() bytes at offset into a contiguous CPU uint8 tensor."""
        n = dst.numel()
        if method == "mmap":
            view = self.mmap_tensor()
            dst.copy_(view[offset: offset + n])
            return
        got = os.preadv(self._fd_for(method), [host_buffer(dst)], offset)
        if got != n:
            raise OSError(errno.EIO, f"short read: {got} of {n} bytes at {offset}")

    def write_from(self, offset: int, src: Any, method: str = "buffered") -> None:
        """Write a contiguous CPU uint8 tensor at offset."""
        n = src.numel()
        got = os.pwritev(self._fd_for(method), [host_buffer(src)], offset)
        if got != n:
            raise OSError(errno.EIO, f"short write: {got} of {n} bytes at {offset}")

    def mmap_tensor(self) -> Any:
        """The whole file as a uint8 tensor over a shared mapping (zero copy)."""
        import torch

        if self._mmap is None:
            self._mmap = mmap.mmap(self.fd, self.nbytes, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        import warnings

        with warnings.catch_warnings():  # frombuffer warns that mmap memory is writable
            warnings.simplefilter("ignore")
            return torch.frombuffer(self._mmap, dtype=torch.uint8)

    def sync(self) -> None:
        """Flush written data to the device (fdatasync)."""
        if self._mmap is not None:
            self._mmap.flush()
        os.fdatasync(self.fd)

    def drop_cache(self) -> float:
        """fdatasync, then POSIX_FADV_DONTNEED; return the fraction still resident."""
        self.sync()
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return self.resident_fraction()

    def resident_fraction(self) -> float:
        return resident_fraction(self.fd, self.nbytes)

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a tensor still views it; the mapping goes with that tensor
            self._mmap = None
        for attr in ("fd_direct", "fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
        path = getattr(self, "path", None)
        if path is not None:
            path.unlink(missing_ok=True)
