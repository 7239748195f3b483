"""Units. GB = 1e9 bytes and GiB = 2**30 bytes, everywhere kvbench prints a figure."""

GB = 1_000_000_000
GiB = 1 << 30
TB = 1_000_000_000_000
TiB = 1 << 40
PB = 10**15
EB = 10**18
KiB = 1 << 10
MiB = 1 << 20


def align_up(n: int, alignment: int) -> int:
    """Round n up to a multiple of alignment."""
    return -(-n // alignment) * alignment


def fmt_bytes(n: float) -> str:
    """Human-readable binary size: '64.0 KiB', '2.00 MiB'."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> int:
    """Parse '4KiB', '64MiB', '2GB', '4096' into bytes (binary and decimal suffixes)."""
    t = text.strip().replace(" ", "")
    suffixes = {
        "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB, "pib": 1 << 50,
        "kb": 1000, "mb": 10**6, "gb": GB, "tb": TB, "pb": PB,
        "k": KiB, "m": MiB, "g": GiB, "b": 1,
    }
    low = t.lower()
    for suf in sorted(suffixes, key=len, reverse=True):
        if low.endswith(suf):
            num = low[: -len(suf)]
            mult = suffixes[suf]
            break
    else:
        num, mult = low, 1
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 64KiB, 2MiB, 1GB)") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(value * mult)


def is_num(v: object) -> bool:
    """A finite int or float (bools and None are not figures)."""
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
