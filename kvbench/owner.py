"""Which process wrote a file or owns a folder, and whether it still runs: the pid,
host, process start time and boot id that name one process even when pids are
reused (Linux /proc; null where it is missing). Used to recognise what a killed run
left behind. No kvbench imports."""

from __future__ import annotations

import os
import socket
from typing import Any


def short_host() -> str:
    """This host's name up to the first dot, letters, digits and '-' only."""
    h = socket.gethostname().split(".")[0]
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in h) or "host"


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks after boot (/proc/PID/stat field 22):
    with the pid it names one process, even when pids are reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_identity() -> dict[str, Any]:
    """Who is writing: ``{pid, host, start_ticks, boot_id, uid}`` of this process
    (start_ticks and boot_id are null where /proc is missing)."""
    return {"pid": os.getpid(), "host": short_host(), "start_ticks": _proc_start_ticks(os.getpid()),
            "boot_id": _boot_id(), "uid": os.getuid()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def owner_alive(ident: dict[str, Any]) -> bool | None:
    """Whether the process ``ident`` (process_identity) names still runs: None when it
    cannot be checked (another host, or no pid recorded). A pid now used by a process
    that started later, or one from an earlier boot, is not it."""
    pid = ident.get("pid")
    if not isinstance(pid, int) or ident.get("host") != short_host():
        return None
    boot = ident.get("boot_id")
    if boot and _boot_id() and boot != _boot_id():
        return False
    if not pid_alive(pid):
        return False
    ticks = ident.get("start_ticks")
    now = _proc_start_ticks(pid)
    if isinstance(ticks, int) and now is not None and now != ticks:
        return False
    return True
