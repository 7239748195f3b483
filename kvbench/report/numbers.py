"""Numbers as a person reads them: figures to about 4 significant digits, ratios,
units, which way a metric improves, geometric means."""

from __future__ import annotations

import math
from typing import Any, Iterable

from kvbench.units import GiB, is_num  # noqa: F401 - is_num is re-exported

UNITS_LINE = "GB = 1e9 B, GiB = 2^30 B"


def fmt_num(v: Any, unit: str = "") -> str:
    """A figure to about 4 significant digits; whole bytes with thousands separators."""
    if not is_num(v):
        return ""
    if unit in ("B", "bytes") or unit.startswith("B "):
        return f"{int(round(v)):,}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.4g}"
    if a >= 1e-3:
        return f"{v:.3g}"
    return f"{v:.2e}"


def fmt_short(v: Any) -> str:
    """A figure in at most ~6 characters: 2.10M, 13.6k, 0.53, 4.1e-05."""
    if not is_num(v):
        return ""
    a = abs(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= max(scale, 1e4):  # below 10,000 the figure itself is short enough
            return f"{v / scale:.3g}{suffix}"
    return fmt_num(v)


def fmt_ratio(r: float | None) -> str:
    if r is None or not is_num(r):
        return ""
    return f"{r:,.0f}x" if abs(r) >= 100 else f"{r:.3g}x"


def gib(n: Any) -> str:
    return f"{n / GiB:.1f} GiB" if is_num(n) else "? GiB"


def short_unit(unit: str) -> str:
    """'GB/s (KV bytes / recompute_s: ...)' -> 'GB/s'."""
    return (unit or "").split(" (")[0].strip()


def higher_is_better(metric: str) -> bool | None:
    """Which way a metric improves, from its name (None when the name does not say)."""
    m = metric.lower()
    if m.endswith(("_err", "_error")) or m in ("seconds", "dequant_share") or m.endswith("_s") \
            and not m.endswith(("tok_s", "flop_s")):
        return False
    if m.endswith(("gbps", "tok_s", "flop_s")) or m.startswith(("speedup", "pct_of", "compression")) \
            or m.endswith("_verified"):
        return True
    return None


def geomean(xs: Iterable[float]) -> float | None:
    vals = [x for x in xs if is_num(x) and x > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(x) for x in vals) / len(vals))
