"""Measured mode's shared parts: the result types (replacements, missing figures, decode
capacity and reuse rows, the whole ``Measured``) and the helpers that read result
documents. kvbench/sizing/measured.py and measured_decode.py both build on this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.sizing.model import Sizing
from kvbench.spec import ModelSpec, load_model

Doc = tuple[str, dict[str, Any]]  # (path, loaded result document)


@dataclass(frozen=True)
class Replacement:
    quantity: str
    assumption: str
    measured: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class Missing:
    quantity: str
    how: str


@dataclass(frozen=True)
class CapacityRow:
    """Decode capacity at one placement (kvbench/sizing/measured_decode.py)."""

    placement: str
    #: decode: measured; e2e: implied, out_tok_s x KV bytes at the e2e context (GB = 1e9)
    kv_read_gbps: float
    seqs_per_gpu: float
    gpus_needed: float
    fleet_ratio: float
    source: str
    #: the placement matches the scenario's live-KV split
    selected: bool
    note: str = ""
    #: "decode" (the microbenchmark's KV-read GB/s) or "e2e" (end-to-end output tok/s)
    basis: str = "decode"
    format: str = ""
    #: the case's batch and (mean, for e2e) context in tokens, where recorded
    batch: float | None = None
    context_tokens: float | None = None
    out_tok_s: float | None = None
    #: sequences/GPU is an upper bound: the scenario's context is longer than the case's
    upper_bound: bool = False
    #: this row is the decode capacity the replacement uses
    used: bool = False


@dataclass(frozen=True)
class ReuseRow:
    path: str  # "dram", "nvme", "recompute"
    seconds: float
    within_ttft: bool
    source: str
    note: str = ""
    #: the time is a lower bound (a leg of the path was not measured)
    lower_bound: bool = False


@dataclass
class Measured:
    assumed: Sizing
    sizing: Sizing
    replacements: list[Replacement] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    capacity: list[CapacityRow] = field(default_factory=list)
    reuse: list[ReuseRow] = field(default_factory=list)
    reuse_prefix_tokens: float = 0.0
    reuse_verdict: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ helpers
def case_ref(path: str, case: dict[str, Any]) -> str:
    return f"{Path(path).name}: {case['bench']}/{case['name']}"


def ok_cases(docs: list[Doc], bench: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p, c) for p, doc in docs for c in doc.get("cases", [])
            if c.get("bench") == bench and c.get("status") == "ok"]


def metric(case: dict[str, Any], key: str) -> float | None:
    v = case.get("metrics", {}).get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        return None
    return float(v)


_MODELS: dict[str, ModelSpec | None] = {}


def model_spec(name: Any) -> ModelSpec | None:
    if not isinstance(name, str) or not name:
        return None
    if name not in _MODELS:
        try:
            _MODELS[name] = load_model(name)
        except KvbenchError:
            _MODELS[name] = None
    return _MODELS[name]


def same(a: Any, b: str) -> bool:
    return isinstance(a, str) and a.lower() == b.lower()


def params_active(m: ModelSpec | None) -> float | None:
    if m is None:
        return None
    for key in ("params_active", "params_total"):
        try:
            return float(m.extra[key])
        except (KeyError, TypeError, ValueError):
            continue
    return None
