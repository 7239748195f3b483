"""Scenario fields: one mapping of a scenario file read with field-naming error messages.

Sizes carry their unit in the key's suffix (``SIZE_UNITS``); numbers may be written as
strings (YAML 1.1 reads ``58.3e12`` as one); a key under an old sizing tier name
(``RENAMED_TIERS``) is refused with one line naming its new key. Used by
kvbench.sizing.scenario.
"""

from __future__ import annotations

import math
from typing import Any

from kvbench.errors import KvbenchError

#: Unit suffixes accepted on size fields, in bytes. GB = 1e9, GiB = 2**30 (kvbench.units).
SIZE_UNITS: dict[str, int] = {
    "bytes": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15, "eb": 10**18,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
}
#: Old sizing tier names -> kvbench's: a scenario key under an old name is refused with
#: the new one.
RENAMED_TIERS = {"ssd": "nvme", "datalake": "remote"}


class Section:
    """One mapping of the scenario with field-naming error messages."""

    def __init__(self, scn: str, prefix: str, data: Any):
        self.scn = scn
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("", "must be a mapping")
        self.data = dict(data)
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, msg: str) -> KvbenchError:
        name = self.where(key) if key else self.prefix
        sep = "" if msg.startswith(":") else " "
        return KvbenchError(f"scenario {self.scn}: field {name}{sep}{msg}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def number(self, key: str, *, required: bool = True, minimum: float | None = 0.0,
               strict: bool = True, maximum: float | None = None, integer: bool = False,
               default: float | None = None) -> float | None:
        """A number; by default it must be > 0. Strings such as '58.3e12' or
        '58,300,000' are accepted (YAML 1.1 reads 58.3e12 as a string)."""
        if not self.has(key):
            self.used.add(key)
            if required:
                raise self.error(key, "is missing")
            return default
        value = to_number(self.raw(key))
        if value is None:
            raise self.error(key, f"must be a number (got {self.data[key]!r})")
        if minimum is not None:
            if strict and not value > minimum:
                raise self.error(key, f"must be > {minimum:g} (got {value:g})")
            if not strict and value < minimum:
                raise self.error(key, f"must be >= {minimum:g} (got {value:g})")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum:g} (got {value:g})")
        if integer and value != int(value):
            raise self.error(key, f"must be a whole number (got {value:g})")
        return value

    def size(self, base: str, *, required: bool = True, positive: bool = False) -> float | None:
        """A size in bytes from ``<base>_<unit>`` (exactly one unit suffix)."""
        keys = [f"{base}_{u}" for u in SIZE_UNITS if self.has(f"{base}_{u}")]
        for u in SIZE_UNITS:
            self.used.add(f"{base}_{u}")
        if len(keys) > 1:
            raise self.error(keys[1], f"repeats {self.where(keys[0])}: give one unit")
        if not keys:
            if required:
                units = "|".join(SIZE_UNITS)
                raise self.error(f"{base}_<{units}>", "is missing")
            return None
        key = keys[0]
        value = self.number(key, minimum=0.0, strict=positive)
        return value * SIZE_UNITS[key[len(base) + 1:]]

    def text(self, key: str, *, required: bool = False, default: str = "") -> str:
        if not self.has(key):
            self.used.add(key)
            if required:
                raise self.error(key, "is missing")
            return default
        value = self.raw(key)
        if not isinstance(value, (str, int, float)):
            raise self.error(key, f"must be text (got {type(value).__name__})")
        return str(value)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(key, default=default)
        if value not in options:
            raise self.error(key, f"must be one of {', '.join(options)} (got {value!r})")
        return value

    def sub(self, key: str, *, required: bool = True) -> "Section":
        if required and not self.has(key):
            self.used.add(key)
            raise self.error(key, "is missing")
        return Section(self.scn, self.where(key), self.raw(key))

    def split(self, key: str, tiers: tuple[str, ...]) -> dict[str, float]:
        """A mapping tier -> fraction in [0, 1] that sums to 1."""
        sec = self.sub(key)
        out = {t: sec.number(t, required=False, minimum=0.0, strict=False, maximum=1.0, default=0.0)
               for t in tiers}
        sec.done()
        total = sum(out.values())
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            parts = " + ".join(f"{t} {v:g}" for t, v in out.items())
            raise self.error(key, f"fractions must sum to 1 ({parts} = {total:g})")
        return out

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        for key in unknown:
            self.refuse_renamed(key, self.used)
        if unknown:
            raise self.error(unknown[0], "is not a known field (see docs/sizing.md)")

    def refuse_renamed(self, key: str, known: Any) -> None:
        """A one-line error when ``key`` is a known key under an old tier name."""
        new = renamed_key(key)
        if new is not None and new in known:
            raise self.error(key, f"uses the old tier name: it is now {self.where(new)} "
                                  f"(sizing uses kvbench's tier names: {_renames_text()})")


def renamed_key(key: str) -> str | None:
    """``key`` with the old tier names among its ``_``-separated words replaced
    ('total_ssd_tib' -> 'total_nvme_tib'), or None when it holds none."""
    words = key.split("_")
    new = [RENAMED_TIERS.get(w, w) for w in words]
    return "_".join(new) if new != words else None


def _renames_text() -> str:
    return ", ".join(f"{old} -> {new}" for old, new in RENAMED_TIERS.items())


def to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            v = float(value.replace("_", "").replace(",", "").strip())
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None
