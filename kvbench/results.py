"""Result files: one versioned JSON schema, written atomically, validated on load.

Schema ``kvbench.result/1`` (documented in docs/results.md)::

    {
      "schema": "kvbench.result/1",
      "run":         {id, started_utc, finished_utc, status, command, kvbench_version,
                      benches, mode, options},
      "environment": {...}           # kvbench.env.collect_environment()
      "method":      {...}           # timing method, warm-up, samples, units, counting
      "cases":       [case, ...]
    }

    case = {
      "bench": "transfer",            # registry key
      "name": "dram->nvme/odirect/...", # unique within the bench
      "status": "ok" | "skipped" | "error",
      "reason": "...",                # why skipped / what failed ("" when ok)
      "config": {...},                # resolved configuration of the case
      "metrics": {name: value},       # headline figures (median of samples)
      "units": {name: unit},          # for metrics, samples and stats
      "samples": {name: [float]},     # raw samples, one per timed repetition
      "stats": {name: {n, median, p10, p90, mean, stdev, cv, min, max}},
      "notes": [str],                 # labels such as "warm: page cache resident"
    }
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError

SCHEMA = "kvbench.result/1"
SCHEMA_NAME, SCHEMA_VERSION = SCHEMA.split("/")
CASE_STATUSES = ("ok", "skipped", "error")

_REQUIRED = {
    "run": ("id", "started_utc", "status", "kvbench_version", "mode"),
    "environment": ("host", "software"),
    "method": ("timer", "units"),
}
_CASE_REQUIRED = ("bench", "name", "status", "config", "metrics", "units", "samples", "stats")


# ---------------------------------------------------------------------------- statistics
from kvbench.stats import summarize  # noqa: E402,F401 - results' statistics


def make_case(
    bench: str,
    name: str,
    config: dict[str, Any],
    *,
    samples: dict[str, list[float]] | None = None,
    units: dict[str, str] | None = None,
    metrics: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    status: str = "ok",
    reason: str = "",
) -> dict[str, Any]:
    """Build a case dict; metrics default to the median of each sample series."""
    samples = {k: [float(x) for x in v] for k, v in (samples or {}).items()}
    stats = {k: summarize(v) for k, v in samples.items()}
    m = {k: s["median"] for k, s in stats.items() if s.get("n")}
    m.update(metrics or {})
    return {
        "bench": bench,
        "name": name,
        "status": status,
        "reason": reason,
        "config": config,
        "metrics": m,
        "units": dict(units or {}),
        "samples": samples,
        "stats": stats,
        "notes": list(notes or []),
    }


def skipped_case(bench: str, name: str, config: dict[str, Any], reason: str) -> dict[str, Any]:
    return make_case(bench, name, config, status="skipped", reason=reason)


# ---------------------------------------------------------------------------- writing
def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write bytes to ``path`` through a temp file in the same folder, fsync, then
    os.replace: a reader (or an interrupted run) never sees a half-written file, and
    the temp file is removed on any failure, KeyboardInterrupt included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_atomic(path: Path | str, doc: dict[str, Any]) -> Path:
    """Write a JSON document atomically (see write_bytes_atomic). NaN and infinity are
    refused: they are not JSON, and a result never needs them."""
    text = json.dumps(doc, indent=1, default=_json_default, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode())


# ---------------------------------------------------------------------------- loading
def validate(doc: Any, origin: str = "<result>") -> dict[str, Any]:
    """Check a parsed result document; raise KvbenchError naming what is wrong."""
    if not isinstance(doc, dict):
        raise KvbenchError(f"{origin}: not a kvbench result (top level is not an object)")
    schema = doc.get("schema")
    if not isinstance(schema, str) or "/" not in schema:
        raise KvbenchError(f"{origin}: missing field 'schema' (not a kvbench result file?)")
    name, _, version = schema.partition("/")
    if name != SCHEMA_NAME:
        raise KvbenchError(f"{origin}: schema {schema!r} is not a kvbench result")
    if version != SCHEMA_VERSION:
        raise KvbenchError(
            f"{origin}: schema version {version!r} is not supported (this kvbench reads {SCHEMA})"
        )
    for section, fields in _REQUIRED.items():
        if not isinstance(doc.get(section), dict):
            raise KvbenchError(f"{origin}: missing field {section!r}")
        for f in fields:
            if f not in doc[section]:
                raise KvbenchError(f"{origin}: missing field '{section}.{f}'")
    cases = doc.get("cases")
    if not isinstance(cases, list):
        raise KvbenchError(f"{origin}: missing field 'cases'")
    for i, case in enumerate(cases):
        if not isinstance(case, dict):
            raise KvbenchError(f"{origin}: cases[{i}] is not an object")
        for f in _CASE_REQUIRED:
            if f not in case:
                raise KvbenchError(f"{origin}: missing field 'cases[{i}].{f}'")
        if case["status"] not in CASE_STATUSES:
            raise KvbenchError(f"{origin}: cases[{i}].status {case['status']!r} is not one of {CASE_STATUSES}")
    return doc


def load(path: Path | str) -> dict[str, Any]:
    """Read and validate a result file. Truncated, foreign or older files raise
    KvbenchError with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KvbenchError(f"{path}: no such result file") from None
    except IsADirectoryError:
        raise KvbenchError(f"{path}: is a directory, not a result file") from None
    except UnicodeDecodeError:
        raise KvbenchError(f"{path}: not a text file") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (truncated?)" if exc.pos >= len(text.rstrip()) - 1 else ""
        raise KvbenchError(f"{path}: not valid JSON at line {exc.lineno} col {exc.colno}{hint}") from None
    return validate(doc, origin=str(path))


def find_cases(doc: dict[str, Any], bench: str | None = None, status: str | None = "ok",
               **config: Any) -> list[dict[str, Any]]:
    """Cases of a result matching the bench, status and config key/values given."""
    out = []
    for c in doc["cases"]:
        if bench is not None and c["bench"] != bench:
            continue
        if status is not None and c["status"] != status:
            continue
        if all(c["config"].get(k) == v for k, v in config.items()):
            out.append(c)
    return out
