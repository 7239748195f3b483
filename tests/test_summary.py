"""The summary ``kvbench run`` prints: readable at 80 columns, on stdout with the
result path; ``--quiet`` prints only the path; flags are marked and counted.

Documents here are test input built with make_case from made-up samples."""

from __future__ import annotations

import os
import subprocess
import sys

from kvbench.results import make_case, skipped_case


def _doc(*cases):
    return {"run": {"mode": "cpu-fallback", "id": "x", "status": "complete"}, "environment": {},
            "cases": list(cases)}


def _text(doc, width=80):
    from rich.console import Console

    from kvbench.report.summary import print_summary

    con = Console(record=True, width=width)
    print_summary(doc, con)
    return con.export_text()


def test_flagged_cases_are_marked_and_counted():
    case = make_case("transfer", "w", {"kind": "paged"}, samples={"gbps": [2.0]})
    case["flags"] = ["above_ceiling"]
    text = _text(_doc(case))
    assert "ok^" in text and "^ = above_ceiling" in text and "1 above_ceiling" in text


def test_paired_intervals_and_unstable_count():
    case = make_case("transfer", "u", {"kind": "paged"}, samples={"gbps": [2.0, 2.1]},
                     metrics={"pct_of_ceiling": 88.0})
    case["paired"] = {"pct_of_ceiling": {"median": 88.0, "ci_low": 80.0, "ci_high": 95.0}}
    case["flags"] = ["unstable"]
    text = _text(_doc(case))
    assert "88% [80-95]" in text and "ok*" in text and "1 unstable" in text


def test_80_columns_keep_every_column_readable():
    long = "nvme->dram/layer/fp16/16tok/odirect_merged/qd64/cold"
    case = make_case("transfer", long, {"kind": "paged"}, samples={"gbps": [2.097e6, 2.1e6]},
                     units={"gbps": "GB/s"})
    skipped = skipped_case("decode", "hbm/*", {"kind": "decode"}, "needs a CUDA device (none here)")
    text = _text(_doc(case, skipped), width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "2.1M GB/s" in text  # the median whole, not cut to "2.0"
    assert "odirect_merged" in text.replace("\n", "")  # the case name wraps, not collapses
    assert "skipped (1): needs a CUDA device (none here): decode/hbm/*" in text.replace("\n", " ").replace("  ", " ") \
        or "needs a CUDA device" in text


def test_run_prints_summary_on_stdout_and_quiet_prints_only_the_path(tmp_path):
    env = {**os.environ, "COLUMNS": "80", "TRITON_INTERPRET": "1"}
    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "kvbench", "run", "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
            "-o", str(out)]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "roundtrip" in r.stdout and f"result: {out}" in r.stdout.replace("\n", "")
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "dram<->nvme/layer" in r.stdout
    out.unlink()
    r = subprocess.run([*args, "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n" and out.exists()


def test_short_figures_keep_their_magnitude():
    from kvbench.report.numbers import fmt_short

    assert [fmt_short(v) for v in (9999, 20000, 100000, 13600, 2.097e6, 0.53)] == \
        ["9999", "20k", "100k", "13.6k", "2.1M", "0.53"]
