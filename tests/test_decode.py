"""Paged decode attention: the Triton kernel (fused and unfused dequantization) against
the fp32 torch reference for every format and both layouts, split-KV merging, GQA; the
decode benchmark's CPU-reference mode end to end."""

import subprocess
import sys

import pytest
import torch

from conftest import CUDA_OK, KERNEL_DEVICE, KERNEL_REL_TOL, requires_cuda
from kvbench.attention import decode_fused, decode_reference, decode_unfused, prepare_fused, q_dtype
from kvbench.kernels_loader import load_kernels
from kvbench.formats.layout import side_shape
from kvbench.formats.paged import quantize_to_pages, side_scales
from kvbench.results import load
from kvbench.spec import FORMATS, PageSpec, get_format, model_from_dict

TINY = model_from_dict({
    "name": "tiny-gqa", "attention_type": "gqa", "source_url": "test", "retrieved": "2026-11-22",
    "config": {"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32},
})


def build(fmt, layout, lens=(40, 17), layer=1, device=KERNEL_DEVICE, seed=0, tokens=16):
    """A pool with real encoded K/V for the given sequence lengths, scattered pages, on
    the device the kernels run on in this session (CUDA, else the interpreter's CPU)."""
    torch.manual_seed(seed)
    spec = PageSpec(TINY, get_format(fmt), tokens, layout)
    B = len(lens)
    P = max(-(-n // tokens) for n in lens)
    pages = torch.randperm(4 * B * P)[: B * P].view(B, P).to(torch.int32)
    pool = torch.zeros(4 * B * P, spec.page_bytes, dtype=torch.uint8)
    N = sum(lens)
    k = torch.randn(N, 2, 32)
    k[..., :2] *= 10  # outlier key channels
    v = torch.randn(N, 2, 32)
    side = None
    shape = side_shape(TINY, spec.fmt)
    if shape:
        side = torch.ones(shape)
        side[layer] = side_scales(k, v, spec.fmt)
    pids = torch.cat([pages[b].repeat_interleave(tokens)[: lens[b]] for b in range(B)])
    slots = torch.cat([torch.arange(n) % tokens for n in lens])
    quantize_to_pages(k, v, pool, pids, slots, spec, side, layer=layer, backend="torch")
    q = torch.randn(B, 8, 32).to(q_dtype(fmt))
    seq = torch.tensor(lens, dtype=torch.int32)
    mv = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return spec, mv(q), mv(pool), mv(pages), mv(seq), mv(side)


def rel(a, b):
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("layout", ["layer", "block"])
def test_fused_kernel_matches_reference(fmt, layout):
    spec, q, pool, bt, lens, side = build(fmt, layout)
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    out = decode_fused(q, pool, bt, lens, spec, 1, side)
    assert rel(out, ref) < KERNEL_REL_TOL


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f].quantized])
def test_unfused_path_matches_reference(fmt):
    spec, q, pool, bt, lens, side = build(fmt, "layer")
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    out = decode_unfused(q, pool, bt, lens, spec, 1, side)
    assert rel(out, ref) < 2e-2  # dequantized to bf16 first: bf16 rounding of K and V


@pytest.mark.parametrize("splits", [1, 2, 4])
def test_split_kv_merge(splits):
    """Splits past the shortest sequence's pages (5 tokens: one page) write empty
    partials that the merge must ignore."""
    spec, q, pool, bt, lens, side = build("fp16", "layer", lens=(70, 5, 33))
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    out = decode_fused(q, pool, bt, lens, spec, 1, side, num_splits=splits)
    assert rel(out, ref) < KERNEL_REL_TOL


def test_split_counts_are_bounded_powers_of_two():
    pa = load_kernels("paged_attention")
    for blocks in (1, 3, 5, 100, 10_000):
        n = pa.choose_splits(2, 8, blocks, torch.device("cpu"))
        assert n & (n - 1) == 0 and 1 <= n <= pa.MAX_SPLITS
    spec, q, pool, bt, lens, side = build("fp16", "layer")
    with pytest.raises(ValueError, match="power of two"):
        decode_fused(q, pool, bt, lens, spec, 1, side, num_splits=3)


@pytest.mark.parametrize("fmt", ["fp16", "fp8_e4m3_token_head", "nvfp4"])
@pytest.mark.parametrize("tile_index", range(6))
def test_every_tile_choice_matches_reference(fmt, tile_index):
    """Each autotune candidate (pages per step, warps, stages) computes the same
    attention, including a context whose last step is a partial tile."""
    pa = load_kernels("paged_attention")
    tile = pa.TILE_CHOICES[tile_index]
    spec, q, pool, bt, lens, side = build(fmt, "layer", lens=(70, 5, 33))
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    for splits in (1, 2):
        out = decode_fused(q, pool, bt, lens, spec, 1, side, tile=tile, num_splits=splits)
        assert rel(out, ref) < KERNEL_REL_TOL, (tile, splits)


@pytest.mark.parametrize("tokens", [8, 64])
@pytest.mark.parametrize("tile_tokens", [16, 64])
def test_tiles_slice_large_pages_and_span_small_ones(tokens, tile_tokens):
    """A step of tile_tokens rows reads several 8-token pages, or a slice of a 64-token
    page; splits still start on page boundaries."""
    pa = load_kernels("paged_attention")
    spec, q, pool, bt, lens, side = build("nvfp4", "layer", lens=(150, 5, 70), tokens=tokens)
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    for splits in (1, 2, 4):
        out = decode_fused(q, pool, bt, lens, spec, 1, side, num_splits=splits,
                           tile=pa.DecodeTile(tile_tokens, 4, 2))
        assert rel(out, ref) < KERNEL_REL_TOL, splits


def test_prepared_launch_reuses_its_buffers():
    """prepare_fused builds arguments and buffers once; every launch writes the same
    output tensor with the same result."""
    spec, q, pool, bt, lens, side = build("nvfp4", "layer")
    launch = prepare_fused(q, pool, bt, lens, spec, 1, side)
    a = launch()
    first = a.clone()
    b = launch()
    assert a.data_ptr() == b.data_ptr() and torch.equal(first, b)
    assert rel(b, decode_reference(q, pool, bt, lens, spec, 1, side)) < KERNEL_REL_TOL


def test_head_dim_must_be_a_power_of_two():
    pa = load_kernels("paged_attention")
    with pytest.raises(ValueError, match="head_dim"):
        pa.check_shape(16, 96)
    with pytest.raises(ValueError, match="page"):
        pa.check_shape(24, 128)
    pa.check_shape(1024, 128)  # large pages are read in tiles of at most 64 rows


def test_reference_is_softmax_attention():
    """The reference itself against a direct computation on unpaged fp16 K/V."""
    spec, q, pool, bt, lens, side = build("fp16", "layer", lens=(16,), device="cpu")
    from kvbench.formats.paged import dequantize_pages
    k, v = dequantize_pages(pool, bt, spec, side, layer=1, dtype=torch.float32, backend="torch")
    kk = k[0, :16].repeat_interleave(4, dim=1)  # [16, 8, 32] GQA expanded
    vv = v[0, :16].repeat_interleave(4, dim=1)
    s = torch.einsum("hd,nhd->hn", q[0].float(), kk) / 32 ** 0.5
    expect = torch.einsum("hn,nhd->hd", s.softmax(-1), vv)
    assert torch.allclose(decode_reference(q, pool, bt, lens, spec, 1, side)[0], expect, atol=1e-6)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_zero_copy_kernel_on_cuda(fmt):
    """The kernel reading pinned host pages in place (unified addressing)."""
    spec, q, pool, bt, lens, side = build(fmt, "layer", device="cuda")
    ref = decode_reference(q, pool, bt, lens, spec, 1, side)
    host = pool.cpu().pin_memory()
    zc = decode_fused(q, host, bt, lens, spec, 1, side, zero_copy=True)
    assert rel(zc, ref) < KERNEL_REL_TOL


def test_decode_bench_cpu_reference_end_to_end(tmp_path):
    out = tmp_path / "d.json"
    r = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "decode", "--format", "fp16,nvfp4",
         "--set", "decode.dram.shapes=1x64", "--set", "decode.nvme.shapes=1x64",
         "--samples", "2", "--warmup", "0", "--no-progress", "-o", str(out), "--nvme-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cases = load(out)["cases"]
    assert all(c["status"] in ("ok", "skipped") for c in cases), [c["reason"] for c in cases]
    checks = [c for c in cases if c["config"].get("kind") == "kernel_check"]
    assert {c["config"]["format"] for c in checks} == {"fp16", "nvfp4"}
    assert all(c["metrics"]["rel_err"] < 2e-2 for c in checks)
    ok = [c for c in cases if c["status"] == "ok" and c["config"].get("kind") == "decode"]
    if not CUDA_OK:
        assert {c["config"]["placement"] for c in ok} == {"dram", "nvme"}
        assert all("CPU reference" in c["notes"][0] for c in ok)
        skipped = {c["config"]["placement"] for c in cases if c["status"] == "skipped"}
        assert skipped == {"hbm", "dram_prefetch", "dram_zero_copy", "hot_window"}
    for c in ok:
        m = c["metrics"]
        assert m["tok_s"] == pytest.approx(1 / m["step_s"], rel=1e-9)
        assert m["kv_bytes_per_step"] == 32 * 4 * c["config"]["batch"] * (
            -(-c["config"]["context"] // 16) * 16) * (4096 if c["config"]["format"] == "fp16" else 1152) // 4
    nv = [c for c in ok if c["config"]["format"] == "nvfp4"]
    assert nv and all("speedup_vs_fp16" in c["metrics"] for c in nv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


@requires_cuda
@pytest.mark.gpu
def test_gpu_decode_suite_small(tmp_path):
    """Every placement at small shapes on CUDA: ok (verified against the reference inside
    each case) or skipped with a reason."""
    out = tmp_path / "d.json"
    small = ["--set", "decode.hbm.shapes=4x1024", "--set", "decode.dram_prefetch.shapes=2x1024",
             "--set", "decode.dram_zero_copy.shapes=2x1024", "--set", "decode.nvme.shapes=2x1024",
             "--set", "decode.hot_window=256"]
    r = subprocess.run([sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "decode", "--format",
                        "fp16,fp8_e4m3,nvfp4", *small, "--samples", "3", "--warmup", "1",
                        "--no-progress", "-o", str(out), "--nvme-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = load(out)["cases"]
    errors = [(c["name"], c["reason"]) for c in cases if c["status"] == "error"]
    assert not errors, errors
    ok = {c["config"].get("placement") for c in cases if c["status"] == "ok"}
    assert {"hbm", "dram_prefetch", "dram_zero_copy", "nvme", "hot_window"} <= ok
    for c in cases:
        if c["status"] == "ok" and c["config"].get("kind") == "decode":
            m = c["metrics"]
            assert m["pct_of_roofline"] > 0 and m["rel_err"] < 2e-2, c["name"]
            if c["config"]["format"] != "fp16":
                assert "speedup_vs_fp16" in m, c["name"]
            if c["config"]["placement"] in ("hbm", "dram_zero_copy"):
                assert "eager_step_s" in m and c["config"]["tile"], c["name"]


def test_every_non_fp16_case_relates_to_fp16():
    """Derived fields are consistent: fused and unfused quantized cases alike get a
    speed-up over fused fp16 of the same placement and shape; unfused cases also get
    their time over the fused case's."""
    from kvbench.bench.decode import _relate
    from kvbench.results import make_case

    def case(fmt, fused, step):
        cfg = {"kind": "decode", "placement": "hbm", "format": fmt, "batch": 4, "context": 1024,
               "fused": fused, "device": "cuda"}
        c = make_case("decode", f"hbm/{fmt}/{fused}", cfg, samples={"step_s": [step]})
        c["metrics"]["tok_s"] = 4 / step
        return c
    ctx = type("Ctx", (), {"done": []})()
    for fmt, fused, step in (("fp16", True, 4.0), ("nvfp4", True, 1.0), ("nvfp4", False, 2.0)):
        c = case(fmt, fused, step)
        _relate(ctx, c)
        ctx.done.append(c)
    fp16, fused, unfused = ctx.done
    assert "speedup_vs_fp16" not in fp16["metrics"]
    assert fused["metrics"]["speedup_vs_fp16"] == pytest.approx(4.0)
    assert unfused["metrics"]["speedup_vs_fp16"] == pytest.approx(2.0)
    assert unfused["metrics"]["unfused_over_fused_time"] == pytest.approx(2.0)


def test_reads_above_the_roofline_are_flagged():
    """The roofline is sampled alternately with the step (a device copy as one more arm):
    KV reads whose paired share of it is above 100% beyond noise are flagged."""
    from kvbench.bench import decode as D
    from kvbench.measure import paired

    class FakeCache:
        B, kv_bytes_per_step = 4, 10**9  # 1 GB read per step
    ctx = type("Ctx", (), {"done": []})()
    cfg = {"kind": "decode", "placement": "hbm", "format": "fp16", "batch": 4, "context": 1024,
           "fused": True, "device": "cuda"}

    def run(copy_s):
        arms = {"step": paired.Arm(lambda k: [0.1] * k, 4), "hbm_copy": paired.Arm(lambda k: [copy_s] * k, 2e9)}
        res = paired.interleave(arms, {"pct_of_roofline": lambda s: (1e9 / s["step"]) / (2e9 / s["hbm_copy"])},
                                budget_s=10)
        return D._finish(ctx, "hbm/fp16/4x1024", dict(cfg), FakeCache(), res, [], percent=("pct_of_roofline",))
    # 0.1 s steps = 10 GB/s of KV reads against a copy at 5 GB/s: impossible, flagged
    c = run(0.4)
    assert c["flags"] == ["above_ceiling"] and c["metrics"]["pct_of_roofline"] == pytest.approx(200)
    assert c["metrics"]["roofline_gbps"] == pytest.approx(5.0)
    ok = run(0.1)  # a copy at 20 GB/s: the reads are at half of it
    assert "flags" not in ok and ok["metrics"]["pct_of_roofline"] == pytest.approx(50)
    assert ok["metrics"]["roofline_tok_s"] == pytest.approx(4 / (1e9 / 20e9))


def test_tier_roofline_takes_the_slower_leg_per_pair():
    from kvbench.bench import decode as D
    from kvbench.measure import paired

    class FakeCache:
        kv_bytes_per_step = 10**9
    arms = {"step": paired.Arm(None, 1), "h2d": paired.Arm(None, 1e9), "hbm_copy": paired.Arm(None, 2e9),
            "seq": paired.Arm(None, 1e9)}
    f = D._tier_roofline(FakeCache(), 5 * 10**8, arms)
    # the tier: min(h2d 10 GB/s, file 2 GB/s) -> 0.25 s for 0.5 GB; HBM: 1 GB at 20 GB/s = 0.05 s
    assert f({"step": 0.5, "h2d": 0.1, "seq": 0.5, "hbm_copy": 0.1}) == pytest.approx(0.25 / 0.5)
    del arms["seq"]
    f = D._tier_roofline(FakeCache(), 5 * 10**8, arms)
    assert f({"step": 0.5, "h2d": 0.1, "hbm_copy": 0.1}) == pytest.approx(0.05 / 0.5)


def _decode_ctx(tmp_path, **kw):
    from kvbench.bench import RunContext

    return RunContext(cuda=False, quick=True, model=TINY, formats=["fp16"], tokens_per_page=16,
                      layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1, **kw)


def test_decode_pages_come_from_the_paged_store_layer_major(tmp_path):
    """The decode batch's pages are a PagedKVStore's over a PagePool: page p of sequence
    b in layer l at id l*B*P + b*P + p, so each layer is one run of rows (one copy)."""
    from kvbench.bench.decode.cache import Cache, LayerStore
    from kvbench.store import PagePool
    from kvbench.tiers import DramTier

    cache = Cache(_decode_ctx(tmp_path), "fp16", 3, 70)  # 5 pages per sequence, the last partial
    B, P = 3, 5
    assert (cache.B, cache.P, cache.BP, cache.L) == (B, P, B * P, 2)
    paged = LayerStore(cache, PagePool(DramTier(pinned=False), cache.spec, cache.L * cache.BP))
    tables = paged.tables("cpu")
    for layer in range(cache.L):
        assert paged.rows[layer] == range(layer * B * P, (layer + 1) * B * P)
        assert tables[layer].dtype == torch.int32 and tables[layer].is_contiguous()
        assert tables[layer].tolist() == [[layer * B * P + b * P + p for p in range(P)] for b in range(B)]
        assert paged.view(layer).data_ptr() == paged.pool.tensor[layer * B * P].data_ptr()
    one = LayerStore(cache, PagePool(DramTier(pinned=False), cache.spec, cache.BP), layers=1)
    assert len(one.tables("cpu")) == 1 and one.tables("cpu")[0].tolist() == tables[0].tolist()


def test_hot_window_ring_tables(tmp_path):
    """Staging slots first, then every layer's hot pages, in one HBM pool: per (slot,
    layer) the cold blocks point into the slot, the hot blocks into the layer's own."""
    from kvbench.bench.decode.cache import Cache, LayerStore
    from kvbench.bench.decode.lower import RING_SLOTS, _ring_tables
    from kvbench.store import PagePool
    from kvbench.tiers import DramTier

    cache = Cache(_decode_ctx(tmp_path), "fp16", 3, 70)
    B, P, L, R, T = cache.B, cache.P, cache.L, RING_SLOTS, 16
    hot_blocks = 2  # a window of 20 tokens: the last two pages
    cold = P - hot_blocks
    pool = PagePool(DramTier(pinned=False), cache.spec, R * B * P + L * B * hot_blocks)
    slots = [LayerStore(cache, pool, layers=1) for _ in range(R)]
    hot = LayerStore(cache, pool, tokens=cache.C - cold * T)
    assert [len(r) for r in hot.rows] == [B * hot_blocks] * L
    got = _ring_tables(slots, hot, cold, L)
    for s in range(R):
        for layer in range(L):
            expect = [[s * B * P + b * P + p for p in range(cold)]
                      + [R * B * P + layer * B * hot_blocks + b * hot_blocks + j for j in range(hot_blocks)]
                      for b in range(B)]
            assert got[(s, layer)].tolist() == expect
    plain = _ring_tables(slots, None, P, L)
    assert plain[(1, 0)].tolist() == [[B * P + b * P + p for p in range(P)] for b in range(B)]
