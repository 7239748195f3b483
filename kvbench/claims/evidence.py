"""The measurements a claim check may use: kvbench result files, loaded and validated
(kvbench.results.load: a missing or corrupt file is one KvbenchError line), their cases
by benchmark and configuration, and the hardware each was measured on, in words.

A figure measured on a machine without a GPU is labelled so (``on_cpu``), and a verdict
resting on it says it does not speak for a GPU (``cpu_caveat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kvbench.report.machine import disk_text, gpu_text, gpus_of

Case = dict[str, Any]


@dataclass(frozen=True)
class Result:
    """One loaded result document and the path it came from."""

    path: str
    doc: dict[str, Any]

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def env(self) -> dict[str, Any]:
        return self.doc.get("environment") or {}

    @property
    def on_gpu(self) -> bool:
        return bool(gpus_of(self.env))

    @property
    def hardware(self) -> str:
        """'GPU NVIDIA H200, 139.8 GiB, sm 9.0' or 'CPU Intel(R) Xeon(R) Processor (2 cores),
        no GPU (torch built without CUDA)'."""
        if self.on_gpu:
            return f"GPU {gpu_text(self.env)}"
        host = self.env.get("host") or {}
        cores = host.get("cpu_cores_physical") or host.get("cpu_cores_logical") or "?"
        why = (self.env.get("cuda") or {}).get("reason") or (self.env.get("nvml") or {}).get("reason")
        return f"CPU {host.get('cpu_model') or 'unknown'} ({cores} cores), no GPU ({why or 'none recorded'})"

    @property
    def disk(self) -> str:
        """The nvme tier's folder and disk as the result recorded them."""
        return disk_text(self.env)


@dataclass(frozen=True)
class Evidence:
    """What the checks read: the result files given (none: arithmetic only) and the
    ``--scenario`` override of claims that take a scenario (None: each claim's own)."""

    results: tuple[Result, ...] = ()
    scenario: str | None = None

    def cases(self, bench: str, status: str = "ok", **config: Any) -> Iterator[tuple[Result, Case]]:
        """(result, case) of ``bench`` with ``status`` whose config has the given values."""
        for r in self.results:
            for c in r.doc.get("cases", []):
                if c.get("bench") != bench or c.get("status") != status:
                    continue
                cfg = c.get("config") or {}
                if all(cfg.get(k) == v for k, v in config.items()):
                    yield r, c

    def skip_reason(self, bench: str, name_prefix: str) -> str:
        """What the given results say about cases they skipped ('the given results skipped
        decode/hbm/* (needs a CUDA device: ...)'), or '' when they skipped none."""
        for r, c in self.cases(bench, status="skipped"):
            if str(c.get("name", "")).startswith(name_prefix):
                return f"{r.name} skipped {bench}/{c['name']} ({c.get('reason') or 'no reason recorded'})"
        return ""


def load_evidence(paths: list[str] | None, scenario: str | None = None) -> Evidence:
    """Load and validate every result file (one KvbenchError line for a bad one)."""
    from kvbench.results import load

    return Evidence(tuple(Result(str(p), load(p)) for p in paths or ()), scenario)


def metric(case: Case, key: str) -> float | None:
    """A case's finite, positive number ``key``, or None."""
    v = (case.get("metrics") or {}).get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
        return None
    return float(v)


def on_cpu(r: Result, case: Case) -> bool:
    """The case ran on a CPU: its config says so, or its machine had no GPU."""
    return (case.get("config") or {}).get("device") == "cpu" or not r.on_gpu


def case_ref(r: Result, case: Case) -> str:
    return f"{case['bench']}/{case['name']} ({r.name})"


def measured_basis(r: Result, cases: list[Case], how: str = "") -> str:
    """'decode/hbm/fp16/8x8192 (run.json) on GPU NVIDIA H200 ...; <how>'."""
    refs = ", ".join(f"{c['bench']}/{c['name']}" for c in cases)
    return f"{refs} ({r.name}) on {r.hardware}" + (f"; {how}" if how else "")


def cpu_caveat(r: Result) -> str:
    return f"measured on {r.hardware}: a CPU figure does not speak for a GPU"
