"""KV formats, torch reference: the page byte map against PageSpec.page_bytes, element
codecs against the OCP tables, round-trip laws (idempotence, exact values survive,
NaN/Inf refused), error bounds, and packing into pages and pools."""

import itertools

import pytest
import torch

from kvbench.errors import KvbenchError
from kvbench.formats import codecs as C
from kvbench.formats import layout, paged
from kvbench.spec import FORMATS, PageSpec, get_format, list_models, load_model, model_from_dict

ALL = list(FORMATS)


def small_model(kind="gqa", layers=2, heads=2, head_dim=64):
    """A tiny ModelSpec (same code paths as the real ones, fast to quantize)."""
    if kind == "mla":
        cfg = {"num_hidden_layers": layers, "num_attention_heads": 4, "kv_lora_rank": 64,
               "qk_rope_head_dim": 32}
    else:
        cfg = {"num_hidden_layers": layers, "num_attention_heads": 2 * heads,
               "num_key_value_heads": heads, "head_dim": head_dim}
    return model_from_dict({"name": f"tiny-{kind}", "attention_type": kind, "config": cfg,
                            "source_url": "test", "retrieved": "2026-01-01"})


def outlier_data(shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * scale
    x[..., 3] *= 20
    return x


def same_quantized(a: C.Quantized, b: C.Quantized) -> bool:
    def eq(x, y):
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
    return eq(a.values, b.values) and eq(a.scales, b.scales) and eq(a.side, b.side)


# ---------------------------------------------------------------------------- byte map
@pytest.mark.parametrize("name", list_models())
def test_page_map_matches_page_bytes_for_every_model(name):
    m = load_model(name)
    for fmt, layout_, tokens in itertools.product(ALL, ("layer", "block"), (1, 16)):
        spec = PageSpec(m, get_format(fmt), tokens, layout_)
        pm = layout.page_map(spec)
        assert pm.page_bytes == spec.page_bytes
        # regions tile the page exactly, in the documented order
        rows = sorted(pm.table(), key=lambda r: r["offset"])
        pos = 0
        for r in rows:
            assert r["offset"] == pos
            pos += r["nbytes"]
        assert pos == spec.page_bytes
        shape = layout.side_shape(m, spec.fmt)
        side_bytes = 0 if shape is None else 4 * shape[0] * shape[1] * shape[2]
        assert side_bytes == m.tensor_scale_bytes(spec.fmt)


def test_region_order_token_head():
    m = load_model("Llama-3.1-8B")  # 8 KV heads x 128
    pm = layout.page_map(PageSpec(m, get_format("fp8_e4m3_token_head"), 16, "layer"))
    n = 16 * 8 * 128
    assert pm.values(0) == layout.Region(0, n)
    assert pm.values(1) == layout.Region(n, n)
    assert pm.scales(0) == layout.Region(2 * n, 16 * 8 * 4)
    assert pm.scales(1) == layout.Region(2 * n + 512, 512)
    blk = layout.page_map(PageSpec(m, get_format("nvfp4"), 16, "block"))
    assert blk.regions == 32
    assert blk.values(0, 1).offset == blk.region_bytes
    assert blk.scales(1, 0) == layout.Region(2 * 16 * 8 * 64 + 16 * 8 * 8, 16 * 8 * 8)
    with pytest.raises(KvbenchError):
        pm.values(2)


def test_mla_page_has_one_tensor():
    m = load_model("DeepSeek-V3")
    pm = layout.page_map(PageSpec(m, get_format("mxfp4"), 64, "layer"))
    assert pm.kv_factor == 1 and pm.heads == 1 and pm.head_dim == 576
    assert pm.page_bytes == 64 * (288 + 18)
    with pytest.raises(KvbenchError):
        pm.values(1)


# ---------------------------------------------------------------------------- element codecs
def test_e2m1_table_and_ties():
    assert C.e2m1_decode(torch.arange(16, dtype=torch.uint8)).tolist()[:8] == list(C.E2M1_VALUES)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0])
    assert C.e2m1_decode(C.e2m1_encode(ties)).tolist() == [0, 1, 1, 2, 2, 4, 4, 6, 6]
    assert C.e2m1_decode(C.e2m1_encode(-ties)).tolist() == [0, -1, -1, -2, -2, -4, -4, -6, -6]
    assert C.e2m1_encode(torch.tensor([-0.0, -0.1])).tolist() == [0, 0]  # zero is +0
    vals = C.e2m1_decode(torch.arange(16, dtype=torch.uint8))
    assert torch.equal(C.e2m1_decode(C.e2m1_encode(vals)), vals + 0.0)  # -0 -> +0


def test_nibble_order():
    codes = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
    packed = C.pack_nibbles(codes)
    assert packed.tolist() == [0x21, 0x43]  # element 0 in the low nibble
    assert torch.equal(C.unpack_nibbles(packed), codes)


def test_e8m0_and_e4m3_codes():
    e = C.e8m0_decode(torch.tensor([0, 1, 127, 130, 254, 255], dtype=torch.uint8))
    assert e[:5].tolist() == [2.0**-127, 2.0**-126, 1.0, 8.0, 2.0**127]
    assert torch.isnan(e[5])
    c = C.e4m3_encode(torch.tensor([448.0, 1000.0, -1e9, 0.0, -0.0, 2.0**-9, 2.0**-10 * 1.01]))
    assert c.tolist() == [0x7E, 0x7E, 0xFE, 0, 0, 1, 1]
    assert C.e4m3_decode(torch.tensor([0x7E, 0x08, 0x01], dtype=torch.uint8)).tolist() == [
        448.0, 2.0**-6, 2.0**-9]


# ---------------------------------------------------------------------------- round-trip laws
@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_quantize_is_idempotent_after_first_pass(fmt, scale):
    x = outlier_data((8, 4, 64), seed=int(scale * 7) % 97, scale=scale)
    q1 = C.quantize(x, fmt)
    q2 = C.quantize(C.dequantize(q1), fmt)
    assert same_quantized(q1, q2)
    # also with a fixed (calibrated elsewhere) side scale
    if q1.side is not None:
        side = q1.side * 1.37
        a = C.quantize(x, fmt, side)
        assert same_quantized(a, C.quantize(C.dequantize(a), fmt, side))


def _representable(fmt: str, g: torch.Generator) -> torch.Tensor:
    """A [6, 2, 64] tensor every value of which the format stores exactly."""
    shape = (6, 2, 64)
    f = get_format(fmt)
    if f.family == "float":
        dt = torch.float16 if f.element == "fp16" else torch.bfloat16
        return (torch.randn(*shape, generator=g) * 100).to(dt).float()
    if f.family == "fp8":
        codes = torch.randint(0, 0x7E, shape, generator=g, dtype=torch.uint8)
        codes |= torch.randint(0, 2, shape, generator=g, dtype=torch.uint8) << 7
        codes[..., 0] = 0x7E  # every (token, head) row reaches 448
        return C.e4m3_decode(codes) * 2.0**-5
    blk = f.block
    nb = 64 // blk
    codes = torch.randint(0, 16, (6, 2, nb, blk), generator=g, dtype=torch.uint8)
    codes[..., 0] = 7  # every block reaches 6
    vals = C.e2m1_decode(codes)
    if f.scale_dtype == "e8m0":  # MX: power-of-two block scales
        e = torch.randint(-20, 20, (6, 2, nb, 1), generator=g)
        return (vals * C.pow2(e)).reshape(shape)
    b = C.e4m3_decode(torch.randint(0x08, 0x7F, (6, 2, nb, 1), generator=g, dtype=torch.uint8))
    b[0, 0, 0] = 448.0  # the tensor's largest block scale
    return (vals * b * 2.0**-3).reshape(shape)


@pytest.mark.parametrize("fmt", ALL)
def test_representable_values_survive_exactly(fmt):
    x = _representable(fmt, torch.Generator().manual_seed(5))
    y = C.roundtrip(x, fmt)
    assert torch.equal(y, x + 0.0)  # bit-exact (a zero comes back as +0)


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_rejected(fmt, bad):
    x = torch.randn(4, 2, 64)
    x[1, 1, 7] = bad
    with pytest.raises(KvbenchError, match="NaN/Inf"):
        C.quantize(x, fmt)
    with pytest.raises(KvbenchError, match="NaN/Inf"):
        C.quantize(x.half(), fmt)


def test_out_of_range_rejected_for_fp16():
    with pytest.raises(KvbenchError, match="range"):
        C.quantize(torch.full((1, 1, 64), 1e6), "fp16")


def test_bad_shapes_and_sides():
    with pytest.raises(KvbenchError):
        C.quantize(torch.randn(4, 2, 40), "mxfp4")  # 40 is not a multiple of 32
    with pytest.raises(KvbenchError):
        C.quantize(torch.randn(64), "fp8_e4m3")
    with pytest.raises(KvbenchError):
        C.quantize(torch.randn(4, 2, 64), "fp8_e4m3_head", torch.ones(3))
    with pytest.raises(KvbenchError):
        C.quantize(torch.randn(4, 2, 64), "nvfp4", torch.tensor([0.0]))
    with pytest.raises(KvbenchError):
        C.get_codec("int3")


BOUNDS = {"fp16": 1e-3, "bf16": 5e-3, "fp8_e4m3": 0.05, "fp8_e4m3_head": 0.05,
          "fp8_e4m3_token_head": 0.05, "nvfp4": 0.15, "mxfp4": 0.25}


@pytest.mark.parametrize("fmt", ALL)
def test_error_bounds_and_sizes(fmt):
    x = torch.randn(32, 4, 128, generator=torch.Generator().manual_seed(1))
    q = C.quantize(x, fmt)
    rel = float((C.dequantize(q) - x).norm() / x.norm())
    assert rel < BOUNDS[fmt]
    f = get_format(fmt)
    in_page = q.values.numel() + (q.scales.numel() if q.scales is not None else 0)
    assert in_page == 32 * 4 * f.vector_bytes(128)
    assert C.quantize(x, fmt).values.equal(q.values)  # deterministic


def test_token_head_beats_per_tensor_on_outliers():
    x = outlier_data((64, 4, 128), seed=3)
    x[5] *= 30  # one loud token
    err = {f: float((C.roundtrip(x, f) - x).norm() / x.norm())
           for f in ("fp8_e4m3", "fp8_e4m3_token_head")}
    assert err["fp8_e4m3_token_head"] < err["fp8_e4m3"]


def test_subnormal_inputs_flush_to_zero():
    x = torch.zeros(1, 1, 32)
    x[0, 0, 0] = 1.0
    x[0, 0, 1] = 1e-39  # fp32 subnormal
    for fmt in ALL[2:]:
        assert C.roundtrip(x, fmt)[0, 0, 1] == 0


# ---------------------------------------------------------------------------- pages and pools
MODELS = {"gqa": small_model(), "mla": small_model("mla")}


def _kv(spec, seed, lead=()):
    m = spec.model
    g = torch.Generator().manual_seed(seed)
    shape = (*lead, spec.tokens, m.kv_heads, m.head_dim)
    k = torch.randn(*shape, generator=g) * 3
    v = torch.randn(*shape, generator=g) if m.kv_factor == 2 else None
    return k, v


@pytest.mark.parametrize("kind", ["gqa", "mla"])
@pytest.mark.parametrize("layout_", ["layer", "block"])
@pytest.mark.parametrize("fmt", ALL)
def test_pack_unpack_page(fmt, layout_, kind):
    m = MODELS[kind]
    spec = PageSpec(m, get_format(fmt), 4, layout_)
    lead = (m.num_layers,) if layout_ == "block" else ()
    k, v = _kv(spec, 11, lead)
    side = None
    if layout.side_count(m, spec.fmt):
        per = [paged.side_scales(k[i] if lead else k, (v[i] if lead else v) if v is not None else None, fmt)
               for i in range(m.num_layers if lead else 1)]
        side = torch.stack(per) if lead else per[0]
    page = paged.pack_page(k, v, spec, side)
    assert page.dtype == torch.uint8 and page.numel() == spec.page_bytes
    k2, v2 = paged.unpack_page(page, spec, side)
    for x, y, kv in ((k, k2, 0), (v, v2, 1)):
        if x is None:
            assert y is None
            continue
        for r in range(m.num_layers if lead else 1):
            xr, yr = (x[r], y[r]) if lead else (x, y)
            sd = None if side is None else (side[r, kv] if lead else side[kv])
            assert torch.equal(yr, C.roundtrip(xr, fmt, sd))


@pytest.mark.parametrize("kind", ["gqa", "mla"])
@pytest.mark.parametrize("fmt", ALL)
def test_pool_write_read_matches_pack_page(fmt, kind):
    """Writing every slot of a page through quantize_to_pages gives pack_page's bytes;
    dequantize_pages reads them back as unpack_page does."""
    m = MODELS[kind]
    for layout_ in ("layer", "block"):
        spec = PageSpec(m, get_format(fmt), 4, layout_)
        side = paged.unit_side(m, fmt)
        if side is not None:
            side = side * torch.tensor([0.02, 0.05])[: m.kv_factor].view(1, -1, 1)
        pool = torch.randint(0, 256, (3, spec.page_bytes + 8), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(2))
        untouched = pool[0].clone()
        lead = (m.num_layers,) if layout_ == "block" else ()
        k, v = _kv(spec, 4, lead)
        layers = range(m.num_layers) if layout_ == "block" else [1]
        for layer in layers:
            kl = k[layer] if lead else k
            vl = (v[layer] if lead else v) if v is not None else None
            order = torch.tensor([2, 0, 3, 1])
            paged.quantize_to_pages(kl[order], None if vl is None else vl[order], pool,
                                    torch.full((4,), 2), order, spec, side, layer=layer,
                                    backend="torch")
        want_side = None if side is None else (side if lead else side[1])
        want = paged.pack_page(k, v, spec, want_side)
        assert torch.equal(pool[2, :spec.page_bytes], want)
        assert torch.equal(pool[0], untouched)
        for layer in layers:
            got = paged.dequantize_pages(pool, torch.tensor([2, 2]), spec, side, layer=layer,
                                         dtype=torch.float32, backend="torch")
            ref = paged.unpack_page(pool[2], spec, want_side)
            for g_, r_ in zip(got, ref):
                if r_ is None:
                    assert g_ is None
                    continue
                r_ = r_[layer] if lead else r_
                assert g_.shape == (8, m.kv_heads, m.head_dim)
                assert torch.equal(g_[:4], r_) and torch.equal(g_[4:], r_)


def test_pool_refusals():
    m = MODELS["gqa"]
    spec = PageSpec(m, get_format("fp8_e4m3"), 4, "layer")
    pool = torch.zeros(2, spec.page_bytes, dtype=torch.uint8)
    k = torch.randn(1, 2, 64)
    ids, slots = torch.tensor([0]), torch.tensor([0])
    with pytest.raises(KvbenchError, match="out-of-page"):
        paged.quantize_to_pages(k, k, pool, ids, slots, spec, None, backend="torch")
    side = paged.unit_side(m, "fp8_e4m3")
    with pytest.raises(KvbenchError, match="slots"):
        paged.quantize_to_pages(k, k, pool, ids, torch.tensor([4]), spec, side, backend="torch")
    with pytest.raises(KvbenchError, match="stride"):
        paged.quantize_to_pages(k, k, pool[:, :-1], ids, slots, spec, side, backend="torch")
    with pytest.raises(KvbenchError, match="backend"):
        paged.quantize_to_pages(k, k, pool, ids, slots, spec, side, backend="cuda")
    with pytest.raises(KvbenchError, match="NaN/Inf"):
        paged.quantize_to_pages(k * float("nan"), k, pool, ids, slots, spec, side, backend="torch")
    assert int(pool.sum()) == 0  # nothing was stored


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ALL)
def test_reference_is_the_same_on_cpu_and_cuda(fmt):
    x = outlier_data((64, 8, 128), seed=9).half()
    a = C.quantize(x, fmt)
    b = C.quantize(x.cuda(), fmt)
    for p, q in ((a.values, b.values), (a.scales, b.scales), (a.side, b.side)):
        assert (p is None and q is None) or torch.equal(p, q.cpu())
    assert torch.equal(C.dequantize(a), C.dequantize(b).cpu())


def test_unpack_page_at_an_odd_byte_offset():
    """A page slice may start at any byte (a pool with an odd stride)."""
    spec = PageSpec(MODELS["gqa"], get_format("fp8_e4m3_token_head"), 2, "layer")
    k, v = _kv(spec, 1)
    page = paged.pack_page(k, v, spec)
    buf = torch.zeros(page.numel() + 1, dtype=torch.uint8)
    buf[1:] = page
    k2, v2 = paged.unpack_page(buf[1:], spec)
    assert torch.equal(k2, C.roundtrip(k, "fp8_e4m3_token_head"))
