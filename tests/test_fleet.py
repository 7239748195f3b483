"""Fleet runs: `kvbench run --ranks 2 --fleet` runs the local benchmarks on both gloo ranks
at once, rank 0 gathers one result per rank and writes one fleet result (every rank's
cases under rank<r>/, their environments, the spread of each headline figure), which
`kvbench compare` puts side by side; bad fleet input in one line; no stray files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvbench.results import SCHEMA, make_case



def _doc(rank: int, gbps: float) -> dict:
    case = make_case("transfer", "dram->nvme/layer/fp16/16tok/buffered", {"kind": "paged"},
                     samples={"gbps": [gbps, gbps * 1.01, gbps * 0.99]}, units={"gbps": "GB/s"})
    skipped = make_case("transfer", "dram->hbm/*", {}, status="skipped", reason="no CUDA")
    return {"schema": SCHEMA, "run": {"id": f"r{rank}", "status": "complete", "started_utc": "t",
                                      "kvbench_version": "0.1.0", "mode": "cpu-fallback"},
            "environment": {"host": {"name": f"h{rank}"}, "software": {}},
            "method": {"timer": "host", "units": {}}, "cases": [case, skipped]}


def test_fleet_doc_holds_every_rank_and_the_spread():
    from kvbench.fleet import fleet_doc, fleet_wait_s
    from kvbench.report.fleet import expand, spread_table
    from kvbench.results import validate

    block = {"ranks": [{"rank": 0, "hostname": "a", "gpu": None}, {"rank": 1, "hostname": "b", "gpu": None},
                       {"rank": 2, "hostname": "b", "gpu": None}]}
    payloads = [{"rank": 0, "code": 0, "doc": _doc(0, 2.0)}, {"rank": 1, "code": 0, "doc": _doc(1, 3.0)},
                {"rank": 2, "code": 2, "error": "rank 2: --set x=y: bad"}]
    doc = validate(fleet_doc(payloads, block))
    assert doc["run"]["status"] == "failed" and doc["run"]["id"] not in ("r0", "r1")
    assert [c["name"] for c in doc["cases"]][:2] == ["rank0/dram->nvme/layer/fp16/16tok/buffered", "rank0/dram->hbm/*"]
    assert {c["config"]["rank"] for c in doc["cases"]} == {0, 1} and doc["cases"][2]["config"]["host"] == "b"
    ranks = doc["fleet"]["ranks"]
    assert [(r["rank"], r["status"]) for r in ranks] == [(0, "ok"), (1, "ok"), (2, "failed")]
    assert ranks[2]["error"] == "rank 2: --set x=y: bad" and ranks[1]["environment"]["host"]["name"] == "h1"
    assert doc["fleet"]["shared_hosts"] == {"b": 2} and "contend" in doc["fleet"]["note"]
    (row,) = doc["fleet"]["spread"]  # the skipped case has no figure
    assert row["values"] == {"0": 2.0, "1": 3.0} and row["metric"] == "gbps" and row["unit"] == "GB/s"
    assert row["spread_pct"] == pytest.approx(100 * (3 - 2) / 2.5)
    t = spread_table(doc)
    assert t.columns[2:5] == ["rank 0", "rank 1", "rank 2"] and t.rows[0][4] == "-" and t.rows[0][-1] == "40%"
    per_rank, labels = expand([doc], ["f.json"])
    assert labels == ["f.json#rank0", "f.json#rank1"]  # rank 2 produced no result
    assert [c["name"] for c in per_rank[1]["cases"]] == ["dram->nvme/layer/fp16/16tok/buffered", "dram->hbm/*"]
    assert per_rank[1]["environment"]["host"]["name"] == "h1"
    assert expand([doc, doc], ["a", "b"]) == ([doc, doc], ["a", "b"])  # two fleets: matched by rank<r>/ names
    assert fleet_wait_s(60, 10) == 120 and fleet_wait_s(60, 100) == 260


def test_a_two_rank_fleet_run_and_its_compare(isolated_cli):
    work = isolated_cli.work
    p = isolated_cli(["run", "--ranks", "2", "--fleet", "--bench", "roundtrip", "--quick", "--format", "fp16",
                      "--layout", "layer", "--no-progress", "--set", "roundtrip.pages=8", "-o", "f.json"])
    assert p.returncode == 0, p.stderr
    assert "rank 0: " in p.stdout and "rank 1: " in p.stdout and "result: f.json" in p.stdout
    doc = json.loads((work / "f.json").read_text())
    assert doc["run"]["status"] == "complete" and doc["environment"]["distributed"]["world_size"] == 2
    assert doc["run"]["command"][:6] == ["kvbench", "run", "--ranks", "2", "--fleet", "--bench"]
    ok = {c["name"] for c in doc["cases"] if c["status"] == "ok"}
    assert {"rank0/dram<->nvme/layer", "rank1/dram<->nvme/layer"} <= ok
    pids = {r["run"]["writer"]["pid"] for r in doc["fleet"]["ranks"]}
    assert len(pids) == 2 and [r["status"] for r in doc["fleet"]["ranks"]] == ["ok", "ok"]
    assert any(row["name"] == "dram<->nvme/layer" and set(row["values"]) == {"0", "1"}
               for row in doc["fleet"]["spread"])
    c = isolated_cli(["compare", "f.json"])
    assert c.returncode == 0, c.stderr
    assert "f.json#rank0" in c.stdout and "f.json#rank1" in c.stdout and "Fleet spread" in c.stdout
    assert sorted(x.name for x in work.iterdir()) == ["f.json"] and list(isolated_cli.tmp.iterdir()) == []


def test_a_killed_fleet_rank_is_reported_and_the_others_results_kept(isolated_cli):
    """Rank 1 killed mid-run: rank 0 finishes its own benchmarks, writes the fleet result
    with rank 1 failed and why, exits 1; what the killed rank left in TMPDIR is removed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    work, tmp = isolated_cli.work, isolated_cli.tmp
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("KVBENCH_NVME_DIR", None)
    p = subprocess.Popen([sys.executable, "-m", "kvbench", "run", "--ranks", "2", "--fleet", "--bench", "soak",
                          "--quick", "--format", "fp16", "--no-progress", "--set", "soak.pages=4000",
                          "--dist-timeout", "3", "-o", "f.json"], cwd=work, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline, folder = time.monotonic() + 60, None
    while folder is None and time.monotonic() < deadline:  # rank 1 is running its benchmarks
        folder = next((x for x in tmp.iterdir() if x.name.startswith("kvbench-fleet-rank1-")), None)
        time.sleep(0.02)
    assert folder is not None, "rank 1 never started its benchmarks"
    pid = int(folder.name.split("-")[3])
    os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, err
    assert f"rank 1 (pid {pid}) was killed by SIGKILL" in err and "Traceback" not in err
    doc = json.loads((work / "f.json").read_text())
    ranks = doc["fleet"]["ranks"]
    assert [r["status"] for r in ranks] == ["ok", "failed"]
    assert ranks[1]["error"] == f"rank 1 (pid {pid}) was killed by SIGKILL"
    assert any(c["name"].startswith("rank0/") and c["status"] == "ok" for c in doc["cases"])
    assert not any(c["name"].startswith("rank1/") for c in doc["cases"])
    assert sorted(x.name for x in work.iterdir()) == ["f.json"] and list(tmp.iterdir()) == []


@pytest.mark.parametrize("args,says", [
    (["--fleet", "--bench", "roundtrip"], "--fleet runs the local benchmarks on every rank of a launch: give --ranks"),
    (["--ranks", "2", "--fleet", "--bench", "remote"], "remote needs the other ranks to serve it"),
    (["--ranks", "2", "--fleet", "--bench", "roundtrip", "--dry-run"], "--fleet --dry-run"),
])
def test_bad_fleet_input_exits_2_in_one_line(args, says, capsys):
    from kvbench.cli import main

    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err, err
