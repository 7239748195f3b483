"""The command line: exit codes, one-line errors, info output, runs, interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kvbench.cli import main
from kvbench.results import load


def kvbench(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvbench", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_version():
    r = kvbench("--version")
    assert r.returncode == 0 and r.stdout.startswith("kvbench ")


@pytest.mark.parametrize("args,msg", [
    (["run", "--model", "nope"], "unknown model 'nope'"),
    (["run", "--format", "fp7"], "unknown KV format 'fp7'"),
    (["run", "--bench", "nope"], "unknown benchmark 'nope'"),
    (["run", "--tokens-per-page", "0"], "must be positive"),
    (["run", "--layout", "diagonal"], "unknown layout 'diagonal'"),
    (["run", "--nvme-dir", "/nonexistent/kv"], "does not exist"),
    (["run", "--set", "novalue"], "expects key=value"),
    (["run", "--bench", "transfer", "--set", "transfer.thread=4"], "no selected benchmark reads it"),
    (["run", "--bench", "decode", "--set", "decode.hbm.shapes=64by8k"], "decode.hbm.shapes"),
    (["run", "--bench", "decode", "--set", "decode.tiles=24x4x3"], "decode.tiles"),
    (["run", "--bench", "decode", "--set", "decode.nvme.threads=0"], "must be positive"),
    (["run", "--bench", "prefix", "--set", "prefix.tokens=0"], "must be positive"),
    (["run", "--bench", "transfer", "--set", "transfer.budget_s=0"], "positive number of seconds"),
    (["run", "--bench", "transfer", "--set", "transfer.budget_s=soon"], "transfer.budget_s"),
    (["run", "--bench", "transfer", "--set", "transfer.fio=maybe"], "expected on or off"),
    (["run", "--bench", "transfer", "--set", "transfer.queue_depths=0"], "must be positive"),
    (["run", "--bench", "decode", "--set", "decode.budget_s=-1"], "positive number of seconds"),
    (["run", "--bench", "prefix", "--set", "prefix.budget_s=0"], "positive number of seconds"),
    (["run", "--model", "Llama-3.1-405B", "--layout", "block", "--tokens-per-page", "100000000"],
     "is larger than tier"),
    (["info", "--model", "nope"], "unknown model"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, msg, tmp_path):
    r = kvbench(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: error:"), r.stderr
    assert msg in lines[0]
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_info_reports_tiers_and_reasons():
    r = kvbench("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    tiers = {t["tier"]: t for t in info["tiers"]}
    from conftest import CUDA_OK
    assert tiers["hbm"]["available"] == CUDA_OK
    if not CUDA_OK:
        assert "CUDA" in tiers["hbm"]["reason"]
        assert tiers["dram"]["label"] == "dram (pageable)"
    nvme = info["environment"]["nvme"]
    assert nvme["fs_type"] and nvme["block_device"]["disk"]
    assert tiers["nvme"]["available"]


def test_info_model_table():
    r = kvbench("info", "--model", "Llama-3.1-8B")
    assert r.returncode == 0, r.stderr
    for text in ("131,072", "36,864", "nvfp4", "GiB / 1M", "hbm"):
        assert text in r.stdout


def test_run_roundtrip_writes_valid_result(tmp_path):
    out = tmp_path / "r.json"
    r = kvbench("run", "--quick", "--bench", "roundtrip", "--no-progress", "-o", str(out),
                "--nvme-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = load(out)
    assert d["run"]["status"] == "complete"
    statuses = {c["name"]: c["status"] for c in d["cases"]}
    assert statuses["dram<->nvme/layer"] == "ok" and statuses["dram<->nvme/block"] == "ok"
    for c in d["cases"]:
        if c["status"] == "skipped":
            assert c["reason"]
    assert "ok," in r.stdout and f"result: {out}" in r.stdout.replace("\n", "")  # summary: stdout
    assert "ok," not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_list_benches():
    assert main(["run", "--list"]) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_temp_files_and_no_half_json(tmp_path, sig):
    out = tmp_path / "r.json"
    nv = tmp_path / "nvme"
    nv.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "roundtrip", "--layout", "layer",
         "--set", "roundtrip.pages=20000", "-o", str(out), "--nvme-dir", str(nv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(nv.iterdir()):
        time.sleep(0.05)  # wait until the run has created its files
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert "Traceback" not in err
    # 128 + signal number, as shells and `timeout` expect (0: it finished first)
    assert p.returncode in ({signal.SIGINT: 130, signal.SIGTERM: 143}[sig], 0), err
    assert list(nv.iterdir()) == []                       # nvme files removed
    assert [x.name for x in tmp_path.iterdir() if x.name != "nvme"] in ([], ["r.json"])
    if out.exists():                                      # never half-written
        assert load(out)["run"]["status"] in ("interrupted", "complete")


def test_full_disk_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from kvbench.tiers.nvme import NvmeTier

    monkeypatch.setattr(NvmeTier, "free_bytes", lambda self: 0)
    assert main(["run", "--bench", "roundtrip", "--nvme-dir", str(tmp_path), "-o",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full disk" in err[0]
    assert list(tmp_path.iterdir()) == []
