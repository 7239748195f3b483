"""Triton quantize / dequantize kernels against the torch reference, byte for byte.

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set here
before triton is imported). The interpreter's own fp32->fp8 and fp32->bf16 casts round
wrongly, so there the kernels use their integer-exact converts (native_cvt=False, the
default when interpreting); the hardware-convert paths are checked on CUDA only."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kvbench.errors import KvbenchError  # noqa: E402
from kvbench.formats import codecs as C  # noqa: E402
from kvbench.formats import paged  # noqa: E402
from kvbench.kernels_loader import load_kernels  # noqa: E402
from kvbench.spec import FORMATS, PageSpec, get_format, model_from_dict  # noqa: E402

from conftest import KERNEL_DEVICE  # noqa: E402

Q = load_kernels("quant")
CUDA = KERNEL_DEVICE == "cuda" and not Q.interpreting()
DEV = KERNEL_DEVICE
ALL = list(FORMATS)
gpu_only = pytest.mark.skipif(not CUDA, reason="hardware fp8 converts need a CUDA device "
                              "(the interpreter's fp8 downcast rounds wrongly)")


def tiny(kind="gqa"):
    if kind == "mla":
        cfg = {"num_hidden_layers": 2, "num_attention_heads": 4, "kv_lora_rank": 64,
               "qk_rope_head_dim": 32}
    else:
        cfg = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 64}
    return model_from_dict({"name": f"tiny-{kind}", "attention_type": kind, "config": cfg,
                            "source_url": "test", "retrieved": "2026-01-01"})


# ---------------------------------------------------------------------------- helpers
@triton.jit
def _apply(x_ptr, y_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    m = o < n
    if OP == 0:
        tl.store(y_ptr + o, Q.e4m3_to_f32(tl.load(x_ptr + o, mask=m, other=0)), mask=m)
    elif OP == 1:
        tl.store(y_ptr + o, Q.f32_to_e4m3(tl.load(x_ptr + o, mask=m, other=0.0)), mask=m)
    elif OP == 2:
        tl.store(y_ptr + o, Q.dequant_e2m1(tl.load(x_ptr + o, mask=m, other=0)), mask=m)
    elif OP == 3:
        tl.store(y_ptr + o, Q.f32_to_e2m1(tl.load(x_ptr + o, mask=m, other=0.0)), mask=m)
    elif OP == 4:
        tl.store(y_ptr + o, Q.e8m0_to_f32(tl.load(x_ptr + o, mask=m, other=0)), mask=m)
    elif OP == 5:
        tl.store(y_ptr + o, Q.f32_to_bf16_bits(tl.load(x_ptr + o, mask=m, other=0.0)), mask=m)
    elif OP == 6:
        tl.store(y_ptr + o, Q.f32_to_e4m3_fast(tl.load(x_ptr + o, mask=m, other=0.0)), mask=m)
    else:
        tl.store(y_ptr + o, Q.e4m3_to_f32_fast(tl.load(x_ptr + o, mask=m, other=0)), mask=m)


def apply(op: int, x: torch.Tensor, out_dtype) -> torch.Tensor:
    x = x.to(DEV).contiguous()
    y = torch.empty(x.numel(), dtype=out_dtype, device=DEV)
    _apply[(1,)](x, y, x.numel(), OP=op, BLOCK=triton.next_power_of_2(x.numel()))
    return y.cpu()


def fp8_probe() -> torch.Tensor:
    """fp32 values in [-448, 448]: every e4m3 value, every midpoint (ties), one ulp
    either side of each midpoint, subnormals, zeros, and random log-uniform values."""
    vals = C.e4m3_decode(torch.arange(0x7F, dtype=torch.uint8))
    mids = (vals[1:] + vals[:-1]) / 2
    up = torch.nextafter(mids, torch.full_like(mids, 1e9))
    down = torch.nextafter(mids, torch.zeros_like(mids))
    g = torch.Generator().manual_seed(0)
    rnd = torch.exp2(torch.rand(800, generator=g) * 22 - 13)
    tiny_ = torch.tensor([0.0, 1e-30, 2.0**-10, 2.0**-11, 3 * 2.0**-11, 2.0**-126])
    x = torch.cat([vals, mids, up, down, rnd, tiny_])
    return torch.cat([x, -x]).clamp(-448, 448)


def test_e4m3_decode_all_codes():
    codes = torch.arange(256, dtype=torch.int32)
    got = apply(0, codes, torch.float32)
    want = C.e4m3_decode(codes.to(torch.uint8))
    assert torch.equal(got.nan_to_num(7.0).view(torch.int32), want.nan_to_num(7.0).view(torch.int32))


def test_e4m3_encode_integer_path_matches_torch():
    x = fp8_probe()
    assert torch.equal(apply(1, x, torch.int32).to(torch.uint8), C.e4m3_encode(x))


def test_e2m1_and_e8m0():
    codes = torch.arange(16, dtype=torch.int32)
    assert torch.equal(apply(2, codes, torch.float32), C.e2m1_decode(codes.to(torch.uint8)))
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 9.0, -0.0, -0.2]),
                   torch.randn(500, generator=g) * 4])
    y = torch.cat([y, -y])
    assert torch.equal(apply(3, y, torch.int32).to(torch.uint8), C.e2m1_encode(y))
    e = torch.arange(256, dtype=torch.int32)
    got, want = apply(4, e, torch.float32), C.e8m0_decode(e.to(torch.uint8))
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))


def test_bf16_rounding():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, generator=g) * 1e3
    ties = (torch.randint(0, 2**15, (200,), generator=g, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)
    ties = ties[torch.isfinite(ties)]  # finite inputs only (the kernels refuse NaN/Inf)
    x = torch.cat([x, ties, -ties])
    got = apply(5, x, torch.int32) & 0xFFFF
    want = x.bfloat16().view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(got, want)


@gpu_only
@pytest.mark.gpu
def test_hardware_converts_match_integer_paths():
    x = fp8_probe()
    assert torch.equal(apply(6, x, torch.int32), apply(1, x, torch.int32))
    codes = torch.arange(256, dtype=torch.int32)
    fast, exact = apply(7, codes, torch.float32), apply(0, codes, torch.float32)
    assert torch.equal(fast.nan_to_num(7.0), exact.nan_to_num(7.0))


# ---------------------------------------------------------------------------- pools
def _setup(fmt, layout, kind="gqa", n=6, in_dtype=torch.float16, seed=0):
    m = tiny(kind)
    spec = PageSpec(m, get_format(fmt), 4, layout)
    g = torch.Generator().manual_seed(seed)
    shape = (n, m.kv_heads, m.head_dim)
    k = (torch.randn(*shape, generator=g) * 2)
    k[..., 3] *= 25  # an outlier channel
    v = torch.randn(*shape, generator=g) if m.kv_factor == 2 else None
    side = None
    sd = paged.side_scales(k, v, fmt)
    if sd is not None:
        side = torch.stack([sd, sd * 1.5]).to(DEV)
    k = k.to(in_dtype).to(DEV)
    v = v.to(in_dtype).to(DEV) if v is not None else None
    pool = torch.randint(0, 256, (5, spec.page_bytes + 16), dtype=torch.uint8, generator=g).to(DEV)
    ids = torch.tensor([3, 3, 0, 1, 1, 4][:n], device=DEV)
    slots = torch.tensor([0, 3, 2, 1, 0, 3][:n], device=DEV)
    return spec, k, v, side, pool, ids, slots


DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("layout", ["layer", "block"])
@pytest.mark.parametrize("fmt", ALL)
def test_quantize_to_pages_matches_reference(fmt, layout):
    in_dtype = DTYPES[(ALL.index(fmt) + (layout == "block")) % 3]
    spec, k, v, side, pool, ids, slots = _setup(fmt, layout, in_dtype=in_dtype)
    ref = pool.clone()
    Q.quantize_to_pages(k, v, pool, ids, slots, spec, side, layer=1)
    paged.quantize_to_pages(k, v, ref, ids, slots, spec, side, layer=1, backend="torch")
    assert torch.equal(pool, ref)  # written bytes equal; every other byte untouched


@pytest.mark.parametrize("fmt", ALL)
def test_dequantize_pages_matches_reference(fmt):
    spec, k, v, side, pool, ids, slots = _setup(fmt, "block", seed=1)
    pool.zero_()  # slots never written decode as zeros (random bytes could be NaN codes)
    paged.quantize_to_pages(k, v, pool, ids, slots, spec, side, layer=1, backend="torch")
    table = torch.tensor([[3, 0], [1, 4]], device=DEV)
    for dtype in DTYPES:
        got = Q.dequantize_pages(pool, table, spec, side, layer=1, dtype=dtype)
        want = paged.dequantize_pages(pool, table, spec, side, layer=1, dtype=dtype, backend="torch")
        for a, b in zip(got, want):
            assert a.shape == (2, 8, 2, 64) and a.dtype == dtype
            assert torch.equal(a.view(torch.int16) if dtype != torch.float32 else a.view(torch.int32),
                               b.view(torch.int16) if dtype != torch.float32 else b.view(torch.int32))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e4m3_token_head", "nvfp4", "mxfp4"])
def test_mla_latent_pages(fmt):
    spec, k, v, side, pool, ids, slots = _setup(fmt, "layer", kind="mla")
    assert v is None and spec.model.head_dim == 96
    pool.zero_()
    ref = pool.clone()
    Q.quantize_to_pages(k, None, pool, ids, slots, spec, side, layer=0)
    paged.quantize_to_pages(k, None, ref, ids, slots, spec, side, layer=0, backend="torch")
    assert torch.equal(pool, ref)
    got_k, got_v = Q.dequantize_pages(pool, torch.tensor([1, 3], device=DEV), spec, side,
                                      dtype=torch.float32)
    want_k, _ = paged.dequantize_pages(pool, torch.tensor([1, 3], device=DEV), spec, side,
                                       dtype=torch.float32, backend="torch")
    assert got_v is None and torch.equal(got_k, want_k)


def test_dispatch_through_quantized_pages():
    from kvbench import quantized_pages as QP

    spec, k, v, side, pool, ids, slots = _setup("nvfp4", "layer")
    ref = pool.clone()
    QP.quantize_to_pages(k, v, pool, ids, slots, spec, side, backend="triton")
    QP.quantize_to_pages(k, v, ref, ids, slots, spec, side, backend="torch")
    assert torch.equal(pool, ref)
    a = QP.dequantize_pages(pool, torch.tensor([3], device=DEV), spec, side, backend="triton")
    b = QP.dequantize_pages(pool, torch.tensor([3], device=DEV), spec, side, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert QP.pick_backend("auto", pool) == ("triton" if pool.is_cuda else "torch")
    with pytest.raises(KvbenchError, match="backend"):
        QP.quantize_to_pages(k, v, pool, ids, slots, spec, side, backend="cuda")
    with pytest.raises(KvbenchError, match="quantized_pages"):  # the reference is torch only
        paged.quantize_to_pages(k, v, pool, ids, slots, spec, side, backend="triton")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy NaN arithmetic in the interpreter
@pytest.mark.parametrize("fmt", ["bf16", "fp8_e4m3", "fp8_e4m3_token_head", "nvfp4"])
def test_nan_rows_are_refused_not_stored(fmt):
    spec, k, v, side, pool, ids, slots = _setup(fmt, "layer")
    k[2, 1, 5] = float("nan")
    v[4, 0, 0] = float("inf")
    before = pool.clone()
    with pytest.raises(KvbenchError, match="2 .*NaN/Inf"):
        Q.quantize_to_pages(k, v, pool, ids, slots, spec, side)
    # the bad (token, head) vectors' bytes are unchanged
    from kvbench.formats.layout import page_map

    pm = page_map(spec)
    for kv, tok, head in ((0, 2, 1), (1, 4, 0)):
        page, slot = int(ids[tok]), int(slots[tok])
        off = pm.values(kv).offset + (slot * pm.heads + head) * pm.value_bytes
        assert torch.equal(pool[page, off:off + pm.value_bytes], before[page, off:off + pm.value_bytes])
    assert not torch.equal(pool, before)  # the good vectors were written


def test_kernel_refusals():
    spec, k, v, side, pool, ids, slots = _setup("fp8_e4m3_head", "layer")
    with pytest.raises(KvbenchError, match="out-of-page"):
        Q.quantize_to_pages(k, v, pool, ids, slots, spec, None)
    with pytest.raises(KvbenchError, match="slots"):
        Q.quantize_to_pages(k, v, pool, ids, slots + 4, spec, side)
    with pytest.raises(KvbenchError, match="expected"):
        Q.quantize_to_pages(k[:, :1], v, pool, ids, slots, spec, side)
    with pytest.raises(KvbenchError, match="page ids"):
        Q.dequantize_pages(pool, torch.tensor([9], device=DEV), spec, side)
    with pytest.raises(KvbenchError, match="dtype"):
        Q.dequantize_pages(pool, torch.tensor([0], device=DEV), spec, side, dtype=torch.int8)
    with pytest.raises(KvbenchError, match="aligned"):
        Q.quantize_to_pages(k, v, pool[:, 1:], ids, slots, spec, side)


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ALL)
def test_cuda_native_and_integer_converts_agree_at_scale(fmt):
    m = model_from_dict({"name": "gqa8", "attention_type": "gqa", "source_url": "t",
                         "retrieved": "2026-01-01",
                         "config": {"num_hidden_layers": 2, "num_attention_heads": 32,
                                    "num_key_value_heads": 8, "head_dim": 128}})
    spec = PageSpec(m, get_format(fmt), 16, "layer")
    n = 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(n, 8, 128, device="cuda", generator=g, dtype=torch.float16) * 3
    v = torch.randn(n, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    sd = paged.side_scales(k, v, fmt)
    side = None if sd is None else torch.stack([sd, sd]).contiguous()
    pages = n // 16
    ids = torch.randperm(pages, device="cuda").repeat_interleave(16)
    slots = torch.arange(16, device="cuda").repeat(pages)
    pools = [torch.zeros(pages, spec.page_bytes, dtype=torch.uint8, device="cuda") for _ in range(3)]
    Q.quantize_to_pages(k, v, pools[0], ids, slots, spec, side, native_cvt=True)
    Q.quantize_to_pages(k, v, pools[1], ids, slots, spec, side, native_cvt=False)
    paged.quantize_to_pages(k, v, pools[2], ids, slots, spec, side, backend="torch")
    assert torch.equal(pools[0], pools[2]) and torch.equal(pools[1], pools[2])
    table = torch.arange(pages, device="cuda")
    for native in (True, False):
        got = Q.dequantize_pages(pools[0], table, spec, side, dtype=torch.bfloat16, native_cvt=native)
        want = paged.dequantize_pages(pools[0], table, spec, side, dtype=torch.bfloat16, backend="torch")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("fmt", ["fp8_e4m3_token_head", "nvfp4"])
def test_speed_measurement_path_runs_small(fmt):
    """The GPU speed case's code path, driven tiny on this device with the host timer:
    checks its bookkeeping and its built-in bit-exactness check, not its speed."""
    from kvbench.measure.speed import measure, speed_config
    from kvbench.timing import time_host

    m = tiny()
    cfg = dict(speed_config(m, fmt, 4, quick=True), tokens=8)
    case = measure("accuracy", f"speed/{fmt}", cfg, m, seed=0, warmup=0, samples=2,
                   device=DEV, timer=time_host)
    met = case["metrics"]
    assert case["status"] == "ok" and met["quant_bit_exact"] and met["dequant_bit_exact"]
    page_bytes = 2 * PageSpec(m, get_format(fmt), 4, "layer").page_bytes
    in_bytes = 8 * 2 * 2 * 64 * 2
    assert met["quant_bytes"] == in_bytes + page_bytes == met["dequant_bytes"]
    assert met["copy_bytes"] == 2 * in_bytes
    assert met["quant_gbps"] > 0 and 0 < met["quant_pct_of_copy"]
    assert len(case["samples"]["copy_s"]) == 2 and case["units"]["quant_gbps"] == "GB/s"
