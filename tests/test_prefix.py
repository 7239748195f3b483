"""Prefix benchmark: the prefill has the model's shapes and writes K/V of the model's
size, its attention matches a plain softmax reference (GQA, sliding windows), loads
move the exact bytes, and a tiny run end to end writes a valid result with break-even
and speed-up on the load cases, CPU figures labelled as such."""

import json
import statistics
import math
import subprocess
import sys

import pytest
import torch

from kvbench.bench import RunContext
from kvbench.bench import Skip
from kvbench.bench import prefix as P
from kvbench.bench.prefix import common, loads, prefill
from kvbench.errors import KvbenchError
from kvbench.results import load
from kvbench.runner import run_case
from kvbench.spec import load_model, model_from_dict
from conftest import CUDA_OK, requires_cuda

LLAMA = load_model("Llama-3.1-8B")


def tiny(attention_type="gqa", layers=3, **extra):
    cfg = {"num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "hidden_size": 48, "intermediate_size": 40, **extra}
    return model_from_dict({"name": "tiny", "attention_type": attention_type, "config": cfg,
                            "source_url": "test", "retrieved": "2026-01-01"})


def ctx_for(model, tmp_path, cuda=False, **opts):
    return RunContext(cuda=cuda, quick=True, model=model, formats=["fp16"], tokens_per_page=16,
                      layouts=["block"], nvme_dir=tmp_path, warmup=1, samples=2,
                      options={k.replace("_", ".", 1): v for k, v in opts.items()})


# ----------------------------------------------------------------------------- shapes
def test_prefill_layers_follow_the_model_config():
    kinds, _ = prefill.prefill_layers(LLAMA)
    assert kinds == [prefill.LayerKind("full", 14336)] * 32

    kinds, notes = prefill.prefill_layers(load_model("Qwen3-235B-A22B"))
    assert {k.mlp_width for k in kinds} == {8 * 1536} and len(kinds) == 94
    assert any("MoE" in n for n in notes)

    kinds, _ = prefill.prefill_layers(load_model("GLM-4.5"))  # 3 dense layers, 8 experts + 1 shared
    assert [k.mlp_width for k in kinds[:4]] == [12288, 12288, 12288, 9 * 1536]

    kinds, _ = prefill.prefill_layers(load_model("gpt-oss-120b"))  # expert width = intermediate_size
    assert kinds[0] == prefill.LayerKind("sliding", 4 * 2880, 128) and kinds[1] == prefill.LayerKind("full", 4 * 2880)

    with pytest.raises(Skip, match="MLA"):
        prefill.prefill_layers(load_model("DeepSeek-V3"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_writes_kv_of_the_model_shape(dtype):
    m = tiny()
    kinds, _ = prefill.prefill_layers(m)
    pf = prefill.Prefill(m, 24, kinds, device="cpu", dtype=dtype, seed=0, kv_slots=m.num_layers)
    out = pf.run_all()
    assert out.shape == (24, m.hidden_size) and torch.isfinite(out).all()
    assert pf.kv.shape == (m.num_layers, 2, 24, m.kv_heads, m.head_dim)
    # layer 0's K and V are the projections of the input
    k_dim = m.kv_heads * m.head_dim
    kv0 = pf.x0 @ pf.w_qkv[:, m.num_attention_heads * m.head_dim:]
    assert torch.equal(pf.kv[0, 0].reshape(24, k_dim), kv0[:, :k_dim])
    assert torch.equal(pf.kv[0, 1].reshape(24, k_dim), kv0[:, k_dim:])


def test_llama_layer_kv_bytes_per_token():
    """One Llama-3.1-8B layer (fp32 on the CPU: bf16 matmuls are slow there): K+V per
    token, stored at 2 B per element, = the model's bf16 bytes per token per layer."""
    kinds, _ = prefill.prefill_layers(LLAMA)
    pf = prefill.Prefill(LLAMA, 4, kinds[:1], device="cpu", dtype=torch.float32, seed=0, kv_slots=1)
    pf.run_one(kinds[0])
    assert pf.kv.shape == (1, 2, 4, 8, 128)
    assert pf.kv[0].numel() // 4 * 2 == LLAMA.kv_bytes_per_token_per_layer("bf16") == 4096


def _reference_attention(q, k, v, window):
    """Plain softmax attention, float64, GQA by head groups, causal (+ window)."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    n = q.shape[2]
    qp, kp = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = (kp <= qp) & (qp - kp < window)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v


@pytest.mark.parametrize("attention,window", [("full", 0), ("sliding", 8), ("sliding", 64)])
def test_attention_matches_reference(attention, window):
    m = tiny()
    pf = prefill.Prefill(m, 37, [prefill.LayerKind("full", 40)], device="cpu", dtype=torch.float32, seed=0, kv_slots=1)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 37, 16, generator=g)
    k, v = torch.randn(1, 2, 37, 16, generator=g), torch.randn(1, 2, 37, 16, generator=g)
    got = pf.attend(q, k, v, prefill.LayerKind(attention, 40, window))
    want = _reference_attention(q, k, v, window if attention == "sliding" else 37)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_prefill_flops_counts_the_causal_pairs():
    m = tiny(layers=1)
    full = prefill.prefill_flops(m, [prefill.LayerKind("full", 40)], 10)
    proj = 48 * (4 + 4) * 16 + 64 * 48 + 3 * 48 * 40
    assert full == 2 * 10 * proj + 4 * 4 * 16 * 55
    assert prefill.prefill_flops(m, [prefill.LayerKind("sliding", 40, 3)], 10) == 2 * 10 * proj + 4 * 4 * 16 * (1 + 2 + 3 * 8)


# ----------------------------------------------------------------------------- loads
def test_equal_rows_sees_one_byte():
    a = torch.randint(0, 256, (5, 100), dtype=torch.uint8)
    b = a.clone()
    assert loads._equal_rows(b, a)
    b[3, 99] ^= 1
    assert not loads._equal_rows(b, a)


@pytest.mark.parametrize("source", ["dram", "nvme"])
def test_loads_move_the_exact_bytes(source, tmp_path):
    """40 tokens of a tiny model: 3 pages, the last one partial; file stride padded."""
    m = tiny()
    ctx = ctx_for(m, tmp_path, prefix_chunk_bytes="8KiB", prefix_threads="2")
    case = (loads.dram_case if source == "dram" else loads.nvme_case)(ctx, 40)
    assert case["status"] == "ok", case["reason"]
    assert case["config"]["pages"] == 3 and case["metrics"]["bytes"] == 3 * 16 * 3 * 128
    assert case["config"]["device"] == "cpu" and common.CPU_NOTE in case["notes"]
    if source == "nvme":
        assert case["config"]["file_stride"] == 8192 and case["config"]["chunk_pages"] == 1
        assert case["config"]["cache_state"] in ("cold", "warm")
    assert list(tmp_path.iterdir()) == []  # the nvme tier removed its files


def test_mla_recompute_skips_and_loads_say_why(tmp_path):
    ctx = ctx_for(load_model("DeepSeek-V3"), tmp_path, prefix_tokens="32", prefix_sources="recompute,dram")
    for case in P.plan(ctx):
        ctx.done.append(run_case(P.BENCH, case, ctx))
    rc, dram = ctx.done
    assert rc["status"] == "skipped" and "MLA" in rc["reason"]
    assert dram["status"] == "ok" and "break_even_gbps" not in dram["metrics"]
    assert any("break-even and speed-up not computed" in n for n in dram["notes"])


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(KvbenchError, match="prefix.tokens"):
        common.tokens_sweep(ctx_for(LLAMA, tmp_path, prefix_tokens="64,x"))
    with pytest.raises(KvbenchError, match="prefix.sources"):
        common.sources(ctx_for(LLAMA, tmp_path, prefix_sources="hbm"))


# ----------------------------------------------------------------------------- end to end
def test_cli_tiny_run(tmp_path):
    out, nv = tmp_path / "p.json", tmp_path / "nvme"
    nv.mkdir()
    r = subprocess.run([sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "prefix",
                        "--set", "prefix.tokens=64,128", "--samples", "1", "--warmup", "0",
                        "--no-progress", "--nvme-dir", str(nv), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = load(out)
    cases = [c for c in doc["cases"] if c["bench"] == "prefix"]
    assert [c["name"] for c in cases] == [f"{n}tok/{s}" for n in (64, 128) for s in common.SOURCES]
    for c in cases:
        assert c["status"] == "ok" or (c["status"] == "skipped" and c["reason"]), c
        if c["status"] != "ok":
            continue
        assert c["metrics"]["seconds"] > 0 and c["units"]["seconds"] == "s"
        assert c["config"]["device"] == ("cuda" if CUDA_OK else "cpu")
        assert (common.CPU_NOTE in c["notes"]) == (not CUDA_OK)  # CPU figures are labelled
        if c["config"]["source"] == "recompute":
            assert c["config"]["layers_timed"] == (32 if CUDA_OK else 1)
            assert c["config"]["layers_scaled_to"] == 32
            assert c["metrics"]["kv_bytes_produced"] == c["config"]["prefix_tokens"] * 131072
            assert c["metrics"]["prefill_tok_s"] > 0
        else:
            m = c["metrics"]
            assert m["break_even_gbps"] > 0 and m["speedup_vs_recompute"] > 0 and m["gbps"] > 0
            # paired in the case: the median of per-pair recompute / load
            per_pair = [r / ld for r, ld in zip(c["samples"]["recompute_s"], c["samples"]["load_s"])]
            assert m["speedup_vs_recompute"] == pytest.approx(statistics.median(per_pair))
            assert c["paired"]["speedup_vs_recompute"]["n"] == len(c["samples"]["load_s"])
    json.dumps(doc)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@requires_cuda
def test_gpu_prefill_and_attention_paths():
    m = LLAMA
    kinds, _ = prefill.prefill_layers(m)
    pf = prefill.Prefill(m, 256, kinds[:2], device="cuda", dtype=torch.bfloat16, seed=0, kv_slots=2)
    out = pf.run_all()
    torch.cuda.synchronize()
    assert pf.kv.shape == (2, 2, 256, 8, 128) and torch.isfinite(out).all()
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, 256, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 8, 256, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 8, 256, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    got = pf.attend(q, k, v, kinds[0])
    want = _reference_attention(q.cpu(), k.cpu(), v.cpu(), 256)
    assert torch.allclose(got.double().cpu(), want, atol=2e-2)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("source", ["dram", "nvme"])
def test_gpu_loads_move_the_exact_bytes(source, tmp_path):
    ctx = ctx_for(LLAMA, tmp_path, cuda=True)
    case = (loads.dram_case if source == "dram" else loads.nvme_case)(ctx, 1024)
    assert case["status"] == "ok", case["reason"]
    assert case["config"]["device"] == "cuda" and common.CPU_NOTE not in case["notes"]
    assert case["metrics"]["bytes"] == 1024 * 131072


@pytest.mark.gpu
@requires_cuda
def test_gpu_tiny_bench(tmp_path):
    ctx = ctx_for(LLAMA, tmp_path, cuda=True, prefix_tokens="1024")
    for case in P.plan(ctx):
        ctx.done.append(run_case(P.BENCH, case, ctx))
    assert [c["status"] for c in ctx.done] == ["ok"] * 3, [c["reason"] for c in ctx.done]
    rc = ctx.done[0]
    assert rc["config"]["layers_timed"] == 32 and rc["config"]["dtype"] == "bfloat16"
    for c in ctx.done[1:]:
        assert c["metrics"]["speedup_vs_recompute"] > 0 and c["metrics"]["break_even_gbps"] > 0
