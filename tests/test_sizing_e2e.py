"""Measured mode takes decode capacity from e2e output tokens/s when the e2e case can stand
for the scenario (its model, full size, on a GPU), else from the decode bench.

The result documents here are TEST INPUT built with kvbench.results.make_case (invented
figures, not measurements); their configs follow what kvbench/bench/e2e writes (cache,
tier, format, batch, prompt_tokens, new_tokens, shrunk, layers_used, layers_config,
dtype, device) and the run block names the model (run.options.model).
"""

from __future__ import annotations

import argparse
import json

import pytest

from kvbench.results import SCHEMA, make_case, write_atomic
from kvbench.sizing.cli import add_parser, run
from kvbench.sizing.measured import measure
from kvbench.sizing.scenario import load_scenario

#: Llama-3.1-70B, fp8_e4m3 KV, all live KV in HBM (placement hbm); 1,000 QPS x 400 output
#: tokens / 40 tok/s = 10,000 decode sequences; mean decode context 1500 + 500 + 400/2
SCN = "llama-3.1-70b-fp8-chat"
MODEL = "Llama-3.1-70B"
DECODE_SEQS, DTOK, CTX = 10_000, 40, 2200
DECODE_KEY = "decode capacity (KV-read GB/s per placement)"


def result_doc(cases, model=MODEL, gpus=()):
    return {
        "schema": SCHEMA,
        "run": {"id": "test", "started_utc": "2026-01-01T00:00:00Z", "status": "ok",
                "kvbench_version": "0.1.0", "mode": "gpu", "options": {"model": model},
                "model": {"name": model}},
        "environment": {"host": {"name": "test"}, "software": {}, "gpus": list(gpus)},
        "method": {"timer": "test", "units": {}},
        "cases": cases,
    }


def e2e(name, out_tok_s, *, cache="kvbench", tier="hbm", fmt="fp8_e4m3", batch=32, prompt=2048,
        new=512, device="cuda:0", shrunk=False, layers=80, tpot_s=0.016):
    cfg = {"cache": cache, "batch": batch, "prompt_tokens": prompt, "new_tokens": new,
           "shrunk": shrunk, "architecture": "llama", "weights": "random", "layers_used": layers,
           "layers_config": 80, "dtype": "float16", "device": device}
    if cache == "kvbench":
        cfg.update({"tier": tier, "format": fmt, "tokens_per_page": 16})
    return make_case("e2e", name, cfg, samples={"out_tok_s": [out_tok_s] * 3, "tpot_s": [tpot_s] * 3,
                                                "ttft_s": [0.2] * 3})


def decode(placement, kv_read_gbps, fmt="fp8_e4m3"):
    cfg = {"placement": placement, "format": fmt, "batch": 64, "context": 4096, "model": MODEL,
           "fused": True}
    return make_case("decode", f"{placement}/{fmt}/64x4096", cfg,
                     metrics={"tok_s": 1000.0, "step_s": 0.064, "kv_read_gbps": kv_read_gbps})


def write(tmp_path, name, cases, **kw):
    path = tmp_path / name
    write_atomic(path, result_doc(cases, **kw))
    return str(path)


def gpus_replacement(m):
    return next(r for r in m.replacements if r.quantity.startswith("GPUs for"))


def test_usable_gpu_e2e_replaces_decode_capacity(tmp_path):
    # batch 32 of 2048 + 512 tokens: mean context 2304 >= the scenario's 2200 (no upper bound)
    path = write(tmp_path, "h200.json", [
        e2e("kvbench/hbm/fp8_e4m3", 1600.0),
        e2e("dynamic", 3000.0, cache="dynamic"),  # fp16 K/V: not the scenario's format
        decode("hbm", 3000.0),
    ])
    m = measure(load_scenario(SCN), [path])
    rep = gpus_replacement(m)
    per_gpu = 1600.0 / DTOK
    assert rep.source == "h200.json: e2e/kvbench/hbm/fp8_e4m3"
    assert rep.measured.startswith(f"{int(DECODE_SEQS / per_gpu)} GPUs")
    assert "(e2e)" in rep.note and "batch 32" in rep.note
    used = [r for r in m.capacity if r.used]
    assert len(used) == 1 and used[0].basis == "e2e" and used[0].format == "fp8_e4m3"
    assert used[0].seqs_per_gpu == pytest.approx(per_gpu)
    assert used[0].gpus_needed == pytest.approx(DECODE_SEQS / per_gpu)
    assert not used[0].upper_bound and used[0].context_tokens == 2048 + 512 / 2
    # the decode bench's figure for the same placement is beside it, not used
    dec = next(r for r in m.capacity if r.basis == "decode" and r.placement == "hbm")
    assert dec.selected and not dec.used
    beside = " ".join(n for n in m.notes if n.startswith("decode capacity used"))
    assert "e2e (h200.json: e2e/kvbench/hbm/fp8_e4m3" in beside and "decode/hbm/fp8_e4m3" in beside
    formula = next(n for n in m.notes if n.startswith("decode capacity (e2e)"))
    assert "batch 32" in formula and "context 2,304" in formula and "2,200" in formula
    assert not any("decode capacity" in x.quantity for x in m.missing)


def test_shorter_e2e_context_is_an_upper_bound(tmp_path):
    # 512 + 128/2 = 576 tokens of context measured; the scenario decodes at 2,200
    path = write(tmp_path, "short.json", [e2e("kvbench/hbm/fp8_e4m3", 1600.0, prompt=512, new=128)])
    m = measure(load_scenario(SCN), [path])
    row = next(r for r in m.capacity if r.used)
    assert row.upper_bound
    rep = gpus_replacement(m)
    assert rep.measured.startswith(">= ") and "<= 40 sequences/GPU" in rep.note
    assert any("upper bound" in n for n in m.notes if n.startswith("decode capacity (e2e)"))


def test_shrunk_cpu_e2e_is_seen_not_used(tmp_path):
    path = write(tmp_path, "cpu.json", [
        e2e("kvbench/hbm/fp8_e4m3", 900.0, device="cpu", shrunk=True, layers=2),
        e2e("dynamic", 870.0, cache="dynamic", device="cpu", shrunk=True, layers=2),
        decode("hbm", 3000.0),
    ])
    m = measure(load_scenario(SCN), [path])
    seen = [n for n in m.notes if "not usable" in n]
    assert len(seen) == 1  # one reason, both cases named
    assert "cpu.json: e2e/kvbench/hbm/fp8_e4m3, e2e/dynamic" in seen[0]
    assert "shrunk model: 2 of 80 layers on cpu" in seen[0]
    assert all(r.basis == "decode" for r in m.capacity)
    rep = gpus_replacement(m)
    assert rep.source == "cpu.json: decode/hbm/fp8_e4m3/64x4096" and "(decode)" in rep.note


@pytest.mark.parametrize("kw, reason", [
    ({"device": "cpu"}, "ran on cpu, not a GPU"),
    ({"shrunk": True, "layers": 2}, "shrunk model: 2 of 80 layers"),
])
def test_other_reasons_are_said(tmp_path, kw, reason):
    path = write(tmp_path, "r.json", [e2e("kvbench/hbm/fp8_e4m3", 1600.0, **kw)])
    m = measure(load_scenario(SCN), [path])
    assert any(reason in n for n in m.notes if "not usable" in n)
    assert m.capacity == []


def test_other_model_is_not_usable(tmp_path):
    path = write(tmp_path, "8b.json", [e2e("kvbench/hbm/fp8_e4m3", 1600.0, layers=80)],
                 model="Llama-3.1-8B")
    m = measure(load_scenario(SCN), [path])
    assert any("model Llama-3.1-8B, not the scenario's Llama-3.1-70B" in n for n in m.notes)
    assert DECODE_KEY in {x.quantity for x in m.missing}


def test_no_e2e_and_no_decode_is_missing_with_the_command(tmp_path):
    for cases in ([], [e2e("dynamic", 870.0, cache="dynamic", device="cpu", shrunk=True, layers=2)]):
        path = write(tmp_path, "none.json", cases)
        m = measure(load_scenario(SCN), [path])
        how = {x.quantity: x.how for x in m.missing}[DECODE_KEY]
        assert "kvbench run --bench decode" in how and f"kvbench run --bench e2e --model {MODEL}" in how
        assert m.capacity == [] and not any(r.quantity.startswith("GPUs for") for r in m.replacements)


def test_e2e_at_another_placement_leaves_the_scenarios_missing(tmp_path):
    path = write(tmp_path, "dram.json", [e2e("kvbench/dram/fp8_e4m3", 500.0, tier="dram")])
    m = measure(load_scenario(SCN), [path])
    assert [(r.placement, r.basis, r.selected) for r in m.capacity] == [("dram", "e2e", False)]
    how = {x.quantity: x.how for x in m.missing}["decode capacity for placement hbm"]
    assert "kvbench/hbm/fp8_e4m3" in how


def test_cli_json_carries_the_e2e_row(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    path = write(tmp_path, "h200.json", [e2e("kvbench/hbm/fp8_e4m3", 1600.0), decode("hbm", 3000.0)])
    parser = argparse.ArgumentParser(prog="kvbench")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "m.json"
    assert run(parser.parse_args(["size", "--scenario", SCN, "--results", path, "--json", str(out)])) == 0
    assert "e2e/kvbench/hbm/fp8_e4m3" in capsys.readouterr().out
    cap = json.loads(out.read_text())["measured"]["capacity"]
    used = [r for r in cap if r["used"]]
    assert len(used) == 1 and used[0]["basis"] == "e2e" and used[0]["out_tok_s"] == 1600.0


def test_scenario_format_wins_then_e2e(tmp_path):
    # e2e only in fp16 (DynamicCache): the decode bench in the scenario's fp8_e4m3 is used
    path = write(tmp_path, "fmt.json", [e2e("dynamic", 3000.0, cache="dynamic"), decode("hbm", 3000.0)])
    m = measure(load_scenario(SCN), [path])
    used = next(r for r in m.capacity if r.used)
    assert used.basis == "decode"
    assert any("beside it, e2e (fmt.json: e2e/dynamic)" in n for n in m.notes)
    # alone, the fp16 e2e figure is used and says its format
    path = write(tmp_path, "fp16.json", [e2e("dynamic", 3000.0, cache="dynamic")])
    rep = gpus_replacement(measure(load_scenario(SCN), [path]))
    assert rep.source == "fp16.json: e2e/dynamic" and "format fp16, not fp8_e4m3" in rep.note


def test_declared_placement_and_format_are_used(tmp_path):
    # newer e2e configs declare the decode placement and KV format they stand for
    case = e2e("kvbench/hbm/fp8_e4m3", 1600.0)
    case["config"].update({"decode_placement": "hbm", "kv_format": "fp8_e4m3",
                           "kv_heads_used": 8, "head_dim_used": 128})
    off = e2e("kvbench/gpu0/fp8_e4m3", 1600.0, tier="gpu0")
    off["config"].update({"decode_placement": "", "kv_format": "fp8_e4m3"})
    path = write(tmp_path, "decl.json", [case, off])
    m = measure(load_scenario(SCN), [path])
    assert gpus_replacement(m).source == "decl.json: e2e/kvbench/hbm/fp8_e4m3"
    assert [r.placement for r in m.capacity] == ["hbm"]  # no placement declared: not usable


def test_a_model_of_another_shape_is_not_usable(tmp_path):
    # the run names the scenario's model, but the model built (e.g. from e2e.model_path) differs
    case = e2e("kvbench/hbm/fp8_e4m3", 1600.0, layers=32)
    case["config"].update({"layers_config": 32, "kv_heads_used": 8, "head_dim_used": 128})
    path = write(tmp_path, "shape.json", [case])
    m = measure(load_scenario(SCN), [path])
    assert any("differs from configs/models/Llama-3.1-70B: layers 32 vs 80" in n for n in m.notes)
    assert m.capacity == []
