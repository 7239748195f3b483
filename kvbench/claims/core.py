"""What a claim check is made of: the claim as data, the figures kvbench puts beside it,
the verdict vocabulary, and how each figure was obtained. Pure Python, no torch.

Every figure says how it was obtained, one of ``HOW``:

``arithmetic``    kvbench's arithmetic (the formula and its inputs are in ``basis``);
``measured``      read from a result file (``basis``: the benchmark, the cases, the
                  hardware they ran on);
``not measured``  the given results hold no such measurement (``basis``: the exact
                  ``kvbench run`` command that measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvbench.sizing.numbers import seconds
from kvbench.units import EB, GB, PB, TB

#: the verdicts a claim can get, in words (docs/claims.md)
VERDICTS = {
    "confirmed": "kvbench's figures agree with the claim",
    "refuted": "kvbench's figures contradict the claim",
    "partly": "some of the claim holds and some does not, or it holds only as qualified",
    "not settled": "a figure exists but cannot decide: measured on a CPU, a shrunk model, or a bound "
                   "on the wrong side",
    "not measured": "deciding needs a measurement the given results lack (the command to run is shown)",
}
CONFIRMED, REFUTED, PARTLY, NOT_SETTLED, NOT_MEASURED = VERDICTS

HOW = ("arithmetic", "measured", "not measured")
ARITHMETIC, MEASURED, NOT_MEASURED_HOW = HOW

#: a parameter that a claim must give (no default)
REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a check: its kind (catalog.PARAM_KINDS), a default (REQUIRED: none)
    and what it means."""

    kind: str
    default: Any = REQUIRED
    help: str = ""


@dataclass(frozen=True)
class Claim:
    """One claim of the research, as configs/claims.yaml states it.

    id: a short stable name (``--claim ID``). quote: the claim's words. source: where it
    is said. confirms / refutes: what kvbench figure would confirm or refute it. check:
    the key of the check that evaluates it (kvbench.claims.checks.CHECKS). params: that
    check's parameters, validated and with defaults filled in.
    """

    id: str
    quote: str
    source: str
    confirms: str
    refutes: str
    check: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    """One line of a claim's output: what the figure is, kvbench's value (with units),
    how it was obtained (one of HOW) and on what basis; ``data``: the numbers, for JSON."""

    what: str
    value: str
    how: str
    basis: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """A claim, kvbench's figures for it, and the verdict (one of VERDICTS) with why."""

    claim: Claim
    figures: tuple[Figure, ...]
    verdict: str
    reason: str
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}")


def arithmetic(what: str, value: str, basis: str, **data: Any) -> Figure:
    return Figure(what, value, ARITHMETIC, basis, data)


def measured(what: str, value: str, basis: str, **data: Any) -> Figure:
    return Figure(what, value, MEASURED, basis, data)


def not_measured(what: str, command: str, why: str = "", where: str = "") -> Figure:
    """A figure the given results lack: ``command`` measures it (``where``: on what
    machine, e.g. "on a GPU machine"); ``why``: what the results say about it (a skip
    reason), if anything."""
    basis = f"not measured here: run `{command}`" + (f" {where}" if where else "") + (f"; {why}" if why else "")
    return Figure(what, "-", NOT_MEASURED_HOW, basis, {"command": command})


def within(ours: float, claimed: float, tolerance: float) -> bool:
    """``ours`` is within ``tolerance`` (a fraction) of ``claimed``."""
    return abs(ours - claimed) <= tolerance * abs(claimed)


def pct(x: float, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant figures: 0.10516 -> '10.5%'."""
    return f"{x * 100:.{digits}g}%"


def count(n: float) -> str:
    """A large count in words a reader says aloud: '40.7 M', '1.59 G' (M = 1e6, G = 1e9)."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.3g} {unit}"
    return f"{n:,.0f}"


def duration(s: float) -> str:
    """Seconds in the unit a reader says aloud: '14,663 s (4.07 h)', '0.5 s', '12 ms'
    (kvbench.sizing.numbers.seconds, with the hours beside a long one)."""
    if s >= 3600:
        return f"{s:,.0f} s ({s / 3600:.3g} h)"
    return seconds(s)


#: decimal size units a claim may state a figure in (kvbench.units: GB = 1e9 B ... EB = 1e18 B)
DECIMAL_UNITS = {"GB": GB, "TB": TB, "PB": PB, "EB": EB}


def decimal_size(text: str) -> float | None:
    """'200 PB' -> 2e17 bytes (units: DECIMAL_UNITS, a leading '~' ignored); None when
    ``text`` is not such a size."""
    parts = str(text).strip().lstrip("~").split()
    if len(parts) != 2 or parts[1] not in DECIMAL_UNITS:
        return None
    try:
        value = float(parts[0].replace(",", ""))
    except ValueError:
        return None
    return value * DECIMAL_UNITS[parts[1]] if value > 0 else None
