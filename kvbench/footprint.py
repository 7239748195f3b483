"""What a case holds at once, per kind of memory, checked against what is free before
anything is allocated.

A footprint is a dict of bytes a case will hold at the same time, by kind:

  ``device``    CUDA device memory (the device_memory tier: hbm)
  ``pinned``    page-locked host memory  } both drawn from the host_memory tier (dram):
  ``pageable``  ordinary host memory     } checked together against its free bytes
  ``file``      bytes in files on the file_backed tier (nvme), under --nvme-dir
  ``peer``      host memory of the peer rank that serves the remote tier (asked over the
                group; unavailable without one, and the case then skips on its own)

Free bytes are the tiers' own ``free_bytes()``, which already keep a safety margin
(kvbench.tiers.dram.host_margin: 10% of host memory, at least 1 GiB;
kvbench.tiers.nvme: 5% of the disk, at least 1 GiB; kvbench.tiers.hbm.HBM_MARGIN_BYTES).
A footprint that does not fit is refused with ``DoesNotFit`` (a ``Skip``) carrying the
numbers. Pure arithmetic plus the tiers' free-space queries: no torch import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kvbench.errors import Skip
from kvbench.units import GB

#: the kinds a footprint may name, in the order they are checked
FOOTPRINT_KINDS = ("device", "pinned", "pageable", "file", "peer")
#: footprint kind -> the tier kind (kvbench.tiers.base.TIER_KINDS) it is drawn from;
#: ``peer``: the remote tier (``Tier.remote``), whatever memory the peer keeps it in
TIER_KIND = {"device": "device", "pinned": "host", "pageable": "host", "file": "file", "peer": "peer"}
#: how a refusal names a tier kind
WHAT = {"device": "device memory", "host": "host memory", "file": "disk space",
        "peer": "the peer rank's host memory"}


class DoesNotFit(Skip):
    """A case's footprint exceeds what a tier has free after its margin: a skip, with
    the figures (bytes) as attributes: ``kind`` (tier kind), ``need``, ``free``."""

    def __init__(self, message: str, kind: str, need: int, free: int) -> None:
        super().__init__(message)
        self.kind, self.need, self.free = kind, need, free


def _gb(n: int) -> str:
    return f"{n / GB:,.1f} GB"


def by_tier_kind(footprint: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{tier kind: {footprint kind: bytes}} for the positive entries; ValueError for a
    kind not in FOOTPRINT_KINDS (a typo would otherwise never be checked)."""
    out: dict[str, dict[str, int]] = {}
    for kind, n in footprint.items():
        if kind not in TIER_KIND:
            raise ValueError(f"footprint kind {kind!r} unknown; known: {', '.join(FOOTPRINT_KINDS)}")
        if n > 0:
            out.setdefault(TIER_KIND[kind], {})[kind] = int(n)
    return out


def tier_free(tier_kind: str, nvme_dir: str | Path | None) -> int | None:
    """Free bytes after the margin of the registered tier of ``tier_kind``, or None when
    that tier is unavailable here (the case then skips on its own, saying why)."""
    from kvbench.tiers import TIERS

    for cls in TIERS.values():
        if (tier_kind == "peer") != bool(cls.remote) or (tier_kind != "peer" and cls.kind() != tier_kind):
            continue
        if cls.device_memory:
            from kvbench.tiers.hbm import cuda_status

            if not cuda_status()[0]:
                return None
        tier = cls.build(nvme_dir)
        try:
            if not tier.available()[0]:
                return None
            return tier.free_bytes()
        finally:
            tier.close()
    return None


def refusal(footprint: Mapping[str, int], free: Mapping[str, int | None]) -> DoesNotFit | None:
    """The first tier kind whose share of ``footprint`` exceeds ``free[tier kind]``
    (bytes after the margin), as a DoesNotFit; None when all fit, or when a tier it
    names is unavailable here (None in ``free``: the case skips on its own, saying why).

    >>> str(refusal({"pageable": 24_100_000_000}, {"host": 22_600_000_000}))
    'needs 24.1 GB of host memory at once (pageable), 22.6 GB free after the margin'
    """
    kinds = by_tier_kind(footprint)
    if any(free.get(k) is None for k in kinds):
        return None
    for tier_kind, parts in kinds.items():
        have, need = free[tier_kind], sum(parts.values())
        if need <= have:
            continue
        how = " + ".join(f"{_gb(n)} {k}" for k, n in parts.items()) if len(parts) > 1 else next(iter(parts))
        return DoesNotFit(f"needs {_gb(need)} of {WHAT[tier_kind]} at once ({how}), "
                          f"{_gb(have)} free after the margin", tier_kind, need, have)
    return None


def check_footprint(footprint: Mapping[str, int], nvme_dir: str | Path | None) -> None:
    """Raise DoesNotFit when ``footprint`` does not fit in what the tiers have free now."""
    kinds = by_tier_kind(footprint)
    err = refusal(footprint, {k: tier_free(k, nvme_dir) for k in kinds})
    if err is not None:
        raise err


def describe(footprint: Mapping[str, Any]) -> dict[str, int]:
    """The footprint as recorded in a result (positive entries only, bytes)."""
    return {k: int(v) for k, v in footprint.items() if v and v > 0}


def on_tier(tier_name: str, nbytes: int, cuda: bool) -> dict[str, int]:
    """``nbytes`` held on tier ``tier_name`` as a footprint: the dram tier is pinned
    with CUDA, pageable without (kvbench.tiers.dram.DramTier); a remote tier's bytes are
    held by its peer rank (``peer``), not here."""
    from kvbench.tiers import tier_class

    if tier_class(tier_name).remote:
        return {"peer": int(nbytes)}
    kind = tier_class(tier_name).kind()
    key = {"device": "device", "file": "file"}.get(kind) or ("pinned" if cuda else "pageable")
    return {key: int(nbytes)}


def total(*parts: Mapping[str, int]) -> dict[str, int]:
    """The sum of footprints, kind by kind."""
    out: dict[str, int] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0) + int(v)
    return out
