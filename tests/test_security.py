"""Security of what kvbench writes and reads: nvme folders 0700 and files 0600,
created exclusively and never through a symlink; stale-folder cleanup touches only
kvbench's own folders; YAML read with safe_load only, no pickle, no shell; result
files written atomically; a RAM-backed nvme folder labelled as such."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path

import pytest

import kvbench
from kvbench import owner as kowner
from kvbench import results as kresults
from kvbench.report.headline import nvme_backing_line
from kvbench.owned_dirs import OWNER_FILE, make_owned_dir, remove_stale_dirs
from kvbench.tiers.nvme import NvmeTier

PACKAGE = Path(kvbench.__file__).parent


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_nvme_folder_0700_files_0600(nvme_dir):
    tier = NvmeTier(nvme_dir)
    try:
        buf = tier._allocate(8192)
        priv = tier.private_dir()
        assert priv.parent == nvme_dir and mode(priv) == 0o700
        assert mode(buf.path) == 0o600 and mode(priv / OWNER_FILE) == 0o600
        owner = json.loads((priv / OWNER_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == kowner.short_host()
        buf.close()
    finally:
        tier.close()
    assert list(nvme_dir.iterdir()) == []


def test_planted_symlink_is_not_followed(tmp_path, monkeypatch):
    """A symlink pre-planted at the name mkdtemp would pick is not followed: mkdtemp
    (O_EXCL mkdir) takes another name, and the target stays untouched."""
    target = tmp_path / "victim"
    target.mkdir()
    names = iter(["planted", "planted", "fresh123"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / f"kvbench-nvme-{os.getpid()}-planted").symlink_to(target)
    got = make_owned_dir("kvbench-nvme-", tmp_path)
    assert got.name == f"kvbench-nvme-{os.getpid()}-fresh123" and not got.is_symlink()
    assert list(target.iterdir()) == []
    # a symlinked owner file inside a folder is never created through
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / OWNER_FILE).symlink_to(target / "owned")
    with pytest.raises(OSError):
        os.open(tmp_path / "x" / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    assert not (target / "owned").exists()


def test_stale_cleanup_removes_only_dead_kvbench_folders(tmp_path, capsys):
    dead = {"pid": 2 ** 22 + 12345, "host": kowner.short_host(), "uid": os.getuid()}
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")

    def folder(name: str, owner: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        if owner is not None:
            (d / OWNER_FILE).write_text(json.dumps(owner))
        (d / "kv-1.pages").write_text("x")
        return d

    stale = folder("kvbench-nvme-1-aaaa", dead)
    live = make_owned_dir("kvbench-nvme-", tmp_path)  # this process: alive
    foreign_host = folder("kvbench-nvme-2-bbbb", {**dead, "host": "elsewhere-0"})
    no_owner = folder("kvbench-nvme-3-cccc", None)
    not_ours = folder("mydata", dead)  # not kvbench's naming
    (tmp_path / "kvbench-nvme-4-link").symlink_to(victim)  # a symlink is never followed
    linked_owner = folder("kvbench-5-dddd", None)
    (linked_owner / OWNER_FILE).symlink_to(tmp_path / "kvbench-nvme-1-aaaa" / OWNER_FILE)
    removed = remove_stale_dirs(tmp_path)
    assert removed == [stale] and not stale.exists()
    for d in (live, foreign_host, no_owner, not_ours, linked_owner):
        assert d.is_dir()
    assert (victim / "keep").exists()
    assert f"removed stale nvme folder {stale}" in capsys.readouterr().err


def test_stale_result_temp_cleanup(tmp_path):
    host = kowner.short_host()
    dead = tmp_path / f".r.json.{2 ** 22 + 12345}@{host}.abc_12.tmp"
    live = tmp_path / f".r.json.{os.getpid()}@{host}.abc_12.tmp"
    other = tmp_path / f".r.json.{2 ** 22 + 12345}@elsewhere-0.abc_12.tmp"
    plain = tmp_path / "notes.tmp"
    for p in (dead, live, other, plain):
        p.write_text("x")
    link = tmp_path / f".s.json.{2 ** 22 + 12345}@{host}.abc_12.tmp"
    link.symlink_to(plain)
    assert kresults.clean_stale_temps(tmp_path) == [dead]
    assert all(p.exists() for p in (live, other, plain)) and link.is_symlink()


def test_result_written_atomically(tmp_path, monkeypatch):
    """A failure before the rename leaves the old file whole and no temp file."""
    out = tmp_path / "r.json"
    kresults.write_atomic(out, {"a": 1})
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        kresults.write_atomic(out, {"a": 2})
    monkeypatch.setattr(os, "replace", real)
    assert json.loads(out.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in PACKAGE.rglob("*.py")]


def test_no_unsafe_yaml_pickle_shell():
    bad = []
    for path, text in _sources():
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\byaml\.(load|load_all|unsafe_load|full_load)\(", code) and "SafeLoader" not in code:
                bad.append(f"{path}:{i}: {line.strip()}")
            if re.search(r"\b(import pickle|from pickle|cPickle|dill|shell\s*=\s*True|os\.system\(|os\.popen\()",
                         code):
                bad.append(f"{path}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
    assert any("yaml.safe_load" in text for _p, text in _sources())


def test_ram_backed_nvme_dir_is_labelled():
    env = {"nvme": {"dir": "/dev/shm/kvbench-nvme-1-x", "fs_type": "tmpfs", "backing": "ram"}}
    assert nvme_backing_line(env) == ("nvme tier: /dev/shm/kvbench-nvme-1-x is RAM-backed (tmpfs): "
                                      "its figures measure memory, not a disk")
    assert nvme_backing_line({"nvme": {"dir": "/d", "backing": "disk"}}) is None
    assert nvme_backing_line({}) is None


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK),
                    reason="no writable /dev/shm")
def test_dev_shm_recorded_as_ram_in_environment():
    from kvbench.env import collect_environment

    nv = collect_environment(nvme_dir="/dev/shm", import_torch=False)["nvme"]
    if nv.get("fs_type") != "tmpfs":
        pytest.skip(f"/dev/shm is {nv.get('fs_type')} here")
    assert nv["backing"] == "ram"
    assert "RAM-backed (tmpfs)" in nvme_backing_line({"nvme": nv})


def test_ram_backed_nvme_dir_is_in_the_report_headline():
    from kvbench.report.run_report import build_report

    doc = {"run": {"id": "t", "status": "complete", "mode": "cpu-fallback", "quick": True,
                   "kvbench_version": "0"}, "method": {}, "cases": [],
           "environment": {"nvme": {"dir": "/dev/shm/kvbench-nvme-1-x", "backing": "ram", "fs_type": "tmpfs"}}}
    page = build_report(doc, "test")
    warnings = [w for kind, body in page.headline if kind == "warnings" for w in body]
    assert any("RAM-backed (tmpfs)" in w for w in warnings)
