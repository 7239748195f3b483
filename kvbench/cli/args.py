"""What every kvbench command shares: the one-line argument parser, option value
parsers, the run defaults."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from kvbench.errors import KvbenchError

DEFAULT_MODEL = "Llama-3.1-8B"
DEFAULT_FORMATS = ("fp16", "fp8_e4m3", "nvfp4")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kvbench: error: {message} (see '{self.prog} --help')\n")


def csv_values(values: list[str] | None, flag: str = "") -> list[str]:
    """Repeatable, comma-separable option values, flattened: ['a,b', 'c'] -> [a, b, c].
    An option given but empty (``--bench ""``) is a one-line error naming ``flag``: it
    would otherwise silently mean the default selection."""
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    if values is not None and not out:
        raise KvbenchError(f"{flag or 'option'} is empty: give at least one value")
    return out


def _number(convert: Callable[[str], Any], kind: str, ok: Callable[[Any], bool],
            rule: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)``, refused in one line when it is not a
    ``kind`` or ``ok(value)`` is false (``rule`` says what is wanted)."""
    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
        return v
    return parse


_positive_int = _number(int, "an integer", lambda v: v > 0, "must be positive")
_positive_float = _number(float, "a number", lambda v: 0 < v < float("inf"), "must be a positive number")
_nonneg_int = _number(int, "an integer", lambda v: v >= 0, "must be >= 0")


