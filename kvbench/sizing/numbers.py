"""Number formatting for sizing output. TiB = 2**40 bytes; PB = 1e15, EB = 1e18 bytes."""

from __future__ import annotations

from kvbench.units import EB, PB, TB, TiB

GB = 10**9
#: 2^40 / 10^12 = 1.0995...: TiB -> TB. The published model's tier totals are its listed rows
#: (TiB) x this factor, printed as TiB: its rows in TB under a TiB label (kvbench.sizing.lint).
TIB_OVER_TB = 2**40 / 10**12
#: The published model's "EB" and "PiB": its TiB / 10^6 and TiB / 10^3 (Exhibits 11 and 12).
SOURCE_EB_TIB = 10**6


def num(x: float) -> str:
    """1,800,000 / 0.5 / 1.25 / 58,300,000,000,000: thousands separators, no noise."""
    if x == int(x) and abs(x) < 1e21:
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}"


def sig3(x: float) -> str:
    """Three significant figures without exponents: 3,000 / 45.2 / 0.123."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def tib(nbytes: float) -> float:
    return nbytes / TiB


def tib_str(nbytes: float) -> str:
    """TiB with whole units from 100 TiB up, as the source prints them."""
    t = nbytes / TiB
    if abs(t) >= 100:
        return f"{t:,.0f}"
    if t == 0:
        return "0"
    return f"{t:,.2f}"


def plain(nbytes: float) -> str:
    """Decimal units a reader says aloud: '51.5 EB', '363 PB', '725 TB', '2.5 GB'."""
    for unit, size in (("EB", EB), ("PB", PB), ("TB", TB), ("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:,.3g} {unit}" if nbytes / size < 1000 else f"{nbytes / size:,.0f} {unit}"
    if nbytes == 0:
        return "0"
    return f"{nbytes:,.0f} B"


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def usd(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"${x / size:,.3g}{unit}"
    return f"${x:,.0f}"


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"
