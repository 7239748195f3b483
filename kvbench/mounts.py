"""The mount table: which mount holds a path and what backs it (a disk, RAM, an
overlay, the network). Pure text parsing over /proc/self/mountinfo or /proc/mounts, so
tests feed it fake tables; the environment block and the nvme tier's choice of folder
both read it. No kvbench imports."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


def _read_text(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[dict[str, str]]:
    """Rows of /proc/self/mountinfo: mount_point, fs_type, source, major_minor, options.

    Format (proc(5)): ``id parent maj:min root mount_point options [optional...] -
    fs_type source super_options``.
    """
    rows = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 6 or len(rf) < 2:
            continue
        rows.append({
            "mount_point": _unescape_mount(lf[4]),
            "major_minor": lf[2],
            "options": lf[5],
            "fs_type": rf[0],
            "source": _unescape_mount(rf[1]),
        })
    return rows


def find_mount(path: str | Path, rows: list[dict[str, str]]) -> dict[str, str] | None:
    """The mount holding `path` (absolute, resolved): the longest matching mount point,
    the later row when mounts are stacked on one point."""
    p = str(path)
    best = None
    for row in rows:
        mp = row["mount_point"]
        if p == mp or p.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best["mount_point"]):
                best = row
    return best


def parse_proc_mounts(text: str) -> list[dict[str, str]]:
    """Rows of /proc/mounts (fstab(5) format: ``source mount_point fs_type options 0 0``),
    in parse_mountinfo's shape (major_minor empty): the fallback when mountinfo is absent."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4:
            rows.append({"mount_point": _unescape_mount(f[1]), "major_minor": "",
                         "options": f[3], "fs_type": f[2], "source": _unescape_mount(f[0])})
    return rows


def read_mount_table() -> list[dict[str, str]]:
    """This process's mounts (/proc/self/mountinfo, else /proc/mounts); [] when neither
    can be read (then every directory's backing is "unknown")."""
    for path, parse in (("/proc/self/mountinfo", parse_mountinfo), ("/proc/mounts", parse_proc_mounts)):
        text = _read_text(path)
        if text:
            return parse(text)
    return []


# What a mount's filesystem says about where its files live. Only "disk" is chosen for
# NVMe files by default; the rest are labelled wherever the directory is used.
#   ram:     files are pages of memory (tmpfs, ramfs; /dev/zram* and /dev/ram* devices)
#   overlay: a union of layers whose writable upper layer may be tmpfs (gVisor's default
#            root overlay is memory-backed); O_DIRECT often refused
#   network: another machine's disks, through the network
#   unknown: FUSE, host-shared (9p, virtiofs), read-only images, anything not listed
DISK_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs", "jfs", "reiserfs",
    "nilfs2", "vfat", "exfat", "ntfs", "ntfs3"})
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
OVERLAY_FILESYSTEMS = frozenset({"overlay", "overlayfs", "aufs", "unionfs"})
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "afs", "ocfs2", "gfs2"})
_RAM_BLOCK_DEVICE = re.compile(r"^/dev/(zram|ram)\d+")


def fs_backing(fs_type: str | None, source: str | None) -> tuple[str, str]:
    """(backing, why) for a mount: backing is "disk", "ram", "overlay", "network" or
    "unknown"; why is a short phrase ('tmpfs (RAM-backed)')."""
    fs, src = fs_type or "", source or ""
    if _RAM_BLOCK_DEVICE.match(src):
        return "ram", f"{fs or 'a filesystem'} on {src} (a RAM block device)"
    if fs in RAM_FILESYSTEMS:
        return "ram", f"{fs} (RAM-backed)"
    if fs in OVERLAY_FILESYSTEMS:
        return "overlay", f"{fs} (layers of unknown backing, possibly RAM)"
    if fs in NETWORK_FILESYSTEMS:
        return "network", f"{fs} (a network filesystem)"
    if fs in DISK_FILESYSTEMS:
        return "disk", f"{fs} on {src or 'a block device'}"
    if not fs:
        return "unknown", "no mount found for it"
    return "unknown", f"{fs} (backing unknown)"


def dir_backing(path: str | Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    """The mount holding ``path`` (resolved) and what backs it: mount_point, fs_type,
    source, backing, why (see fs_backing)."""
    mount = find_mount(os.path.realpath(path), rows) if rows else None
    fs, src = (mount["fs_type"], mount["source"]) if mount else (None, None)
    backing, why = fs_backing(fs, src)
    return {"mount_point": mount["mount_point"] if mount else None, "fs_type": fs, "source": src,
            "backing": backing, "why": why}
