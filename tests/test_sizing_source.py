"""Sizing as the source computed it: the input-token sweep of the note's Exhibit 12 and
the source's tier totals (listed rows x 2^40/10^12) in every derived figure, sweeps
included, with the corrected totals beside them. Pure arithmetic; no GPU, no torch.

The note (configs/scenarios/ms-chatgpt-2026.yaml; Exhibit 12 as quoted in issue 15) sweeps
input tokens per request from 2,000 to 200,000 "holding other assumptions unchanged" and
says that 2,000 -> 5,000 "will increase the DRAM demand by around 2EB and Rack SSD by 3EB
per model", HBM ("effective live window capped") and the datalake flat. Its "EB" is its
TiB / 10^6 (its "PiB" column is TiB / 1000).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import yaml

from kvbench.errors import KvbenchError
from kvbench.sizing.cli import add_parser, run
from kvbench.sizing.model import compute
from kvbench.sizing.scenario import SweepScaling, load_scenario, scenario_from_dict, scenarios_dir
from kvbench.sizing.sweep import apply, rules_in_force, run_sweep
from kvbench.units import TiB

REF = "ms-chatgpt-2026"
#: the source's "EB": 10^6 of its TiB
SOURCE_EB = 10**6 * TiB
TIB_OVER_TB = 2**40 / 10**12
#: The sentence gives whole "EB" ("around 2EB", "3EB"): a figure reproduces it when it rounds
#: to that whole number, i.e. lies within 0.5 of it. A tighter bound would test a precision
#: the source does not state; the golden figures below pin kvbench's own arithmetic.
SENTENCE_TOLERANCE_EB = 0.5

# The arithmetic, written out. 2,000 -> 5,000 input with RAG (4,000) and output (667) held:
# tokens/request 6,667 -> 9,667, so the given 58.3 T peak-day tokens grow by 58.3e12 x
# 3,000 / 6,667; the reuse cache holds 50% of them at 393,216 B/token, 40% in DRAM and 60%
# on rack SSD. Corrected: those bytes / 2^40 / 10^6; as the source computed: x 2^40/10^12.
DAY_TOKENS_ADDED = 58.3e12 * 3_000 / 6_667
REUSE_BYTES_ADDED = DAY_TOKENS_ADDED * 0.5 * 393_216
CORRECTED_DRAM = REUSE_BYTES_ADDED * 0.4 / SOURCE_EB  # 1.876
CORRECTED_NVME = REUSE_BYTES_ADDED * 0.6 / SOURCE_EB  # 2.815
SOURCE_DRAM = CORRECTED_DRAM * TIB_OVER_TB            # 2.063
SOURCE_NVME = CORRECTED_NVME * TIB_OVER_TB            # 3.095


def _with_scaling(scn, **rules):
    scaling = dataclasses.replace(scn.demand.sweep_scaling, **rules)
    return dataclasses.replace(scn, demand=dataclasses.replace(scn.demand, sweep_scaling=scaling))


def _changes_eb(scn, attr: str = "totals_bytes") -> dict[str, float]:
    """Tier totals at 5,000 input tokens minus those at 2,000, in the source's "EB"."""
    before, after = run_sweep(scn, "input_tokens", [2000.0, 5000.0]).sizings
    return {t: (getattr(after, attr)[t] - getattr(before, attr)[t]) / SOURCE_EB for t in after.totals_bytes}


# ------------------------------------------------------------------ the Exhibit 12 sentence
def test_exhibit_12_sentence_as_the_source_computed():
    change = _changes_eb(load_scenario(REF))
    assert change["dram"] == pytest.approx(2, abs=SENTENCE_TOLERANCE_EB)  # "around 2EB"
    assert change["nvme"] == pytest.approx(3, abs=SENTENCE_TOLERANCE_EB)  # "Rack SSD by 3EB"
    assert change["hbm"] == 0  # "effective live window capped"
    assert change["remote"] == 0  # datalake flat
    assert change["dram"] == pytest.approx(SOURCE_DRAM, rel=1e-9)  # 2.063
    assert change["nvme"] == pytest.approx(SOURCE_NVME, rel=1e-9)  # 3.095


def test_exhibit_12_sentence_corrected():
    change = _changes_eb(load_scenario(REF), "corrected_totals_bytes")
    assert change["dram"] == pytest.approx(CORRECTED_DRAM, rel=1e-9)  # 1.876 x 10^6 TiB
    assert change["nvme"] == pytest.approx(CORRECTED_NVME, rel=1e-9)  # 2.815 x 10^6 TiB
    assert change["hbm"] == 0 and change["remote"] == 0
    # the source's figures, read as TB rather than TiB, are the corrected bytes:
    # +2.06 of its "EB" of DRAM is +2.06 EB (10^18 B) of storage
    assert change["dram"] * SOURCE_EB / 1e18 == pytest.approx(SOURCE_DRAM, rel=1e-9)


@pytest.mark.parametrize("rules,reproduces", [
    ({}, True),                                  # the scenario's default
    ({"rag_tokens": "ratio"}, False),            # RAG kept at 2:1: DRAM +6.19, SSD +9.28
    ({"output_tokens": "ratio"}, False),         # output kept at 3:1: SSD +4.13
    ({"peak_day_tokens": "fixed"}, False),       # peak-day tokens held: +0
])
def test_only_the_default_rules_reproduce_the_sentence(rules, reproduces):
    change = _changes_eb(_with_scaling(load_scenario(REF), **rules))
    ok = (abs(change["dram"] - 2) <= SENTENCE_TOLERANCE_EB and abs(change["nvme"] - 3) <= SENTENCE_TOLERANCE_EB
          and change["hbm"] == 0 and change["remote"] == 0)
    assert ok is reproduces, change


def test_default_scaling_holds_other_inputs():
    scn = load_scenario(REF)
    s = scn.demand.sweep_scaling
    assert (s.rag_tokens, s.output_tokens, s.peak_day_tokens) == ("fixed", "fixed", "per_request")
    assert "holding other assumptions unchanged" in s.provenance
    assert "around 2EB" in s.provenance
    d = apply(scn, "input_tokens", 5000.0).demand
    assert (d.input_tokens_per_request, d.rag_tokens_per_request, d.output_tokens_per_request) == (5000, 4000, 667)
    # without sweep_scaling in a scenario, a sweep holds RAG and output too
    assert (SweepScaling().rag_tokens, SweepScaling().output_tokens) == ("fixed", "fixed")


def test_token_sweeps_move_a_given_peak_day_count():
    scn = load_scenario(REF)
    for key, value, tokens in (("rag_tokens", 8000.0, 10_667), ("output_tokens", 1000.0, 7_000)):
        sz = compute(apply(scn, key, value))
        assert sz.q("tokens_per_request") == tokens
        assert sz.q("peak_day_tokens") == pytest.approx(58.3e12 * tokens / 6_667)


# ------------------------------------------------------------------ the source's totals
def test_published_totals_are_the_source_arithmetic():
    sz = compute(load_scenario(REF))
    published = {"hbm": 226_291, "dram": 4_585_261, "nvme": 46_877_348}
    corrected = {"hbm": 205_811, "dram": 4_170_271, "nvme": 42_634_699}  # sums of the listed rows
    for tier, pub in published.items():
        assert round(sz.totals_tib[tier]) == pub
        assert round(sz.corrected_totals_tib[tier]) == corrected[tier]
        slip = sz.item(f"unattributed_{tier}")
        assert slip.source_only and "source" in slip.label
    assert sz.totals_tib["remote"] == sz.corrected_totals_tib["remote"] == 293_556_000
    assert sz.has_source_slip


@pytest.mark.parametrize("key,values", [
    ("input_tokens", [2000.0, 5000.0, 200_000.0]),
    ("format", ["fp16", "nvfp4"]),
    ("gpus", [100_000.0, 200_000.0]),
])
def test_every_sweep_point_does_the_source_arithmetic(key, values):
    for sz in run_sweep(load_scenario(REF), key, values).sizings:
        for tier in ("hbm", "dram", "nvme"):
            assert sz.totals_bytes[tier] == pytest.approx(sz.corrected_totals_bytes[tier] * TIB_OVER_TB, rel=1e-12)
        assert sz.totals_bytes["remote"] == sz.corrected_totals_bytes["remote"]


def test_given_amounts_stay_available():
    d = yaml.safe_load((scenarios_dir() / f"{REF}.yaml").read_text())
    d["unattributed"] = {"hbm_tib": 20480, "dram_tib": 414990, "nvme_tib": 4242649}
    scn = scenario_from_dict(d, "given")
    sz = compute(scn)
    assert round(sz.totals_tib["dram"]) == 4_585_261
    assert not sz.has_source_slip  # a given amount counts as storage
    after = compute(apply(scn, "input_tokens", 5000.0))
    assert after.item("unattributed_dram").bytes == 414990 * TiB  # a fixed amount, not the source's rule
    d["unattributed"]["rule"] = "source_unit_slip"
    with pytest.raises(KvbenchError, match="unattributed.hbm_<unit> gives an amount while unattributed.rule"):
        scenario_from_dict(d, "both")


# ------------------------------------------------------------------ CLI and JSON
def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvbench")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["size", *argv])


def test_explain_says_which_rule_is_in_force(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert run(_args("--scenario", REF, "--explain")) == 0
    out = capsys.readouterr().out
    assert "Sweep rules in force" in out
    assert "RAG tokens: stay 4,000: fixed (demand.sweep_scaling.rag_tokens; other: ratio)" in out
    assert "output tokens: stay 667: fixed" in out
    assert "per_request (demand.sweep_scaling.peak_day_tokens" in out
    assert "holding other assumptions unchanged" in out
    assert "total, as the source computed" in out and "total, corrected" in out
    for key in (r.key for r in rules_in_force(load_scenario(REF))):
        assert f"│ {key} " in out


def test_sweep_shows_both_totals(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "400")
    j = tmp_path / "s.json"
    assert run(_args("--scenario", REF, "--sweep", "input_tokens=2000,5000", "--json", str(j))) == 0
    out = capsys.readouterr().out
    assert "as the source computed" in out and "corrected" in out
    for figure in ("6,648,362", "6,046,650", "+2.063", "+3.095", "+1.876", "+2.815"):
        assert figure in out, figure
    doc = json.loads(j.read_text())
    rows = doc["sweep"]["rows"]
    assert doc["sweep"]["totals_arithmetic"].startswith("as the source computed")
    assert round(rows[0]["totals_tib"]["dram"]) == 4_585_261
    assert round(rows[0]["corrected_totals_tib"]["dram"]) == 4_170_271
    assert (rows[1]["totals_tib"]["dram"] - rows[0]["totals_tib"]["dram"]) / 1e6 == pytest.approx(SOURCE_DRAM)
    assert doc["sweep"]["scaling"]["rag_tokens"] == "fixed" and rows[1]["rag_tokens_per_request"] == 4000
    assert doc["sizing"]["totals"]["dram"]["corrected_tib"] == pytest.approx(4_170_270.54, abs=0.01)
