"""What backs a folder: its filesystem, mount, free space and block device (the whole
disk, its kind, model, queue settings), from the mount table and sysfs; the small
sysfs/procfs readers kvbench.env uses too. Nothing here raises on a missing file: a
query that fails gives None (or a ``reason``)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from kvbench.mounts import find_mount, fs_backing, read_mount_table


def try_(fn: Callable[[], Any], default: Any = None) -> Any:
    """fn() or `default` when it raises anything (one unsupported query = one None)."""
    try:
        return fn()
    except Exception:
        return default


def read_text(path: str | Path) -> str | None:
    """Stripped contents of a small (sysfs/procfs) file, or None if unreadable."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: str | Path) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def bracketed(text: str | None) -> str | None:
    """The selected entry of a sysfs choice list: 'none [mq-deadline] kyber' -> 'mq-deadline'."""
    if not text:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.split()[0]


# ---------------------------------------------------------------------------
# the NVMe (spill) directory
# ---------------------------------------------------------------------------

_PARTITION_PATTERNS = (
    re.compile(r"^(nvme\d+n\d+)p\d+$"),        # nvme0n1p1 -> nvme0n1
    re.compile(r"^(mmcblk\d+)p\d+$"),          # mmcblk0p2 -> mmcblk0
    re.compile(r"^(loop\d+)p\d+$"),            # loop0p1 -> loop0
    re.compile(r"^((?:s|v|xv|h)d[a-z]+)\d+$"),  # sda3 -> sda, vda1 -> vda, xvdb1 -> xvdb
)


def whole_disk_name(name: str) -> str:
    """Whole-disk name of a block device name by kernel naming rules; a disk maps to itself.

    Used when sysfs cannot tell (sysfs, when present, is authoritative: a partition's
    directory holds a `partition` file and sits inside its disk's directory).
    """
    for pat in _PARTITION_PATTERNS:
        m = pat.match(name)
        if m:
            return m.group(1)
    return name


def _device_kind(name: str, rotational: int | None) -> str:
    """Coarse guess of what backs a block device, from its name and rotational flag."""
    prefixes = (
        ("nvme", "nvme"), ("vd", "virtio"), ("xvd", "xen"), ("loop", "loop"),
        ("dm-", "device-mapper"), ("md", "md-raid"), ("zram", "zram"), ("mmcblk", "mmc"),
        ("nbd", "network-block"), ("rbd", "network-block"),
    )
    for prefix, kind in prefixes:
        if name.startswith(prefix):
            return kind
    if rotational == 1:
        return "rotational"
    if rotational == 0:
        return "ssd"
    return "unknown"


def block_device(major: int, minor: int) -> dict[str, Any]:
    """Identify block device major:minor via /sys/dev/block and describe its whole disk."""
    link = Path(f"/sys/dev/block/{major}:{minor}")
    if not link.exists():
        return {"reason": f"no /sys/dev/block/{major}:{minor} (not a block device)"}
    real = link.resolve()
    name = real.name
    if (real / "partition").exists():
        disk = real.parent.name
    else:
        disk = name
    if not Path(f"/sys/block/{disk}").exists():
        disk = whole_disk_name(name)
    q = Path(f"/sys/block/{disk}/queue")
    rotational = read_int(q / "rotational")
    sectors = read_int(f"/sys/block/{disk}/size")
    info: dict[str, Any] = {
        "major_minor": f"{major}:{minor}",
        "device": f"/dev/{name}",
        "partition": name if name != disk else None,
        "disk": disk,
        "kind": _device_kind(disk, rotational),
        "model": read_text(f"/sys/block/{disk}/device/model"),
        "rotational": bool(rotational) if rotational is not None else None,
        "scheduler": bracketed(read_text(q / "scheduler")),
        "logical_block_size": read_int(q / "logical_block_size"),
        "physical_block_size": read_int(q / "physical_block_size"),
        "max_sectors_kb": read_int(q / "max_sectors_kb"),
        "nr_requests": read_int(q / "nr_requests"),
        "size_bytes": sectors * 512 if sectors is not None else None,  # sysfs `size` counts 512 B sectors
    }
    slaves = Path(f"/sys/block/{disk}/slaves")
    if slaves.is_dir():
        names = try_(lambda: sorted(p.name for p in slaves.iterdir()), [])
        if names:
            info["slaves"] = names  # device-mapper / md members
    return info


def _chosen_because(real: str) -> str:
    """Why this directory holds the NVMe files (recorded by make_nvme_workdir)."""
    from kvbench.tiers.nvme import chosen_because

    return chosen_because(real) or "given by the caller"


def folder_identity(nvme_dir: str | Path) -> dict[str, Any]:
    """Filesystem, free space and backing block device of the directory used as NVMe tier."""
    d = Path(nvme_dir).expanduser()
    out: dict[str, Any] = {"dir": str(d)}
    try:
        st = os.stat(d)
    except OSError as exc:
        out["reason"] = f"cannot stat directory: {exc.strerror or exc}"
        return out
    real = os.path.realpath(d)
    out["resolved"] = real

    rows = try_(read_mount_table, [])
    mount = find_mount(real, rows) if rows else None
    out["mount_point"] = mount["mount_point"] if mount else None
    out["fs_type"] = mount["fs_type"] if mount else None
    out["source"] = mount["source"] if mount else None
    out["mount_options"] = mount["options"] if mount else None
    out["backing"], out["backing_reason"] = fs_backing(out["fs_type"], out["source"])
    out["chosen_because"] = try_(lambda: _chosen_because(real))

    usage = try_(lambda: shutil.disk_usage(real))
    out["total_bytes"] = int(usage.total) if usage else None
    out["free_bytes"] = int(usage.free) if usage else None

    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0:
        # Anonymous device: tmpfs, overlay, NFS, or btrfs/zfs subvolumes. Fall back to
        # the mount source when it names a real block device (btrfs does).
        src = out["source"] or ""
        rdev = try_(lambda: os.stat(src).st_rdev) if src.startswith("/dev/") else None
        if rdev and os.major(rdev) != 0:
            major, minor = os.major(rdev), os.minor(rdev)
        else:
            out["block_device"] = None
            out["reason"] = (f"{out['fs_type'] or 'filesystem'} (source {src or 'unknown'}) "
                             "has no backing block device")
            return out
    out["block_device"] = block_device(major, minor)
    if "reason" in out["block_device"]:
        out["reason"] = out["block_device"].pop("reason")
        out["block_device"] = None
    return out
