"""The tier interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from kvbench.errors import TierUnavailable
from kvbench.units import fmt_bytes

#: What a tier's pages are, for code that must choose how to reach them (which copy
#: methods apply: kvbench.movers.COPY_METHODS): a CUDA device's memory, this host's
#: memory, or a file.
TIER_KINDS = ("device", "host", "file")


class TierBuffer(ABC):
    """nbytes of storage on a tier. Torch-backed tiers expose ``tensor`` (uint8, 1-D);
    the file tier exposes positional reads and writes instead."""

    tier: "Tier"
    nbytes: int

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "TierBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Tier(ABC):
    """Where pages live. A tier declares what it is in the class attributes below, and
    code that must treat tiers differently asks those, never the tier's name. Exactly
    one of ``device_memory``, ``host_memory`` and ``file_backed`` is true (checked by
    ``kvbench.tiers.register_tier``)."""

    #: the tier's key in kvbench.tiers.TIERS, in case names and in results
    name: ClassVar[str] = ""
    #: pages live in a CUDA device's memory (a cuda tensor; usable only with CUDA)
    device_memory: ClassVar[bool] = False
    #: pages live in host memory (a CPU tensor): this host's, or with ``remote`` a peer's
    host_memory: ClassVar[bool] = False
    #: pages live in files (positional reads and writes, no tensor view; rows padded to
    #: the O_DIRECT alignment)
    file_backed: ClassVar[bool] = False
    #: pages live in another process or host, reached with messages (the ``remote`` tier:
    #: no local tensor, like a file pool; its kind says what memory the peer holds them in)
    remote: ClassVar[bool] = False

    @classmethod
    def kind(cls) -> str:
        """'device', 'host' or 'file' (TIER_KINDS), from the declarations above."""
        kinds = [k for k, declared in zip(TIER_KINDS, (cls.device_memory, cls.host_memory,
                                                       cls.file_backed)) if declared]
        if len(kinds) != 1:
            raise TypeError(f"tier class {cls.__name__} must declare exactly one of device_memory, "
                            f"host_memory, file_backed (declares {kinds or 'none'})")
        return kinds[0]

    @classmethod
    def build(cls, nvme_dir: str | Path | None = None) -> "Tier":
        """The tier as a run asks for it: ``nvme_dir`` (``--nvme-dir``) is the folder a
        file-backed tier keeps its files in; other tiers ignore it."""
        return cls()

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, description) when usable here; (False, reason) when not."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Bytes this tier can still hand out (after a safety margin)."""

    @abstractmethod
    def _allocate(self, nbytes: int) -> TierBuffer: ...

    @property
    def label(self) -> str:
        """Name plus the qualifier a reader needs ('dram (pageable)')."""
        return self.name

    @property
    def device(self) -> str:
        """torch device of the buffers ('cuda', 'cpu'); 'cpu' for staged file reads."""
        return "cpu"

    def close(self) -> None:
        """Release what the tier holds beyond its buffers (a file tier's folder); a no-op
        for tiers that hold nothing."""

    def check(self) -> None:
        ok, reason = self.available()
        if not ok:
            raise TierUnavailable(f"tier {self.name} is unavailable: {reason}")

    def allocate(self, nbytes: int) -> TierBuffer:
        """Allocate nbytes, or raise TierUnavailable saying why not."""
        self.check()
        if nbytes <= 0:
            raise TierUnavailable(f"tier {self.name}: allocation size must be positive, got {nbytes}")
        free = self.free_bytes()
        if nbytes > free:
            raise TierUnavailable(
                f"tier {self.label} cannot hold {fmt_bytes(nbytes)} ({nbytes:,} B): "
                f"{fmt_bytes(free)} available"
            )
        return self._allocate(nbytes)

    def describe(self) -> dict[str, Any]:
        ok, reason = self.available()
        d: dict[str, Any] = {"tier": self.name, "label": self.label, "available": ok, "reason": reason}
        if ok:
            try:
                d["free_bytes"] = self.free_bytes()
            except Exception as exc:  # noqa: BLE001 - a report, not a decision
                d["free_bytes"] = None
                d["free_bytes_error"] = str(exc)
        return d
