"""`kvbench claims`: the claims file, every check's verdict without results, on the committed
CPU result, and on small synthetic GPU documents (test fixtures: hand-written cases that
exercise the GPU branches, not measurements), bad input, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvbench.claims.catalog import claims_from_dict, claims_path, load_claims
from kvbench.claims.checks import CHECKS
from kvbench.claims.core import HOW, VERDICTS
from kvbench.cli import main
from kvbench.errors import KvbenchError
from kvbench.results import load, make_case
from kvbench.sizing.model import compute
from kvbench.sizing.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
CPU = str(ROOT / "results" / "cpu-fallback-ci-vm.json")
FILE_READS = str(ROOT / "results" / "cpu-ci-vm-file-reads.json")
IDS = ["hot-window", "dequant-share", "ssd-per-gpu", "deepseek-v4-kv", "output-token-cost", "fleet-totals"]


def run_json(capsys, *args) -> dict:
    rc = main(["claims", *args, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return {c["id"]: c for c in json.loads(out)["claims"]}


def error_line(capsys, *args) -> str:
    rc = main(["claims", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("kvbench: error: ")
    return err[0]


def figure(claim: dict, what: str) -> dict:
    return next(f for f in claim["figures"] if f["what"].startswith(what))


# ------------------------------------------------------------------ the claims file
def test_claims_file_holds_the_six_claims():
    claims = load_claims()
    assert [c.id for c in claims] == IDS
    assert all(c.check in CHECKS and c.quote and c.source and c.confirms and c.refutes for c in claims)
    ratio = next(c for c in claims if c.id == "deepseek-v4-kv")
    assert ratio.params["claimed_fractions"] == {"DeepSeek-V4-Pro": 0.10, "DeepSeek-V4-Flash": 0.07}


def test_list_prints_every_id(capsys):
    assert main(["claims", "--list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == IDS


# ------------------------------------------------------------------ without results
def test_without_results_arithmetic_only(capsys):
    got = run_json(capsys)
    assert list(got) == IDS
    assert {i: c["verdict"] for i, c in got.items()} == {
        "hot-window": "not settled", "dequant-share": "not measured", "ssd-per-gpu": "confirmed",
        "deepseek-v4-kv": "confirmed", "output-token-cost": "not measured", "fleet-totals": "partly"}
    for c in got.values():
        assert c["verdict"] in VERDICTS and c["reason"]
        for f in c["figures"]:
            assert f["how"] in HOW and f["how"] != "measured"
            if f["how"] == "not measured":
                assert f["basis"].startswith("not measured here: run `kvbench run ")


def test_deepseek_ratios_from_the_model_shapes(capsys):
    c = run_json(capsys, "--claim", "deepseek-v4-kv")["deepseek-v4-kv"]
    shipped = [f["data"] for f in c["figures"] if f["data"]["format"] == "shipped"]
    assert [round(d["ratio"], 5) for d in shipped] == [0.10516, 0.07343]
    assert shipped[0]["base_bytes"] == 48_068_000_000  # kvbench info --model DeepSeek-V3.2 --context 1000000


def test_fleet_totals_reproduce_and_correct(capsys):
    c = run_json(capsys, "--claim", "fleet-totals")["fleet-totals"]
    assert figure(c, "published rows reproduced")["data"]["matched"] == 14
    sz = compute(load_scenario("ms-chatgpt-2026"))
    hbm = figure(c, "HBM total")["data"]
    assert hbm["corrected_bytes"] == pytest.approx(sz.corrected_totals_bytes["hbm"])
    assert hbm["corrected_bytes"] == pytest.approx(205_811 * 2**40, rel=1e-5)  # 226 PB
    assert hbm["source_units_bytes"] == pytest.approx(205_811e12, rel=1e-5)  # "~200 PB"
    assert "datalake" in c["reason"] and "matches neither" in c["reason"]


def test_a_scenario_that_cannot_hold_its_weights_does_not_settle_the_window(capsys):
    hw = run_json(capsys, "--claim", "hot-window")["hot-window"]
    assert hw["verdict"] == "not settled" and "cannot hold its own weights" in hw["reason"]
    assert "try --scenario llama-3.1-70b-fp8-chat" in hw["reason"]


def test_hot_window_fits_in_another_scenario(capsys):
    c = run_json(capsys, "--claim", "hot-window,fleet-totals", "--scenario", "llama-3.1-70b-fp8-chat")
    hw = c["hot-window"]
    assert hw["verdict"] == "not measured" and "every window fits" in hw["reason"]
    assert all(f["data"]["fits"] for f in hw["figures"] if "window_tokens" in f["data"])
    assert c["fleet-totals"]["verdict"] == "partly"  # the source's scenario, whatever --scenario says
    assert any("not applied" in n for n in c["fleet-totals"]["notes"])


# ------------------------------------------------------------------ the committed CPU result
def test_cpu_result_verdicts(capsys):
    got = run_json(capsys, "--results", CPU)
    doc = load(CPU)
    cost = got["output-token-cost"]
    assert cost["verdict"] == "not settled"
    assert "does not speak for a GPU" in cost["reason"] and "torch built without CUDA" in cost["reason"]
    step = next(c for c in doc["cases"] if c["name"] == "dram/fp16/2x512/cpu-reference")["metrics"]["step_s"]
    prefill = next(c for c in doc["cases"] if c["name"] == "512tok/recompute")["metrics"]["recompute_s"]
    ratio = figure(cost, "output token / prompt token")["data"]
    assert ratio["ratio"] == pytest.approx((step / 2) / (prefill / 512)) and ratio["lower_bound"]
    assert all(f["how"] == "measured" for f in cost["figures"])

    ssd = got["ssd-per-gpu"]
    cold = [c["metrics"]["gbps"] for c in doc["cases"] if c["bench"] == "transfer" and c["status"] == "ok"
            and c["config"].get("kind") == "paged" and c["config"].get("direction") == "nvme->dram"
            and c["config"].get("cache_state") == "cold"]
    back = figure(ssd, "time to read")
    assert back["how"] == "measured" and back["data"]["gbps"] == max(cold)
    assert back["data"]["seconds"] == pytest.approx(16e12 / (max(cold) * 1e9))
    assert ssd["verdict"] == "confirmed" and "no GPU" in back["basis"]

    hot = figure(got["hot-window"], "decode tok/s")
    assert hot["how"] == "not measured" and "skipped decode/hot_window/*" in hot["basis"]
    assert "needs a CUDA device" in hot["basis"] and got["hot-window"]["verdict"] == "not settled"
    dq = got["dequant-share"]
    assert dq["verdict"] == "not measured" and "--cases '^hbm/'" in dq["figures"][0]["basis"]
    assert got["deepseek-v4-kv"]["verdict"] == "confirmed" and got["fleet-totals"]["verdict"] == "partly"


def test_tables_with_both_committed_results(capsys):
    assert main(["claims", "--results", CPU, FILE_READS]) == 0
    out = capsys.readouterr().out
    for cid in IDS:
        assert f"{cid}:" in out
    assert out.count("verdict: ") == len(IDS) and "not measured here: run `kvbench run" in out
    assert "measured" in out and "GB = 1e9 B" in out


def test_json_file_written(tmp_path, capsys):
    path = tmp_path / "claims.json"
    assert main(["claims", "--results", CPU, "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert doc["schema"] == "kvbench.claims.report/1" and len(doc["claims"]) == len(IDS)
    assert doc["results"][0]["hardware"].startswith("CPU ")


# ------------------------------------------------------------------ GPU branches (fixtures)
def _doc(cases: list[dict]) -> dict:
    """A minimal valid result document of a GPU machine holding ``cases`` (a test fixture)."""
    return {"schema": "kvbench.result/1",
            "run": {"id": "t", "started_utc": "2026-01-01T00:00:00+00:00", "status": "complete",
                    "kvbench_version": "0", "mode": "gpu"},
            "environment": {"host": {"cpu_model": "x"}, "software": {},
                            "gpus": [{"name": "Test GPU", "memory_total_bytes": 141e9}]},
            "method": {"timer": "t", "units": {}}, "cases": cases}


def _decode(name: str, placement: str, fmt: str, batch: int, context: int, fused: bool = True, **metrics):
    cfg = {"kind": "decode", "placement": placement, "format": fmt, "batch": batch, "context": context,
           "fused": fused, "device": "cuda", "hot_window_tokens": 1024 if placement == "hot_window" else None}
    return make_case("decode", name, cfg, metrics=metrics)


def _write(tmp_path, cases) -> str:
    p = tmp_path / "gpu.json"
    p.write_text(json.dumps(_doc(cases)))
    return str(p)


@pytest.mark.parametrize("share,verdict", [(0.85, "confirmed"), (0.6, "partly"), (0.3, "refuted")])
def test_dequant_verdicts_on_gpu(tmp_path, capsys, share, verdict):
    path = _write(tmp_path, [
        _decode("hbm/nvfp4/64x8192/unfused", "hbm", "nvfp4", 64, 8192, False, tok_s=100.0, dequant_share=share),
        _decode("hbm/nvfp4/64x8192", "hbm", "nvfp4", 64, 8192, tok_s=300.0, pct_of_roofline=80.0)])
    c = run_json(capsys, "--claim", "dequant-share", "--results", path)["dequant-share"]
    assert c["verdict"] == verdict and "Test GPU" in c["reason"]
    assert figure(c, "fused kernel")["data"]["overhead_min"] == pytest.approx(0.25)  # 100 / 80 - 1


@pytest.mark.parametrize("hot_rate,verdict", [(600.0, "confirmed"), (300.0, "partly")])
def test_hot_window_decode_rate_on_gpu(tmp_path, capsys, hot_rate, verdict):
    path = _write(tmp_path, [_decode("hbm/fp16/8x8192", "hbm", "fp16", 8, 8192, tok_s=1000.0),
                             _decode("hot_window/fp16/8x8192", "hot_window", "fp16", 8, 8192, tok_s=hot_rate)])
    c = run_json(capsys, "--claim", "hot-window", "--results", path, "--scenario",
                 "llama-3.1-70b-fp8-chat")["hot-window"]
    assert c["verdict"] == verdict
    assert figure(c, "decode tok/s")["data"]["ratio"] == pytest.approx(hot_rate / 1000.0)


@pytest.mark.parametrize("tpot_s,shrunk,verdict", [(0.02, False, "confirmed"), (0.02, True, "not settled"),
                                                    (0.0012, False, "refuted")])
def test_token_cost_from_e2e_on_gpu(tmp_path, capsys, tpot_s, shrunk, verdict):
    cfg = {"cache": "dynamic", "batch": 4, "prompt_tokens": 1000, "device": "cuda", "shrunk": shrunk}
    path = _write(tmp_path, [make_case("e2e", "dynamic", cfg, metrics={"tpot_s": tpot_s, "ttft_s": 0.4})])
    c = run_json(capsys, "--claim", "output-token-cost", "--results", path)["output-token-cost"]
    assert c["verdict"] == verdict
    ratio = figure(c, "output token / prompt token")["data"]
    assert ratio["ratio"] == pytest.approx((tpot_s / 4) / (0.4 / 4000)) and not ratio["lower_bound"]


@pytest.mark.parametrize("step_s,verdict", [(0.08, "confirmed"), (0.002, "not settled")])
def test_token_cost_lower_bound_on_gpu(tmp_path, capsys, step_s, verdict):
    """decode with prefix: a lower bound decides only when it already reaches the claim."""
    prefix = make_case("prefix", "1024tok/recompute", {"source": "recompute", "prefix_tokens": 1024,
                                                       "device": "cuda"}, metrics={"recompute_s": 0.1})
    path = _write(tmp_path, [_decode("hbm/fp16/8x1024", "hbm", "fp16", 8, 1024, tok_s=8 / step_s, step_s=step_s),
                             prefix])
    c = run_json(capsys, "--claim", "output-token-cost", "--results", path)["output-token-cost"]
    assert c["verdict"] == verdict
    assert figure(c, "output token / prompt token")["data"]["ratio"] == pytest.approx((step_s / 8) / (0.1 / 1024))


# ------------------------------------------------------------------ bad input
def test_unknown_claim_id(capsys):
    assert "unknown claim 'nope'; known: hot-window" in error_line(capsys, "--claim", "nope")


def test_missing_and_corrupt_results(tmp_path, capsys):
    assert "no such result file" in error_line(capsys, "--results", str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "kvbench.result/1", "run": {')
    assert "not valid JSON" in error_line(capsys, "--results", str(bad))


def test_bad_scenario(capsys):
    assert "unknown scenario 'nope'" in error_line(capsys, "--scenario", "nope")


def _claims_yaml(tmp_path, mutate) -> str:
    data = yaml.safe_load(claims_path().read_text())
    mutate(data)
    p = tmp_path / "claims.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["claims"][0].update(check="nope"), "unknown check 'nope'"),
    (lambda d: d["claims"][0]["params"].pop("windows_tokens"), "params.windows_tokens is missing"),
    (lambda d: d["claims"][0]["params"].update(windows_tokens="256"), "must be a list of positive numbers"),
    (lambda d: d["claims"][5]["params"]["claimed"].update(hbm="200 PiB"), "params.claimed must be a mapping"),
    (lambda d: d["claims"][1].update(id="hot-window"), "id 'hot-window' is given twice"),
    (lambda d: d["claims"][2].pop("quote"), "field quote must be a non-empty string"),
    (lambda d: d.update(schema="other/1"), "schema must be kvbench.claims/1"),
    (lambda d: d["claims"][3]["params"].update(extra=1), "params.extra is not a parameter of check kv_ratio"),
])
def test_malformed_claims_file(tmp_path, capsys, mutate, message):
    assert message in error_line(capsys, "--claims-file", _claims_yaml(tmp_path, mutate))


def test_claims_file_not_yaml_or_missing(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("claims: [\n")
    assert "not valid YAML" in error_line(capsys, "--claims-file", str(p))
    assert "no such file" in error_line(capsys, "--claims-file", str(tmp_path / "none.yaml"))


def test_a_model_that_does_not_load_names_its_claim(tmp_path, capsys):
    path = _claims_yaml(tmp_path, lambda d: d["claims"][3]["params"].update(base="NoSuchModel"))
    assert "claim deepseek-v4-kv: " in error_line(capsys, "--claims-file", path, "--claim", "deepseek-v4-kv")


def test_claims_from_dict_needs_a_mapping():
    with pytest.raises(KvbenchError, match="top level is not a mapping"):
        claims_from_dict([1])


# ------------------------------------------------------------------ no torch
def test_no_torch_import():
    code = ("import sys, contextlib, io\nfrom kvbench.cli import main\nimport kvbench.claims\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['claims', '--results', {CPU!r}, {FILE_READS!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
