"""What every kvbench command shares: the one-line argument parser, option value
parsers, the run defaults."""

from __future__ import annotations

import argparse

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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


