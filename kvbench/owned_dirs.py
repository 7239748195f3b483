"""Folders kvbench makes and the folders a killed kvbench left behind: each private
folder (``kvbench-...``, 0700) holds an owner file (``.kvbench-owner``: pid, host,
process start, boot, user; kvbench.owner), so a later run can tell a folder whose owner
still runs from one a ``kill -9`` left, and remove only the latter."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any


#: the owner file inside every folder kvbench makes; folder names start with this
OWNER_FILE = ".kvbench-owner"
DIR_PREFIX = "kvbench-"


def make_owned_dir(prefix: str, parent: str | Path) -> Path:
    """A new private folder in ``parent``: mkdtemp (created exclusively, 0700, a name
    ``PREFIX<pid>-XXXXXXXX`` no one can pre-plant), with an owner file written
    O_EXCL | O_NOFOLLOW, 0600. ``prefix`` must start with DIR_PREFIX."""
    from kvbench.owner import process_identity

    assert prefix.startswith(DIR_PREFIX), prefix
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    try:
        fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(process_identity(), fh)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _read_owner(dir_fd: int) -> dict[str, Any] | None:
    """The owner file of an open folder, read without following a symlink; None when
    missing or not kvbench's."""
    try:
        fd = os.open(OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = json.loads(os.read(fd, 4096).decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def remove_stale_dirs(parent: str | Path, *, log: Any = None) -> list[Path]:
    """Remove the folders a killed kvbench left in ``parent``: only real folders (not
    symlinks) named DIR_PREFIX..., owned by this user, holding a kvbench owner file
    that names a process on this host that is no longer running. A folder without an
    owner file (another tool's, or one being made right now) is left alone. Says what
    it removed on stderr (or ``log``); returns the paths removed."""
    from kvbench.owner import owner_alive

    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(DIR_PREFIX)]
    except OSError:
        return removed
    uid = os.getuid()
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        try:
            dfd = os.open(e.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            owner = _read_owner(dfd)
        finally:
            os.close(dfd)
        if owner is None or owner.get("uid", uid) != uid or owner_alive(owner) is not False:
            continue  # not ours, another host's, or still running
        shutil.rmtree(e.path, ignore_errors=True)  # fd-based on Linux: never follows a symlink
        if not os.path.lexists(e.path):
            removed.append(Path(e.path))
            what = "nvme" if e.name.startswith("kvbench-nvme-") else "kvbench"
            print(f"kvbench: removed stale {what} folder {e.path} (left by pid {owner.get('pid')} "
                  f"on {owner.get('host')}, no longer running)", file=log or sys.stderr)
    return removed
