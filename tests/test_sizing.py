"""The sizing model: reproduction of the published breakdown, lint, measured mode, sweeps,
units, bad input and the `size` command. Pure arithmetic; no GPU, no torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvbench.errors import KvbenchError
from kvbench.sizing.cli import add_parser, main, run
from kvbench.sizing.lint import lint
from kvbench.sizing.model import compute, published_comparison
from kvbench.sizing.scenario import LINE_IDS, SIZE_UNITS, load_scenario, scenario_from_dict, scenarios_dir
from kvbench.sizing.sweep import parse_sweep, run_sweep
from kvbench.units import TiB

REF = "ms-chatgpt-2026"

#: Exhibit 11 of the published model (shared/reference/tiered-memory-reference.md), TiB.
#: Written out here, not read from the scenario, so the test checks the scenario too.
PUBLISHED_TIB = {
    "live_kv_hot": 330,
    "live_kv_warm": 330,
    "reuse_dram": 4_169_941,
    "reuse_nvme": 6_254_911,
    "gpu_overheads": 18_750,
    "weights": 186_731,
    "rack_ssd_caches": 36_379_788,
    "host_state": 0,
    "live_kv_offload": 0,
}
#: tiers by kvbench's names: the source's "rack SSD" is nvme, its "datalake" remote
PUBLISHED_TOTALS_TIB = {"hbm": 226_291, "dram": 4_585_261, "nvme": 46_877_348, "remote": 293_556_000}


def close(ours: float, published: float) -> bool:
    """Within 0.1%, or equal at the source's printed precision (whole TiB): the live KV rows
    are 329.59 TiB, printed as 330 (0.12% apart)."""
    return round(ours) == published or abs(ours - published) <= 1e-3 * published


@pytest.fixture(scope="module")
def ref():
    return compute(load_scenario(REF))


def ref_dict() -> dict:
    return yaml.safe_load((scenarios_dir() / f"{REF}.yaml").read_text())


# ------------------------------------------------------------------ reproduction
def test_reference_reproduces_every_published_line(ref):
    for key, pub in PUBLISHED_TIB.items():
        assert close(ref.item(key).tib, pub), (key, ref.item(key).tib, pub)
    for tier, pub in PUBLISHED_TOTALS_TIB.items():
        assert close(ref.totals_tib[tier], pub), (tier, ref.totals_tib[tier], pub)
    # every figure the scenario lists as published matches, too
    rows = published_comparison(ref)
    assert len(rows) == 14 and all(r.matches for r in rows)
    assert tuple(it.id for it in ref.items) == LINE_IDS  # the ids `published:` may name


def test_reference_arithmetic(ref):
    assert ref.q("kv_bytes_per_token") == 393_216 == 2 * 96 * 8 * 128 * 2
    assert ref.q("tokens_per_request") == 6_667
    assert ref.q("active_sequences") == 1_800_000
    assert ref.q("peak_day_tokens_from_qps") == pytest.approx(172.8e12, rel=1e-3)
    # live KV = 1.8 M x 1,024 x 393,216 B = 659.2 TiB, half in HBM
    assert ref.q("live_kv_bytes") / TiB == pytest.approx(659.18, abs=0.01)
    assert ref.item("live_kv_hot").tib == pytest.approx(329.59, abs=0.01)
    # reuse = 58.3e12 x 393,216 B x 50%
    assert ref.q("reuse_kv_bytes") / TiB == pytest.approx(10_424_852, abs=1)
    assert ref.item("gpu_overheads").tib == 18_750  # 200,000 x 96 GiB, exact
    assert ref.item("rack_ssd_caches").bytes == 200_000 * 200e12
    # weights and datalake are given inputs with provenance, not fits
    assert ref.quantities["weights_bytes"].source == "given"
    assert "set input if known" in ref.item("weights").provenance
    assert ref.item("datalake").provenance


def test_reference_costs_only_priced_tiers(ref):
    assert set(ref.costs_usd) == {"dram"}
    assert ref.costs_usd["dram"] == pytest.approx(ref.totals_bytes["dram"] / 1e9 * 8)


# ------------------------------------------------------------------ lint
def test_reference_lint_findings(ref):
    found = {f.check: f for f in lint(ref)}
    assert "3,335,000" in found["decode_sequences"].arithmetic  # 300,000 x 667 / 60
    assert "1,500,000" in found["decode_sequences"].message
    assert "172,808,640,000,000" in found["peak_day_tokens"].arithmetic
    assert "58,300,000,000,000" in found["peak_day_tokens"].message
    assert "hot_window_hbm" in found  # weights/GPU (956 GiB) exceed HBM/GPU
    assert "956.1 GiB" in found["hot_window_hbm"].arithmetic
    for tier in ("hbm", "dram", "nvme"):  # totals = listed rows x 2^40/10^12
        assert "2^40/10^12" in found[f"unattributed_{tier}"].message
    assert "gpus_per_node" in found and "live_kv_context" in found
    assert "prefill_sequences" not in found  # 300,000 = QPS x TTFT: consistent


def test_second_scenario_is_consistent():
    sz = compute(load_scenario("llama-3.1-70b-fp8-chat"))
    assert sz.q("kv_bytes_per_token") == 163_840  # 80 x 2 x 8 x 128 x 1 B
    assert sz.q("active_decode_sequences") == 1000 * 400 / 40
    assert sz.q("weights_bytes") == pytest.approx(64 * 70.6e9 / 4)
    assert lint(sz) == []


# ------------------------------------------------------------------ sweeps
@pytest.mark.parametrize("scenario", [REF, "llama-3.1-70b-fp8-chat"])
def test_input_token_sweep_monotonic(scenario):
    key, values = parse_sweep("input_tokens=2000,5000,10000,20000,50000,100000,200000")
    scn = load_scenario(scenario)
    sw = run_sweep(scn, key, values)
    t = [s.totals_bytes for s in sw.sizings]
    for v, a, b in zip(values, t, t[1:]):
        assert b["remote"] == a["remote"]
        assert b["dram"] >= a["dram"] and b["nvme"] >= a["nvme"]
        if scn.placement.hot_window_tokens <= v:
            # live KV holds a fixed window once requests are longer than it: HBM is flat
            assert b["hbm"] == pytest.approx(a["hbm"])
        else:  # a window longer than the request holds the whole context
            assert b["hbm"] >= a["hbm"]
    assert t[-1]["dram"] > t[0]["dram"]
    if scenario == REF:
        assert len({round(x["hbm"]) for x in t}) == 1


def test_sweep_scaling_rules():
    import dataclasses

    scn = load_scenario(REF)
    sz = run_sweep(scn, "input_tokens", [4000.0]).sizings[0]
    # the scenario's default (Exhibit 12, "holding other assumptions unchanged"): RAG and
    # output fixed, a given peak-day count scales with tokens/request
    assert sz.q("tokens_per_request") == 4000 + 4000 + 667
    assert sz.q("peak_day_tokens") == pytest.approx(58.3e12 * 8_667 / 6_667)
    # the other rule stays available: RAG keeps 2:1
    ratio = dataclasses.replace(scn.demand.sweep_scaling, rag_tokens="ratio")
    scn = dataclasses.replace(scn, demand=dataclasses.replace(scn.demand, sweep_scaling=ratio))
    sz = run_sweep(scn, "input_tokens", [4000.0]).sizings[0]
    assert sz.q("tokens_per_request") == 4000 + 8000 + 667
    assert sz.q("peak_day_tokens") == pytest.approx(58.3e12 * 12_667 / 6_667)
    fmt = run_sweep(scn, *parse_sweep("format=fp16,fp8_e4m3,nvfp4")).sizings
    assert [s.q("kv_bytes_per_token") for s in fmt] == [393_216, 196_608, 110_592]


def test_bad_sweep():
    with pytest.raises(KvbenchError, match="unknown key"):
        parse_sweep("tokens=1,2")
    with pytest.raises(KvbenchError, match="must be > 0"):
        parse_sweep("input_tokens=0,2")
    with pytest.raises(KvbenchError, match="unknown KV format"):
        parse_sweep("format=fp16,int3")


# ------------------------------------------------------------------ units
def test_unit_conversions():
    d = ref_dict()
    f = d["fleet"]
    scn = scenario_from_dict(d, "t")
    assert scn.fleet.overhead_per_gpu_bytes == 96 * 2**30
    assert scn.fleet.rack_ssd_per_node_bytes == 200 * 10**12
    assert scn.fleet.hbm_per_gpu_bytes == 288 * 10**9
    assert scn.weights.total_bytes == 186_731 * 2**40
    assert scn.demand.peak_day_tokens == 58.3e12
    f.pop("hbm_per_gpu_gb")
    f["hbm_per_gpu_gib"] = 141
    assert scenario_from_dict(d, "t").fleet.hbm_per_gpu_bytes == 141 * 2**30
    d["demand"]["peak_day_tokens"] = "58.3e12"  # YAML 1.1 reads this as a string
    assert scenario_from_dict(d, "t").demand.peak_day_tokens == 58.3e12
    assert SIZE_UNITS["tib"] == 2**40 and SIZE_UNITS["tb"] == 10**12 and SIZE_UNITS["gb"] == 10**9
    from kvbench.sizing.numbers import plain, tib_str

    assert plain(1e18) == "1 EB" and plain(51.5e18) == "51.5 EB" and plain(3.62e14) == "362 TB"
    assert tib_str(36_379_788.07 * 2**40) == "36,379,788"


# ------------------------------------------------------------------ bad input
def _mutate(path: list, value, delete=False):
    d = ref_dict()
    node = d
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,delete,msg", [
    (["demand", "peak_qps"], None, True, "field demand.peak_qps is missing"),
    (["demand", "peak_qps"], 0, False, "field demand.peak_qps must be > 0"),
    (["fleet", "gpus"], -8, False, "field fleet.gpus must be > 0"),
    (["fleet", "nodes"], 2.5, False, "field fleet.nodes must be a whole number"),
    (["placement", "live_kv_split"], {"hbm": 0.5, "dram": 0.4}, False,
     "field placement.live_kv_split fractions must sum to 1"),
    (["placement", "reuse_retention_fraction"], 1.5, False,
     "field placement.reuse_retention_fraction must be <= 1"),
    (["model", "name"], "GPT-9", False, "field model.name: unknown model 'GPT-9'"),
    (["kv", "format"], "int3", False, "field kv.format: unknown KV format 'int3'"),
    (["demand", "peak_qsp"], 5, False, "field demand.peak_qsp is not a known field"),
    (["fleet", "overhead_per_gpu_gib"], None, True, "field fleet.overhead_per_gpu_<"),
    (["demand", "ttft_s"], "soon", False, "field demand.ttft_s must be a number"),
    (["published", "weights_tb"], 1, False, "field published.weights_tb must end in _tib"),
])
def test_bad_scenario_one_line(tmp_path, path, value, delete, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_mutate(path, value, delete)))
    with pytest.raises(KvbenchError) as exc:
        load_scenario(str(p))
    text = str(exc.value)
    assert msg in text and "\n" not in text and text.startswith(f"scenario {REF}:")


@pytest.mark.parametrize("path,old,new", [
    (["placement", "live_kv_split"], "ssd", "nvme"),
    (["placement", "reuse_split"], "ssd", "nvme"),
    (["unattributed"], "ssd_tib", "nvme_tib"),
    (["prices"], "ssd_usd_per_gb", "nvme_usd_per_gb"),
    (["prices"], "datalake_usd_per_gb", "remote_usd_per_gb"),
    (["published"], "reuse_ssd_tib", "reuse_nvme_tib"),
    (["published"], "unattributed_ssd_tib", "unattributed_nvme_tib"),
    (["published"], "total_ssd_tib", "total_nvme_tib"),
    (["published"], "total_datalake_tib", "total_remote_tib"),
])
def test_old_tier_keys_refused_naming_the_new_key(tmp_path, capsys, path, old, new):
    """Sizing's tiers were 'ssd' and 'datalake'; a scenario still using them gets one line
    naming the key's new name (kvbench's tier names), exit 2, no traceback."""
    d = ref_dict()
    node = d
    for k in path:
        node = node[k]
    node[old] = node.pop(new, 1)
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["size", "--scenario", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    where = ".".join(path)
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"field {where}.{old} uses the old tier name: it is now {where}.{new}" in err, err


def test_sizing_tiers_are_kvbench_tiers():
    from kvbench.sizing.scenario import TIER_LABELS, TIERS
    from kvbench.tiers import TIER_NAMES

    assert set(TIER_NAMES) <= set(TIERS) == set(TIER_LABELS)
    assert ref_dict()["placement"]["live_kv_split"].keys() <= set(TIERS)


def test_bad_input_exits_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_mutate(["demand", "output_tokens_per_request"], 0)))
    assert main(["size", "--scenario", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "field demand.output_tokens_per_request must be > 0" in err
    assert main(["size", "--scenario", "no-such-scenario"]) == 2
    assert "unknown scenario 'no-such-scenario'" in capsys.readouterr().err


# ------------------------------------------------------------------ CLI
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvbench")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["size", *argv])


def test_cli_table_explain(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside table cells
    assert run(_args("--scenario", REF, "--explain")) == 0
    out = capsys.readouterr().out
    for figure in ("4,169,941", "6,254,911", "18,750", "186,731", "36,379,788", "226,291",
                   "4,585,261", "46,877,348", "293,556,000", "51.5 EB", "2^40"):
        assert figure in out
    assert "DIFF" not in out
    assert "200,000 x 96 GiB" in out and "1,800,000 x 1,024 x 393,216 B" in out  # formulas
    assert "3,335,000" in out  # lint


def test_cli_json_sweep_plot(tmp_path, capsys):
    j, png = tmp_path / "s.json", tmp_path / "s.png"
    assert run(_args("--scenario", REF, "--sweep", "input_tokens=2000,20000",
                     "--json", str(j), "--plot", str(png))) == 0
    doc = json.loads(j.read_text())
    assert doc["schema"] == "kvbench.sizing/2"
    assert set(doc["sizing"]["totals"]) == {"hbm", "dram", "nvme", "remote"}
    assert doc["sizing"]["totals"]["hbm"]["matches_published"] is True
    assert [r["value"] for r in doc["sweep"]["rows"]] == [2000, 20000]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    capsys.readouterr()
    assert run(_args("--scenario", REF, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["lint"]
    with pytest.raises(KvbenchError, match="ending in .png"):
        run(_args("--scenario", REF, "--plot", str(tmp_path / "x.pdf")))


def test_no_torch_import():
    code = ("import sys, argparse; from kvbench.sizing.cli import main; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()): "
            "main(['size', '--scenario', 'ms-chatgpt-2026', '--explain'])\n"
            "import kvbench.sizing.measured, kvbench.sizing.report\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
