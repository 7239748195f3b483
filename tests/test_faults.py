"""Faults a run must survive: the disk filling up mid-write, a read error, SIGTERM
during a checkpoint write and ``kill -9``. Each fails the one case with its reason (or
ends the run cleanly as interrupted), keeps every finished case in a valid result
file, and leaves no nvme folder or temp file behind; after ``kill -9`` the result says
"running", the report calls it abandoned and the next run removes what it left."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvbench import cli
from kvbench import owner as kowner
from kvbench import results as kresults
from kvbench.report.run_report import build_report
from kvbench.runner import make_nvme_workdir, remove_workdir

from conftest import requires_cuda

ROUNDTRIP = ["run", "--bench", "roundtrip", "--cases", "dram<->nvme", "--no-progress"]


def test_disk_full_mid_write_fails_one_case(tmp_path, nvme_dir):
    """RLIMIT_FSIZE of 8 MiB: the layer case's 2 MiB files fit, the block case's 64 MiB
    file does not (EFBIG, as a full disk gives ENOSPC): that case fails with the reason,
    the run goes on and writes a whole result."""
    out = tmp_path / "r.json"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    p = subprocess.run([sys.executable, "-m", "kvbench", *ROUNDTRIP, "--nvme-dir", str(nvme_dir),
                        "-o", str(out)], preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # a case failed; the run itself ended normally
    doc = kresults.load(out)
    assert doc["run"]["status"] == "complete"
    by = {c["name"]: c for c in doc["cases"]}
    assert by["dram<->nvme/layer"]["status"] == "ok"
    bad = by["dram<->nvme/block"]
    assert bad["status"] == "error" and "File too large" in bad["reason"], bad["reason"]
    assert list(nvme_dir.iterdir()) == []
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("call,nth,err,text", [
    ("pwritev", 3, errno.ENOSPC, "No space left on device"),  # a write in the middle of the first case
    ("preadv", 2, errno.EIO, "Input/output error"),           # one read
])
def test_an_io_error_fails_one_case(tmp_path, nvme_dir, monkeypatch, call, nth, err, text):
    """ENOSPC from a write, EIO from a read, in the first case: that case fails with the
    reason, the next one runs, the nvme folder is emptied."""
    real, calls = getattr(os, call), []

    def failing(fd, bufs, offset, *a):
        calls.append(offset)
        if len(calls) == nth:
            raise OSError(err, os.strerror(err))
        return real(fd, bufs, offset, *a)

    monkeypatch.setattr(os, call, failing)
    out = tmp_path / "r.json"
    assert cli.main([*ROUNDTRIP, "--nvme-dir", str(nvme_dir), "-o", str(out)]) == 1
    doc = kresults.load(out)
    assert [c["status"] for c in doc["cases"]] == ["error", "ok"]
    assert text in doc["cases"][0]["reason"]
    assert list(nvme_dir.iterdir()) == []


def test_sigterm_during_checkpoint_write(tmp_path, nvme_dir, monkeypatch):
    """SIGTERM arrives while the first checkpoint is being written (between write and
    fsync of the temp file): the run ends as interrupted (exit 143) with the finished
    case in a whole file, no temp file and an empty nvme folder."""
    import kvbench.runner as runner

    real, writes, calls = os.fsync, [], []
    real_write = runner.write_atomic

    def counted(path, doc):  # the run's first write is before any case; the second after one
        writes.append(path)
        return real_write(path, doc)

    def fsync(fd):
        if len(writes) == 2:
            calls.append(fd)
            if len(calls) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, mid-write
        return real(fd)

    monkeypatch.setattr(runner, "write_atomic", counted)
    monkeypatch.setattr(kresults.os, "fsync", fsync)
    out = tmp_path / "r.json"
    # 128 + SIGTERM (130 where the CLI treats it as Ctrl-C)
    assert cli.main([*ROUNDTRIP, "--nvme-dir", str(nvme_dir), "-o", str(out)]) in (130, 128 + signal.SIGTERM)
    doc = kresults.load(out)
    assert doc["run"]["status"] == "interrupted"
    assert [c["name"] for c in doc["cases"]] == ["dram<->nvme/layer"]
    assert doc["run"]["checkpoint_utc"] and doc["run"]["finished_utc"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert list(nvme_dir.iterdir()) == []


KILL_AFTER_FIRST_CASE = """
import os, signal, sys
import kvbench.runner as r
from kvbench.owner import short_host
real = r.write_atomic
writes = []
def write_then_die(path, doc):
    real(path, doc)
    writes.append(path)
    if len(writes) < 2:  # the run's first write is before any case
        return
    # a temp file as a kill -9 inside write_atomic leaves it
    open(os.path.join(os.path.dirname(path), f".r.json.{os.getpid()}@{short_host()}.abc123.tmp"), "w")
    os.kill(os.getpid(), signal.SIGKILL)
r.write_atomic = write_then_die
from kvbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_is_flagged_and_the_next_run_cleans_up(tmp_path, capsys, monkeypatch):
    """kill -9 after the first checkpoint: the file says "running" with its writer and
    last checkpoint, the report flags the run abandoned (its pid is gone), and the next
    run removes the nvme work folder and the result temp file it left."""
    base = tmp_path / "base"
    base.mkdir()
    out = tmp_path / "r.json"
    env = {**os.environ, "KVBENCH_NVME_DIR": str(base)}
    p = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_CASE, *ROUNDTRIP, "-o", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    doc = kresults.load(out)
    run = doc["run"]
    assert run["status"] == "running" and run["checkpoint_utc"]
    assert run["writer"]["host"] == kowner.short_host() and kowner.owner_alive(run["writer"]) is False
    assert len(doc["cases"]) == 1
    page = build_report(doc, str(out))
    warnings = [w for kind, body in page.headline if kind == "warnings" for w in body]
    assert any(w.startswith("run abandoned: status running, last checkpoint " + run["checkpoint_utc"])
               and f"written by pid {run['writer']['pid']}" in w and "(no longer running)" in w
               for w in warnings), warnings

    workdir = Path(doc["environment"]["nvme"]["dir"])
    stale_tmp = list(tmp_path.glob(".r.json.*.tmp"))
    assert stale_tmp and workdir.is_dir() and workdir.name.startswith(f"kvbench-nvme-{run['writer']['pid']}-")
    monkeypatch.setenv("KVBENCH_NVME_DIR", str(base))
    capsys.readouterr()
    # the next run: its work folder, and (in runner.run) the result folder's temp files
    new, owned = make_nvme_workdir(None)
    remove_workdir(new, owned)
    kresults.clean_stale_temps(tmp_path)
    err = capsys.readouterr().err
    assert not workdir.exists() and f"removed stale nvme folder {workdir}" in err
    assert not any(t.exists() for t in stale_tmp) and "removed stale temp file" in err


def test_abandoned_on_another_host_is_not_checked():
    from kvbench.report.headline import status_warning

    run = {"status": "running", "checkpoint_utc": "2026-01-01T00:00:00+00:00",
           "writer": {"pid": 1, "host": "elsewhere-0"}}
    w = status_warning(run)
    assert w.startswith("run abandoned: status running, last checkpoint 2026-01-01T00:00:00+00:00, "
                        "written by pid 1 on elsewhere-0 (could not be checked: another host)")
    assert status_warning({"status": "complete"}) is None
    assert "'interrupted'" in status_warning({"status": "interrupted"})


@requires_cuda
def test_cuda_oom_fails_one_case(tmp_path):
    """A CUDA OOM in one case is an error with the reason; the run goes on."""
    import torch

    from kvbench.runner import run_case

    class Oom:
        name, config, footprint = "oom", {}, None

        def run(self, ctx):
            torch.empty(1 << 60, dtype=torch.uint8, device="cuda")

    class B:
        key = "fault"

    ctx = type("Ctx", (), {"cuda_failed": None, "cuda": True})()
    got = run_case(B(), Oom(), ctx)
    assert got["status"] == "error" and "out of memory" in got["reason"].lower()
    assert ctx.cuda_failed is None


KILL_IN_FIRST_CASE = """
import os, signal, sys
import kvbench.runner as r
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
r.run_case = die
from kvbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_during_the_first_case_still_leaves_a_file(tmp_path):
    """The run writes its file before its first case: killed there, it says running
    with its writer, and holds no case."""
    base = tmp_path / "base"
    base.mkdir()
    out = tmp_path / "r.json"
    env = {**os.environ, "KVBENCH_NVME_DIR": str(base)}
    p = subprocess.run([sys.executable, "-c", KILL_IN_FIRST_CASE, *ROUNDTRIP, "-o", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    doc = kresults.load(out)
    assert doc["run"]["status"] == "running" and doc["run"]["writer"]["pid"] and doc["cases"] == []
