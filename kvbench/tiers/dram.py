"""Host memory: pinned when CUDA is present (what a serving engine uses for offload),
pageable otherwise, and always labelled which.

Pinned memory is an anonymous mmap of exactly the page-rounded size, page-locked with
cudaHostRegister and handed out as a uint8 torch tensor. torch's own pinned allocator
(``torch.empty(..., pin_memory=True)``) rounds every block up to a power of two (an
8.6 GB pool pins 16 GiB) and the runner empties its cache between cases, so each case
would pin its pools again (seconds per GB). Registered blocks live instead in a small
arena (``PinnedArena``): a block whose tensors are all gone is handed out again to the
next request it fits, and ``release_pinned()`` unregisters and unmaps the free ones
(the runner calls it between benchmarks).
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import resource
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers.base import Tier, TierBuffer
from kvbench.tiers.hbm import TensorBuffer, cuda_status
from kvbench.units import fmt_bytes

#: Left for the OS and the rest of the process; pinned memory cannot be swapped.
DRAM_MARGIN_FRACTION = 0.10
DRAM_MARGIN_MIN_BYTES = 1 << 30

#: Host buffers are aligned to this so O_DIRECT can read into them (4 KiB covers the
#: logical block size of NVMe and virtio disks).
HOST_ALIGN = 4096

#: cudaHostRegisterPortable | cudaHostRegisterMapped (CUDA runtime API, cudaHostRegister):
#: pinned for every context and mapped into the device's address space, so a kernel can
#: read it through its host address (cudaHostRegisterDefault means the same on systems
#: with unified addressing, i.e. every 64-bit Linux one).
HOST_REGISTER_FLAGS = 0x01 | 0x02

#: A free block is handed out again only to a request of at least half its size, so a
#: small buffer never ties up a large pinned pool.
REUSE_MAX_WASTE = 2

#: Linux capability number of CAP_IPC_LOCK (include/uapi/linux/capability.h).
CAP_IPC_LOCK = 14


# ------------------------------------------------------------------ pure arithmetic
def pinned_bytes(nbytes: int, align: int = HOST_ALIGN, page_size: int = mmap.PAGESIZE) -> int:
    """Bytes really page-locked for a request of ``nbytes``: whole pages, at least one,
    plus ``align - page_size`` slack when the alignment asked for exceeds a page."""
    if nbytes < 0:
        raise KvbenchError(f"host buffer size must be >= 0, got {nbytes}")
    slack = max(0, align - page_size)
    pages = max(1, -(-(nbytes + slack) // page_size))
    return pages * page_size


def host_margin(total: int) -> int:
    """Bytes of host memory kvbench leaves free: 10% of ``total``, at least 1 GiB."""
    return max(DRAM_MARGIN_MIN_BYTES, int(total * DRAM_MARGIN_FRACTION))


def pin_refusal(need: int, *, available: int, total: int, memlock: int | None = None,
                locked: int = 0) -> str | None:
    """Why pinning ``need`` more bytes must be refused, or None when it may go ahead:
    pinned memory cannot be swapped, so it must fit in what is free beside the margin.

    available / total: host memory in bytes (psutil). memlock / locked are accepted for
    ``memlock_note`` and not enforced here: see ``memlock_limit`` for why."""
    margin = host_margin(total)
    if need > available - margin:
        return (f"pinning {need:,} B ({fmt_bytes(need)}) would leave less than the "
                f"{fmt_bytes(margin)} margin: {available:,} B ({fmt_bytes(available)}) available")
    return None


def memlock_note(need: int, *, memlock: int | None, locked: int, **_: Any) -> str:
    """The RLIMIT_MEMLOCK figures, said beside a failed registration when the request
    went past the limit (the likely cause then); empty otherwise."""
    if memlock is None or locked + need <= memlock:
        return ""
    return (f"; {need:,} B on top of {locked:,} B already pinned exceeds RLIMIT_MEMLOCK of "
            f"{memlock:,} B ({fmt_bytes(memlock)}): raise it (ulimit -l) or run with CAP_IPC_LOCK")


def has_cap_ipc_lock(status_text: str | None) -> bool:
    """Whether CAP_IPC_LOCK is in the effective set of a /proc/<pid>/status text."""
    for line in (status_text or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    return False


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes that applies to this process, None when none does.

    Assumed: the kernel's rule for mlock(2): the limit binds unless it is infinite or the
    process holds CAP_IPC_LOCK (root outside a container does; root in a container often
    does not, so the capability is checked, not the uid). Whether the NVIDIA driver
    charges cudaHostRegister to that limit is the driver's choice (the open kernel
    modules' os_lock_user_pages pins with pin_user_pages and, as far as we read, does not
    charge it), so kvbench does not refuse a pin for the limit (that would refuse, on a
    machine with the default 8 MiB limit, what the driver pins fine): it records the
    limit in the environment block and names it when a registration fails past it."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return None
    status = _proc_status_text()
    # no procfs: fall back to the uid
    privileged = has_cap_ipc_lock(status) if status is not None else os.geteuid() == 0
    return None if privileged else int(soft)


def _proc_status_text() -> str | None:
    try:
        with open("/proc/self/status") as f:
            return f.read()
    except OSError:
        return None


def host_pin_budget() -> dict[str, Any]:
    """This machine's figures for ``pin_refusal``: available, total, memlock (bytes)."""
    import psutil

    vm = psutil.virtual_memory()
    return {"available": int(vm.available), "total": int(vm.total), "memlock": memlock_limit()}


# ------------------------------------------------------------------ CUDA registration
def _cuda_error_text(rt: Any, err: int) -> str:
    try:
        return f"{rt.cudaGetErrorString(rt.cudaError(err))} (cudaError {err})"
    except Exception:  # noqa: BLE001 - the code alone still says what happened
        return f"cudaError {err}"


def _clear_last_cuda_error(rt: Any) -> None:
    """Reset the CUDA runtime's sticky last error after a refused registration: torch
    checks cudaGetLastError after its next kernel launch and would blame that launch
    (an unrelated case) for it. torch's cudart binding, else libcudart as loaded."""
    fn = getattr(rt, "cudaGetLastError", None)
    if fn is not None:
        fn()
        return
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libcudart.so" in line}
        for path in libs:
            ctypes.CDLL(path).cudaGetLastError()
            return
    except OSError:
        pass  # nothing more to do: the refusal itself is still reported


def cuda_host_register(addr: int, nbytes: int) -> None:
    """Page-lock [addr, addr + nbytes) for CUDA (cudaHostRegister, through torch's
    cudart bindings); TierUnavailable with CUDA's message when refused."""
    import torch

    try:
        rt = torch.cuda.cudart()
    except (AssertionError, RuntimeError) as exc:  # CPU-only torch, no device, bad driver
        raise TierUnavailable(f"cannot pin host memory: {str(exc).splitlines()[0]}") from None
    err = int(rt.cudaHostRegister(addr, nbytes, HOST_REGISTER_FLAGS))
    if err != 0:
        text = _cuda_error_text(rt, err)
        _clear_last_cuda_error(rt)
        raise TierUnavailable(f"cudaHostRegister of {nbytes:,} B failed: {text}")


def cuda_host_unregister(addr: int) -> None:
    """Undo ``cuda_host_register`` (cudaHostUnregister); RuntimeError when CUDA refuses."""
    import torch

    rt = torch.cuda.cudart()
    err = int(rt.cudaHostUnregister(addr))
    if err != 0:
        raise RuntimeError(f"cudaHostUnregister failed: {_cuda_error_text(rt, err)}")


def _device_sync() -> None:
    """Wait for queued copies before pinned memory is reused or unregistered (an async
    copy may still read or write it); nothing to wait for if CUDA never started."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ------------------------------------------------------------------ the arena
@dataclass(eq=False)
class _Block:
    """One registered mapping of ``nbytes`` (whole pages) at ``addr``."""

    mm: mmap.mmap
    addr: int
    nbytes: int
    #: set while a tensor or storage over the block exists; cleared by the weakref
    #: callback on the memoryview torch's storage holds (it dies with the last of them)
    busy: bool = False
    lease: Any = None

    def mark_free(self, _ref: Any) -> None:
        # runs wherever the last view dies (any thread, inside torch's deleter): a flag
        # store only, no lock and no CUDA call
        self.busy = False


class PinnedArena:
    """Registered host blocks, reused across the cases of one benchmark.

    ``take(nbytes)`` hands out a free block of sufficient size (at most
    ``REUSE_MAX_WASTE`` times the pages asked for, smallest first) or pins a new one of
    exactly ``pinned_bytes(nbytes)``. A block is free again once every tensor and
    storage over it is gone: torch's storage holds the memoryview it was made from, and
    a weakref on that memoryview fires only when the storage dies (a weakref on the base
    tensor would miss a storage kept without a tensor). ``release()`` unregisters and
    unmaps the free blocks; a new pin that would not fit beside them releases them first.

    register(addr, nbytes) / unregister(addr): the CUDA calls, injectable for tests;
    budget(): the figures ``pin_refusal`` needs; sync(): wait for queued copies. Each
    defaults to this module's function, looked up at call time.
    """

    def __init__(self, register: Callable[[int, int], None] | None = None,
                 unregister: Callable[[int], None] | None = None,
                 budget: Callable[[], dict[str, Any]] | None = None,
                 sync: Callable[[], None] | None = None) -> None:
        self._hooks = {"cuda_host_register": register, "cuda_host_unregister": unregister,
                       "host_pin_budget": budget, "_device_sync": sync}
        self._blocks: list[_Block] = []
        # re-entrant: gc.collect() in _pin may run finalizers that allocate
        self._lock = threading.RLock()

    def _hook(self, name: str) -> Callable[..., Any]:
        return self._hooks[name] or globals()[name]

    @property
    def held_bytes(self) -> int:
        """Bytes registered now, in use or free."""
        return sum(b.nbytes for b in self._blocks)

    @property
    def free_bytes(self) -> int:
        """Bytes registered in blocks no tensor uses (reusable, or released on demand)."""
        return sum(b.nbytes for b in self._blocks if not b.busy)

    def blocks(self) -> list[tuple[int, bool]]:
        """(nbytes, busy) per block, for tests and reports."""
        return [(b.nbytes, b.busy) for b in self._blocks]

    def take(self, nbytes: int, align: int = HOST_ALIGN) -> Any:
        """A uint8 CPU tensor of ``nbytes`` over pinned memory, data pointer a multiple
        of ``align``; TierUnavailable (one line, with the numbers) when refused."""
        import torch

        need = pinned_bytes(nbytes, align)
        with self._lock:
            fits = [b for b in self._blocks
                    if not b.busy and need <= b.nbytes <= REUSE_MAX_WASTE * need]
            block = min(fits, key=lambda b: b.nbytes, default=None)
            if block is None:
                block = self._pin(need)
            else:
                self._hook("_device_sync")()  # its last user's async copies may still run
            mv = memoryview(block.mm)
            block.busy = True
            block.lease = weakref.ref(mv, block.mark_free)
            base = torch.frombuffer(mv, dtype=torch.uint8)
            del mv  # the storage now holds the only reference
        offset = (-block.addr) % align
        return base[offset: offset + nbytes]

    def _refusal(self, need: int) -> str | None:
        return pin_refusal(need, locked=self.held_bytes, **self._hook("host_pin_budget")())

    def _pin(self, need: int) -> _Block:
        why = self._refusal(need)
        if why is not None and self._blocks:
            gc.collect()  # tensors caught in reference cycles free their blocks only here
            self._release_free()
            why = self._refusal(need)
        if why is not None:
            raise TierUnavailable(f"cannot pin host memory: {why}")
        mm = mmap.mmap(-1, need, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_DONTFORK"):
            # a forked child (subprocess) must not share pinned pages: a copy-on-write
            # in the parent would leave the device's DMA on the old page
            mm.madvise(mmap.MADV_DONTFORK)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))  # the temporary export ends here
        try:
            self._hook("cuda_host_register")(addr, need)
        except TierUnavailable as exc:
            mm.close()
            budget = self._hook("host_pin_budget")()
            raise TierUnavailable(f"{exc}{memlock_note(need, locked=self.held_bytes, **budget)}") from None
        except BaseException:
            mm.close()
            raise
        block = _Block(mm, addr, need)
        self._blocks.append(block)
        return block

    def release(self) -> int:
        """Unregister and unmap every free block; return the bytes released."""
        with self._lock:
            return self._release_free()

    def _release_free(self) -> int:
        free = [b for b in self._blocks if not b.busy]
        if not free:
            return 0
        self._hook("_device_sync")()  # never unpin memory a queued copy still uses
        for b in free:
            self._blocks.remove(b)
            try:
                self._hook("cuda_host_unregister")(b.addr)
            except Exception as exc:  # noqa: BLE001 - e.g. a CUDA context lost earlier
                warnings.warn(f"kvbench: {exc}; unmapping the block anyway", RuntimeWarning,
                              stacklevel=2)
            try:
                b.mm.close()
            except BufferError:
                pass  # still exported after all: the mapping goes with its last view
        return sum(b.nbytes for b in free)

    def make_room(self, nbytes: int) -> None:
        """Release the free blocks if a pageable allocation of ``nbytes`` would not fit
        in host memory beside them (no-op, and no psutil call, when none is free)."""
        if not self.free_bytes:
            return
        with self._lock:
            b = self._hook("host_pin_budget")()
            if nbytes > b["available"] - host_margin(b["total"]):
                self._release_free()


_ARENA = PinnedArena()


def release_pinned() -> int:
    """Unregister and unmap the pinned blocks no tensor uses; return the bytes released.
    The runner calls it between benchmarks (blocks are reused only within one)."""
    return _ARENA.release()


def aligned_host_empty(nbytes: int, *, pin: bool, align: int = HOST_ALIGN):
    """A uint8 CPU tensor of nbytes whose data pointer is a multiple of ``align``.

    Pinned (page-locked, from the arena: ``pinned_bytes(nbytes)`` really pinned) when
    ``pin``, TierUnavailable when that is refused; pageable otherwise."""
    if pin:
        return _ARENA.take(nbytes, align)
    import torch

    _ARENA.make_room(nbytes)
    raw = torch.empty(nbytes + align, dtype=torch.uint8)
    offset = (-raw.data_ptr()) % align
    return raw[offset: offset + nbytes]


class DramTier(Tier):
    name = "dram"
    host_memory = True

    def __init__(self, pinned: bool | None = None) -> None:
        if pinned is None:
            pinned = cuda_status()[0]
        self.pinned = pinned

    @property
    def label(self) -> str:
        return "dram (pinned)" if self.pinned else "dram (pageable)"

    def available(self) -> tuple[bool, str]:
        if self.pinned:
            return True, "pinned host memory (mmap + cudaHostRegister)"
        ok, why = cuda_status()
        return True, f"pageable host memory: pinning needs CUDA ({why})"

    def free_bytes(self) -> int:
        """Host bytes this tier can still hand out: available minus the margin, plus the
        arena's free blocks (released on demand). RLIMIT_MEMLOCK is not applied (see
        ``memlock_limit``)."""
        b = host_pin_budget()
        return max(0, b["available"] - host_margin(b["total"])) + _ARENA.free_bytes

    def _allocate(self, nbytes: int) -> TierBuffer:
        try:
            return TensorBuffer(self, aligned_host_empty(nbytes, pin=self.pinned))
        except TierUnavailable as exc:  # pinning refused: limits, memory or CUDA
            raise TierUnavailable(f"tier {self.label}: {exc}") from None
        except RuntimeError as exc:  # no memory for a pageable buffer
            raise TierUnavailable(
                f"tier {self.label} could not allocate {nbytes:,} B: {str(exc).splitlines()[0]}"
            ) from None
