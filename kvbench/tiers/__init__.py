"""Tiers: where KV bytes live.

``hbm``  CUDA device memory.
``dram`` host memory: pinned (page-locked: mmap + cudaHostRegister, reused through a
         small arena) when CUDA is present, else pageable, and labelled so.
``nvme`` a file in a chosen directory, read through mmap, buffered reads or O_DIRECT.

Every tier answers ``available() -> (ok, reason)`` before allocating anything, and
``allocate(nbytes)`` refuses a size it cannot hold with a one-line KvbenchError.
"""

from __future__ import annotations

from pathlib import Path

from kvbench.tiers.base import Tier, TierBuffer
from kvbench.tiers.dram import DramTier
from kvbench.tiers.hbm import HbmTier
from kvbench.tiers.nvme import NvmeTier

TIER_NAMES = ("hbm", "dram", "nvme")

__all__ = ["Tier", "TierBuffer", "HbmTier", "DramTier", "NvmeTier", "TIER_NAMES", "make_tier"]


def make_tier(name: str, nvme_dir: str | Path | None = None) -> Tier:
    """Build a tier by name (it may still be unavailable: ask ``available()``)."""
    from kvbench.errors import KvbenchError

    if name == "hbm":
        return HbmTier()
    if name == "dram":
        return DramTier()
    if name == "nvme":
        return NvmeTier(nvme_dir)
    raise KvbenchError(f"unknown tier {name!r}; known: {', '.join(TIER_NAMES)}")
