"""Where NVMe files go by default: a disk-backed directory chosen from the mount table,
RAM-backed or overlay directories labelled as such, and the reason recorded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kvbench import env
from kvbench import mounts as kenv
from kvbench.errors import KvbenchError
from kvbench.runner import make_nvme_workdir
from kvbench.report.machine import machine_lines
from kvbench.tiers.nvme import (NvmeTier, choose_nvme_dir, chosen_because, default_nvme_dir,
                                nvme_dir_candidates)


def mountinfo(*mounts: tuple[str, str, str]) -> str:
    """A fake /proc/self/mountinfo: (mount_point, fs_type, source) per line."""
    return "".join(f"{20 + i} 1 0:{30 + i} / {mp.replace(' ', chr(92) + '040')} rw,relatime - {fs} {src} rw\n"
                   for i, (mp, fs, src) in enumerate(mounts))


@pytest.fixture
def dirs(tmp_path):
    """Real, writable folders (so the usability checks pass) that a fake mount table
    puts on different filesystems."""
    out = {}
    for name in ("ram", "ovl", "disk", "with space"):
        d = tmp_path / name
        d.mkdir()
        out[name] = os.path.realpath(d)
    return out


@pytest.mark.parametrize("fs,src,backing", [
    ("ext4", "/dev/nvme0n1p2", "disk"), ("xfs", "/dev/md0", "disk"), ("btrfs", "/dev/vda", "disk"),
    ("tmpfs", "tmpfs", "ram"), ("ramfs", "none", "ram"), ("devtmpfs", "udev", "ram"),
    ("ext4", "/dev/zram0", "ram"), ("overlay", "overlay", "overlay"), ("nfs4", "srv:/x", "network"),
    ("fuse.sshfs", "me@h:", "unknown"), ("squashfs", "/dev/loop3", "unknown"), ("9p", "rootfs", "unknown"),
    (None, None, "unknown"),
])
def test_fs_backing(fs, src, backing):
    assert kenv.fs_backing(fs, src)[0] == backing


def test_longest_mount_point_prefix_decides(dirs):
    root = str(Path(dirs["ram"]).parent)
    rows = kenv.parse_mountinfo(mountinfo(("/", "ext4", "/dev/vda"), (dirs["ram"], "tmpfs", "tmpfs")))
    assert kenv.dir_backing(Path(dirs["ram"]) / "sub", rows)["backing"] == "ram"
    assert kenv.dir_backing(dirs["ram"], rows)["mount_point"] == dirs["ram"]
    assert kenv.dir_backing(dirs["ram"] + "x", rows)["backing"] == "disk"  # a prefix, not a parent
    assert kenv.dir_backing(root, rows)["backing"] == "disk"
    # /proc/mounts gives the same rows (fallback when mountinfo is missing)
    mounts = kenv.parse_proc_mounts(f"/dev/vda / ext4 rw 0 0\ntmpfs {dirs['ram']} tmpfs rw 0 0\n")
    assert kenv.dir_backing(dirs["ram"], mounts)["fs_type"] == "tmpfs"


def test_first_disk_backed_candidate_wins(dirs):
    rows = kenv.parse_mountinfo(mountinfo(
        ("/", "overlay", "overlay"), (dirs["ram"], "tmpfs", "tmpfs"), (dirs["disk"], "xfs", "/dev/nvme1n1"),
        (dirs["with space"], "ext4", "/dev/nvme0n1p1")))
    cands = [("$KVBENCH_NVME_DIR", None), ("$TMPDIR", dirs["ram"]), ("/var/tmp", dirs["ovl"]),
             ("/missing", "/nonexistent/kvbench"), ("/tmp", dirs["disk"]), ("cwd", dirs["with space"])]
    c = choose_nvme_dir(cands, rows, min_free=0)
    assert c.path == Path(dirs["disk"]) and c.backing == "disk"
    assert c.reason.startswith(f"first disk-backed candidate: /tmp={dirs['disk']}, xfs on /dev/nvme1n1")
    for said in ("$KVBENCH_NVME_DIR unset", "tmpfs (RAM-backed)", "overlay (layers", "does not exist"):
        assert said in c.reason
    # a directory whose mount point has a space in it (mountinfo escapes it as \040)
    c = choose_nvme_dir([("cwd", dirs["with space"])], rows, min_free=0)
    assert c.path == Path(dirs["with space"]) and c.backing == "disk"


def test_no_disk_falls_back_to_the_first_usable_one_labelled(dirs):
    rows = kenv.parse_mountinfo(mountinfo(("/", "overlay", "overlay"), (dirs["ram"], "tmpfs", "tmpfs")))
    cands = [("$TMPDIR", dirs["ram"]), ("/var/tmp", dirs["ovl"]), ("/tmp", dirs["ram"])]
    c = choose_nvme_dir(cands, rows, min_free=0)
    assert c.path == Path(dirs["ram"]) and c.backing == "ram"
    assert c.reason.startswith("no disk-backed candidate") and "do not measure a disk" in c.reason
    assert c.reason.count("tmpfs (RAM-backed)") == 2  # the repeated /tmp is not looked at again


def test_nothing_usable_is_one_line(dirs):
    rows = kenv.parse_mountinfo(mountinfo(("/", "ext4", "/dev/vda")))
    with pytest.raises(KvbenchError, match="no usable directory for NVMe files") as exc:
        choose_nvme_dir([("$TMPDIR", None), ("/tmp", "/nonexistent/x")], rows)
    assert "\n" not in str(exc.value) and "--nvme-dir" in str(exc.value)
    with pytest.raises(KvbenchError, match="under the"):  # too little free space
        choose_nvme_dir([("/tmp", dirs["disk"])], rows, min_free=1 << 62)


def test_candidates_order():
    names = [n for n, _ in nvme_dir_candidates({"TMPDIR": "/scratch"}, cwd="/work")]
    assert names == ["$KVBENCH_NVME_DIR", "$TMPDIR", "/var/tmp", "/tmp", "the current directory"]
    cands = dict(nvme_dir_candidates({"TMPDIR": "/scratch", "KVBENCH_NVME_DIR": ""}, cwd="/work"))
    assert cands["$KVBENCH_NVME_DIR"] is None and cands["$TMPDIR"] == "/scratch"
    assert cands["the current directory"] == "/work"


def test_ram_backed_dir_is_labelled():
    shm = Path("/dev/shm")
    if not shm.is_dir() or kenv.dir_backing(shm, kenv.read_mount_table())["fs_type"] != "tmpfs":
        pytest.skip("no tmpfs /dev/shm here")
    assert NvmeTier(shm).label == "nvme (RAM-backed tmpfs: not a disk)"
    nv = env.collect_environment(shm, import_torch=False)["nvme"]
    assert nv["backing"] == "ram" and "RAM-backed" in nv["backing_reason"]
    assert any(line.startswith("  not a disk: tmpfs") for line in machine_lines({"nvme": nv}))


def test_other_backings_are_labelled(tmp_path):
    t = NvmeTier(tmp_path)
    t._backing = {"backing": "overlay", "fs_type": "overlay"}
    assert t.label == "nvme (overlay: may not be a disk)"
    t._backing = {"backing": "network", "fs_type": "nfs4"}
    assert "network filesystem" in t.label
    t._backing = {"backing": "disk", "fs_type": "ext4"}
    assert t.label == "nvme"


def test_default_here_is_disk_backed():
    rows = kenv.read_mount_table()
    usable_disk = [p for _, p in nvme_dir_candidates() if p and os.path.isdir(p)
                   and os.access(p, os.W_OK) and kenv.dir_backing(p, rows)["backing"] == "disk"]
    if not usable_disk:
        pytest.skip("no candidate directory here is on a disk filesystem")
    c = default_nvme_dir()
    assert c.backing == "disk" and c.reason.startswith("first disk-backed candidate")
    assert NvmeTier().base_dir == c.path and NvmeTier().label == "nvme"


def test_env_var_candidate_is_taken_when_on_a_disk(tmp_path, monkeypatch):
    rows = kenv.read_mount_table()
    if kenv.dir_backing(tmp_path, rows)["backing"] != "disk":
        pytest.skip("the pytest temp dir is not on a disk filesystem here")
    monkeypatch.setenv("KVBENCH_NVME_DIR", str(tmp_path))
    c = default_nvme_dir()
    assert c.path == tmp_path and c.reason.startswith(f"first disk-backed candidate: $KVBENCH_NVME_DIR={tmp_path}")


def test_workdir_records_why(tmp_path):
    path, owned = make_nvme_workdir(None)
    try:
        assert owned and path.name.startswith("kvbench-nvme-")
        assert path.parent == default_nvme_dir().path
        nv = env.collect_environment(path, import_torch=False)["nvme"]
        assert nv["chosen_because"] == chosen_because(path) and nv["backing"] in (
            "disk", "ram", "overlay", "network", "unknown")
    finally:
        shutil.rmtree(path)
    path, owned = make_nvme_workdir(str(tmp_path))
    assert (path, owned) == (tmp_path, False)
    assert env.collect_environment(tmp_path, import_torch=False)["nvme"]["chosen_because"] == "given by --nvme-dir"
