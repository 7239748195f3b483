"""Tiers: where KV bytes live, one module per tier and one registry of them.

``hbm``  CUDA device memory.
``dram`` host memory: pinned (page-locked: mmap + cudaHostRegister, reused through a
         small arena) when CUDA is present, else pageable, and labelled so.
``nvme`` a file in a chosen directory, read through mmap, buffered reads or O_DIRECT.
``remote`` host memory of a peer rank of a torch.distributed group, reached with
         point-to-point messages over gloo (usable in a launched run only).

Every tier answers ``available() -> (ok, reason)`` before allocating anything, and
``allocate(nbytes)`` refuses a size it cannot hold with a one-line KvbenchError. Each
tier class declares what it is (``device_memory``, ``host_memory``, ``file_backed``,
``remote``: kvbench.tiers.base.Tier); code that treats tiers differently asks those.

Adding a tier: a module here with its ``Tier`` subclass, and one ``register_tier`` line
below.
"""

from __future__ import annotations

from pathlib import Path

from kvbench.tiers.base import TIER_KINDS, Tier, TierBuffer
from kvbench.tiers.dram import DramTier
from kvbench.tiers.hbm import HbmTier
from kvbench.tiers.nvme import NvmeTier
from kvbench.tiers.remote import RemoteTier

#: name -> tier class, in the order tiers are listed (fastest first)
TIERS: dict[str, type[Tier]] = {}
#: the registered tier names, in order: a live view of TIERS (a tier registered later
#: is in it too)
TIER_NAMES = TIERS.keys()

__all__ = ["Tier", "TierBuffer", "HbmTier", "DramTier", "NvmeTier", "RemoteTier", "TIERS", "TIER_NAMES",
           "TIER_KINDS", "make_tier", "register_tier", "tier_class"]


def register_tier(cls: type[Tier]) -> type[Tier]:
    """Add a tier class to TIERS under its ``name``, after checking its declarations."""
    if not (isinstance(cls, type) and issubclass(cls, Tier)):
        raise TypeError(f"register_tier needs a Tier subclass, got {cls!r}")
    if not cls.name or cls.name in TIERS:
        raise ValueError(f"tier class {cls.__name__}: name {cls.name!r} is empty or already registered")
    cls.kind()  # exactly one of device_memory, host_memory, file_backed
    TIERS[cls.name] = cls
    return cls


register_tier(HbmTier)
register_tier(DramTier)
register_tier(NvmeTier)
register_tier(RemoteTier)


def tier_class(name: str) -> type[Tier]:
    """The registered class of tier ``name`` (its declarations, without building it), or a
    one-line KvbenchError naming the known tiers."""
    from kvbench.errors import KvbenchError

    try:
        return TIERS[name]
    except KeyError:
        raise KvbenchError(f"unknown tier {name!r}; known: {', '.join(TIER_NAMES)}") from None


def make_tier(name: str, nvme_dir: str | Path | None = None) -> Tier:
    """Build a tier by name (it may still be unavailable: ask ``available()``).
    ``nvme_dir`` is the folder a file-backed tier keeps its files in."""
    return tier_class(name).build(nvme_dir)
