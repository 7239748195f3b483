"""Measured mode: assumptions replaced by figures from result files.

The result documents here are TEST INPUT built with kvbench.results.make_case (invented
figures, not measurements); they follow the result-file conventions of the transfer,
decode and prefix benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from kvbench.results import SCHEMA, make_case, write_atomic
from kvbench.sizing.cli import add_parser, run
from kvbench.sizing.measured import measure, tier_bandwidths
from kvbench.sizing.scenario import load_scenario

REF = "ms-chatgpt-2026"
H200_BYTES = 150_754_820_096  # what an H200 reports as memory_total (test input)


def result_doc(cases, gpus):
    return {
        "schema": SCHEMA,
        "run": {"id": "test", "started_utc": "2026-01-01T00:00:00Z", "status": "ok",
                "kvbench_version": "0.1.0", "mode": "quick"},
        "environment": {"host": {"name": "test"}, "software": {}, "gpus": gpus},
        "method": {"timer": "test", "units": {}},
        "cases": cases,
    }


def transfer(direction, gbps, *, model="ms-reference", fmt="fp16", layout="layer", state=None,
             kind="paged", page_bytes=None):
    src, dst = direction.split("->")
    cfg = {"src": src, "dst": dst, "direction": direction, "method": "batched", "format": fmt,
           "tokens_per_page": 16, "layout": layout, "kind": kind, "model": model,
           "page_bytes": page_bytes if page_bytes is not None else 16 * 2 * 8 * 128 * 2}
    if state:
        cfg["cache_state"] = state
    return make_case("transfer", f"{direction}/{state or 'x'}/{model}", cfg,
                     metrics={"gbps": gbps}, units={"gbps": "GB/s"})


def decode(placement, kv_read_gbps, *, model="ms-reference", fmt="fp16"):
    cfg = {"placement": placement, "format": fmt, "batch": 64, "context": 4096, "model": model,
           "fused": True}
    return make_case("decode", f"{placement}/{fmt}", cfg,
                     metrics={"tok_s": 1000.0, "step_s": 0.064, "kv_read_gbps": kv_read_gbps})


def prefix(source, **metrics):
    cfg = {"prefix_tokens": 4096, "source": source, "model": "ms-reference", "format": "fp16"}
    return make_case("prefix", f"{source}/4096", cfg, metrics=metrics)


@pytest.fixture
def gpu_result(tmp_path):
    cases = [
        transfer("dram->hbm", 50.0),
        transfer("nvme->dram", 6.0, state="cold"),
        transfer("nvme->dram", 20.0, state="warm"),
        decode("hbm", 3000.0),
        decode("hot_window", 400.0),
        prefix("dram", load_s=0.04),
        prefix("nvme", load_s=0.3),
        prefix("recompute", recompute_s=0.2, prefill_tok_s=20480.0),
        make_case("decode", "nvme/fp16", {"placement": "nvme", "format": "fp16"},
                  status="skipped", reason="no NVMe"),
    ]
    path = tmp_path / "gpu.json"
    write_atomic(path, result_doc(cases, [{"name": "NVIDIA H200", "memory_total_bytes": H200_BYTES}]))
    return str(path)


def by_quantity(m):
    return {r.quantity.split(" (")[0]: r for r in m.replacements}


def test_measured_replacements(gpu_result):
    scn = load_scenario(REF)
    m = measure(scn, [gpu_result])
    reps = by_quantity(m)
    # KV bytes/token from the page size the transfer bench stored
    kv = reps["KV bytes/token"]
    assert kv.measured == "393,216 B" and "gpu.json: transfer/dram->hbm" in kv.source
    # HBM per GPU from the result's environment, side by side with the assumption
    hbm = reps["HBM per GPU"]
    assert "288 GB" in hbm.assumption and "140.4 GiB" in hbm.measured
    assert m.sizing.scenario.fleet.hbm_per_gpu_bytes == H200_BYTES
    assert reps["hot window that fits in HBM"].measured == "0 tokens"  # weights exceed HBM
    # decode capacity: 400 GB/s / (60 tok/s x 6,333.5 tok x 393,216 B) sequences per GPU
    row = next(r for r in m.capacity if r.selected)
    assert row.placement == "hot_window"
    per_gpu = 400e9 / (60 * (6000 + 667 / 2) * 393_216)
    assert row.seqs_per_gpu == pytest.approx(per_gpu)
    assert row.gpus_needed == pytest.approx(1_500_000 / per_gpu)
    assert "decode/hot_window" in row.source
    # reuse: a 6,000-token prefix; times scale by bytes from the 4,096-token cases
    t = {r.path: r for r in m.reuse}
    assert t["dram"].seconds == pytest.approx(0.04 * 6000 / 4096)
    assert t["nvme"].seconds == pytest.approx(0.3 * 6000 / 4096)
    assert t["recompute"].seconds == pytest.approx(6000 / 20480)
    assert all(r.within_ttft for r in m.reuse)
    # both tiers meet TTFT 1 s; no NVMe price -> NVMe assumed cheaper: all reuse on NVMe
    assert reps["reuse split DRAM / NVMe"].measured == "0 / 1"
    assert m.sizing.item("reuse_dram").bytes == 0
    assert m.sizing.item("reuse_nvme").bytes == pytest.approx(m.assumed.q("reuse_kv_bytes"))
    assert reps["cost, DRAM"].assumption != reps["cost, DRAM"].measured
    assert m.missing == []


def test_slow_nvme_keeps_reuse_in_dram(tmp_path):
    cases = [transfer("dram->hbm", 50.0), prefix("dram", load_s=0.04), prefix("nvme", load_s=2.0)]
    path = tmp_path / "slow.json"
    write_atomic(path, result_doc(cases, []))
    m = measure(load_scenario(REF), [str(path)])
    assert {r.path: r.within_ttft for r in m.reuse} == {"dram": True, "nvme": False}
    assert by_quantity(m)["reuse split DRAM / NVMe"].measured == "1 / 0"
    assert "NVMe too slow" in m.reuse_verdict
    assert any("--bench prefix" in x.how for x in m.missing)  # recompute not measured


def test_other_model_is_scaled_and_said(tmp_path):
    # an 8B-model page (32 layers) in fp16, with 2% padding in the page
    page = int(16 * 2 * 8 * 128 * 2 * 1.02)
    cases = [transfer("dram->hbm", 50.0, model="Llama-3.1-8B", page_bytes=page),
             decode("hbm", 3000.0, model="Llama-3.1-8B", fmt="fp8_e4m3")]
    path = tmp_path / "other.json"
    write_atomic(path, result_doc(cases, []))
    m = measure(load_scenario(REF), [str(path)])
    kv = by_quantity(m)["KV bytes/token"]
    assert "scaled" in kv.note and "Llama-3.1-8B" in kv.note
    assert m.sizing.q("kv_bytes_per_token") == pytest.approx(393_216 * page / (16 * 2 * 8 * 128 * 2), rel=1e-6)
    row = m.capacity[0]
    assert "format fp8_e4m3, not fp16" in row.note and "Llama-3.1-8B" in row.note
    assert any("hot_window" in x.quantity for x in m.missing)  # scenario placement not measured


def test_cpu_only_result_says_what_to_run(tmp_path):
    cases = [transfer("nvme->dram", 6.0, state="cold", fmt="fp16")]
    path = tmp_path / "cpu.json"
    write_atomic(path, result_doc(cases, []))
    m = measure(load_scenario("llama-3.1-70b-fp8-chat"), [str(path)])
    how = {x.quantity: x.how for x in m.missing}
    assert "kvbench run --bench transfer" in how["KV bytes/token (fp8_e4m3)"]  # no fp8 page
    assert "GPU" in how["HBM per GPU"]
    assert "kvbench run --bench decode" in how["decode capacity (KV-read GB/s per placement)"]
    nvme = next(r for r in m.reuse if r.path == "nvme")
    assert nvme.lower_bound and nvme.seconds == pytest.approx(1500 * 163_840 / 6e9)
    assert m.sizing.totals_bytes["hbm"] == m.assumed.totals_bytes["hbm"]


def test_tier_bandwidth_prefers_cold_nvme_and_paged(gpu_result, tmp_path):
    from kvbench.results import load

    docs = [(gpu_result, load(gpu_result))]
    bw = tier_bandwidths(docs)
    assert bw["nvme->dram"][0] == 6.0 and "cold" in bw["nvme->dram"][1]
    assert bw["dram->hbm"][0] == 50.0
    doc = result_doc([transfer("dram->hbm", 60.0, kind="ceiling")], [])
    assert tier_bandwidths([("c.json", doc)]) == {}


def test_cli_measured_json(gpu_result, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    parser = argparse.ArgumentParser(prog="kvbench")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "m.json"
    args = parser.parse_args(["size", "--scenario", REF, "--results", gpu_result, "--json", str(out),
                              "--sweep", "hot_window=256,1024"])
    assert run(args) == 0
    text = capsys.readouterr().out
    assert "Measured replacements" in text and "gpu.json: environment.gpus[0]" in text
    doc = json.loads(out.read_text())
    assert doc["measured"]["missing"] == []
    assert doc["measured"]["sizing"]["line_items"][5]["id"] == "reuse_dram"
    assert {r["quantity"] for r in doc["measured"]["replacements"]} >= {"HBM per GPU"}
    assert len(doc["sweep"]["rows"]) == 2


def test_measured_does_not_change_scenario(gpu_result):
    scn = load_scenario(REF)
    before = dataclasses.asdict(scn)
    measure(scn, [gpu_result])
    assert dataclasses.asdict(scn) == before


def test_measured_mode_on_the_committed_cpu_result():
    """Measured mode on a real result file: results/cpu-fallback-ci-vm.json, written by
    `kvbench run` on this project's CPU-only CI machine (no GPU numbers in it)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    result = Path(__file__).resolve().parent.parent / "results" / "cpu-fallback-ci-vm.json"
    r = subprocess.run([sys.executable, "-m", "kvbench", "size", "--scenario", "llama-3.1-70b-fp8-chat",
                        "--results", str(result), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["measured"]
    sources = " ".join(x["source"] for x in m["replacements"])
    assert "cpu-fallback-ci-vm.json" in sources
    # the CPU file has no GPU: what needs one is listed as missing, with the bench to run
    missing = " ".join(str(x) for x in m["missing"])
    assert "HBM per GPU" in missing and "kvbench run" in missing
