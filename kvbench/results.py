"""Result files: one versioned JSON schema, written atomically, validated on load.

Schema ``kvbench.result/1`` (documented in docs/results.md)::

    {
      "schema": "kvbench.result/1",
      "run":         {id, started_utc, finished_utc, status, checkpoint_utc, writer,
                      command, kvbench_version, benches, mode, options},
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
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.owner import pid_alive, short_host

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
    the temp file is removed on any failure, KeyboardInterrupt included. The temp
    file's name (``.NAME.PID@HOST.XXXX.tmp``, made by mkstemp: O_EXCL, 0600) names its
    writer, so one a ``kill -9`` left behind is found later (clean_stale_temps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{short_host()}.", suffix=".tmp",
                               dir=path.parent)
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


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")


def clean_stale_temps(folder: Path | str, *, log: Any = None) -> list[Path]:
    """Remove the temp files of write_bytes_atomic in ``folder`` whose writer is gone:
    kvbench's own naming only, this host and this user only, regular files only (a
    symlink is never followed or removed). Says what it removed on stderr (or ``log``).
    Returns the paths removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host, uid = short_host(), os.getuid()
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if not m or m["host"] != host:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            continue
        if pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(e.path)
            removed.append(Path(e.path))
            print(f"kvbench: removed stale temp file {e.path} (left by pid {m['pid']}, no longer running)",
                  file=log or sys.stderr)
    return removed


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
    except OSError as exc:  # permission denied, an I/O error, ...: one line, not a traceback
        raise KvbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
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


# ---------------------------------------------------------------------------- output paths
def check_output(path: Path, flag: str, *, force: bool = True, must_exist: bool = True) -> None:
    """Refuse, in one line and before anything runs, an output file that cannot be
    written: a directory, an existing file (unless ``force``), or a folder that cannot
    be written into (see check_folder)."""
    if path.is_dir():
        raise KvbenchError(f"{flag} {path}: is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise KvbenchError(f"{flag} {path}: exists; give --force to overwrite it")
    check_folder(path.parent, f"{flag} {path}", must_exist=must_exist)


def check_folder(folder: Path, what: str, *, must_exist: bool = True) -> None:
    """One-line KvbenchError (prefixed ``what``) unless files can be written in
    ``folder``: it does not exist (or, ``must_exist=False``, its nearest existing
    parent, where it will be created, cannot be written), is not a folder, or is
    read-only. Probed by creating and removing a temp file, so read-only mounts and
    immutable folders count, even for root."""
    import tempfile

    if not must_exist:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.exists():
        raise KvbenchError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise KvbenchError(f"{what}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".kvbench-probe-"):
            pass
    except OSError as exc:
        raise KvbenchError(f"{what}: cannot write in {folder}: {exc.strerror or exc}") from None
