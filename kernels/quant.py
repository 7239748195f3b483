"""Triton kernels for quantized KV pages: quantize-on-store, dequantize-on-load.

Import as ``kvbench.kernels_loader.load_kernels("quant")`` (never ``import kernels``).
The byte map of a page is ``kvbench.formats.layout``; the torch reference these kernels
match byte for byte is ``kvbench.formats.codecs`` / ``kvbench.formats.paged``.

Host API (shapes, dtypes):
    quantize_to_pages(k, v, pool, page_ids, slots, spec, side=None, *, layer=0,
                      check=True, native_cvt=None) -> None
        k, v: [N, H, D] fp16/bf16/fp32 on the pool's device (v None for MLA);
        pool: uint8 [num_pages, stride]; page_ids, slots: int [N]; side: fp32
        [num_layers, kv_factor, S] out-of-page scales (None when the format has none).
    dequantize_pages(pool, block_table, spec, side=None, *, layer=0,
                     dtype=torch.float16, check=True, native_cvt=None) -> (k, v)
        block_table: int [..., P]; returns k, v [..., P*T, H, D] in dtype (fp16, bf16,
        fp32); token j of the table's page i is row i*T + j.

Device helpers (``@triton.jit``, callable from other kernels, e.g. decode attention):
    e4m3_to_f32(code)       int e4m3 bits -> fp32, integer-exact (0x7F/0xFF -> NaN)
    e4m3_to_f32_fast(code)  the same through the hardware cvt (CUDA sm_89+)
    f32_to_e4m3(x)          fp32 (|x| <= 448) -> int32 code, RNE, integer-exact
    f32_to_e4m3_fast(x)     the same through cvt.rn.satfinite (CUDA sm_89+)
    dequant_e2m1(code)      int E2M1 code 0..15 -> fp32
    f32_to_e2m1(y)          fp32 -> int32 E2M1 code, RNE, saturating at +-6
    e8m0_to_f32(code)       int e8m0 byte -> fp32 2^(code-127)
    unpack_fp4(byte)        uint8 packed byte -> (low-nibble fp32, high-nibble fp32)
    bf16_bits_to_f32(bits), f32_to_bf16_bits(x)   exact bf16 conversions via integers

Interpreter (TRITON_INTERPRET=1, CPU CI): its fp32->fp8 and fp32->bf16 casts round
wrongly, so the integer-exact paths above are used there (``native_cvt=False``, the
default when interpreting); compiled CUDA uses the hardware fp8 converts by default.
Both paths produce the same bytes; loads are widened to fp32 right away (no bf16 math).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kvbench.errors import KvbenchError
from kvbench.formats import codecs as C
from kvbench.formats.layout import page_map, region_for_layer, side_count

#: Constants used inside kernels (Triton reads globals only when they are constexpr).
F32_MAX = tl.constexpr(3.4028234663852886e38)  # largest finite fp32
F32_MIN_NORMAL = tl.constexpr(C.F32_MIN_NORMAL)
AMAX_FLOOR = tl.constexpr(C.AMAX_FLOOR)
MASK21 = tl.constexpr(C.scale_mask(C.FP8_SCALE_BITS) - (1 << 32))  # as int32


# ======================================================================== device helpers
@triton.jit
def e4m3_to_f32(code):
    """OCP E4M3 bits (any int type, low 8 bits used) -> fp32, exact, integer ops only."""
    c = code.to(tl.int32) & 0xFF
    mag = c & 0x7F
    e = mag >> 3
    m = mag & 7
    normal = ((e + 120) << 23) | (m << 20)  # rebias 7 -> 127, 3 mantissa bits -> top of 23
    normal = tl.where(mag == 0x7F, 0x7FC00000, normal)  # S.1111.111 is NaN (OFP8 e4m3fn)
    v = tl.where(e > 0, normal.to(tl.float32, bitcast=True), m.to(tl.float32) * 0.001953125)
    return tl.where((c & 0x80) != 0, -v, v)


@triton.jit
def e4m3_to_f32_fast(code):
    """OCP E4M3 bits -> fp32 through the hardware convert (CUDA sm_89+)."""
    return code.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)


@triton.jit
def f32_to_e4m3(x):
    """fp32 already clamped to [-448, 448] -> int32 E4M3 code, round to nearest even,
    computed with integer ops only (exact under the interpreter too). Zero -> 0x00."""
    u = x.to(tl.int32, bitcast=True)
    a = u & 0x7FFFFFFF
    # normal e4m3 (|x| >= 2^-6): drop 20 mantissa bits with RNE; rebias exponent 127 -> 7
    nrm = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal e4m3 (|x| < 2^-6): round |x| / 2^-9 to an integer, RNE, from the bits
    ex = a >> 23
    sig = (a & 0x7FFFFF) | 0x800000
    sh = tl.minimum(141 - ex, 25)  # 141 = 127 + 14: |x| / 2^-9 = sig >> (14 - exponent)
    q = sig >> sh
    rem = sig & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    code = tl.where(a >= (121 << 23), nrm, q)
    neg = (u < 0) & (code != 0)
    return code | (neg.to(tl.int32) << 7)


@triton.jit
def f32_to_e4m3_fast(x):
    """fp32 clamped to [-448, 448] -> int32 E4M3 code via the hardware convert (RNE,
    satfinite; CUDA sm_89+). Zero -> 0x00."""
    c = x.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
    return tl.where(c == 0x80, 0, c)


@triton.jit
def dequant_e2m1(code):
    """E2M1 code (int, 0..15; sign in bit 3) -> fp32: 0, .5, 1, 1.5, 2, 3, 4, 6."""
    c = code.to(tl.int32)
    mag = c & 7
    e = mag >> 1
    m = mag & 1
    normal = ((e + 126) << 23) | (m << 22)  # (1 + m/2) * 2^(e-1)
    v = tl.where(e > 0, normal.to(tl.float32, bitcast=True), m.to(tl.float32) * 0.5)
    return tl.where((c & 8) != 0, -v, v)


@triton.jit
def f32_to_e2m1(y):
    """fp32 -> int32 E2M1 code, round to nearest even, saturating at +-6; zero -> 0.
    Thresholds are the midpoints; ">" where the lower neighbour's code is even."""
    a = tl.abs(y)
    m = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
    m += (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
    m += (a > 5.0).to(tl.int32)
    neg = (y < 0) & (m > 0)
    return m | (neg.to(tl.int32) << 3)


@triton.jit
def e8m0_to_f32(code):
    """E8M0 byte (int) -> fp32 2^(code - 127); 0 -> 2^-127, 255 -> NaN (OCP MX v1.0 5.4.1)."""
    c = code.to(tl.int32) & 0xFF
    bits = tl.where(c == 0, 0x00400000, c << 23)
    bits = tl.where(c == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def unpack_fp4(byte):
    """Packed byte (two E2M1 codes, element 2i in the low nibble) -> (even, odd) fp32."""
    b = byte.to(tl.int32)
    return dequant_e2m1(b & 0xF), dequant_e2m1((b >> 4) & 0xF)


@triton.jit
def bf16_bits_to_f32(bits):
    """bf16 bits (int16/int32, low 16 used) -> fp32 (exact)."""
    return ((bits.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)


@triton.jit
def f32_to_bf16_bits(x):
    """fp32 -> int32 holding bf16 bits, round to nearest even (finite inputs)."""
    u = x.to(tl.int32, bitcast=True)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


@triton.jit
def _store_out(ptr, x, mask, OUT: tl.constexpr):
    """Store fp32 x as OUT: 0 fp32, 1 fp16, 2 bf16 (ptr is an int16 view for bf16)."""
    if OUT == 2:
        tl.store(ptr, f32_to_bf16_bits(x).to(tl.int16), mask=mask)
    elif OUT == 1:
        tl.store(ptr, x.to(tl.float16), mask=mask)
    else:
        tl.store(ptr, x, mask=mask)


@triton.jit
def _src_rows(pid, n_rows, H, stride_n, stride_h, page_ids_ptr, slots_ptr, page_stride,
              BLOCK_R: tl.constexpr):
    """Rows = (token, head) vectors of the input. Returns the row mask, the source row
    offset, the page byte base and the vector index (slot * H + head) in the page."""
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    n = rows // H
    h = rows % H
    page = tl.load(page_ids_ptr + n, mask=rmask, other=0).to(tl.int64)
    slot = tl.load(slots_ptr + n, mask=rmask, other=0).to(tl.int64)
    return rmask, n * stride_n + h * stride_h, page * page_stride, slot * H + h, h


@triton.jit
def _page_rows(pid, n_rows, TH, H, table_ptr, page_stride, BLOCK_R: tl.constexpr):
    """Rows = (table entry, slot, head) vectors of the output. Returns the row mask, the
    output row, the page byte base, the vector index in the page and the head."""
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    p = rows // TH
    vec = rows % TH
    page = tl.load(table_ptr + p, mask=rmask, other=0).to(tl.int64)
    return rmask, rows, page * page_stride, vec, vec % H


@triton.jit
def _note_bad(bad_ptr, rmask, ok):
    nbad = tl.sum((rmask & (ok == 0)).to(tl.int32), axis=0)
    if nbad > 0:
        tl.atomic_add(bad_ptr, nbad)


# ======================================================================== 16-bit formats
@triton.jit
def _quant16_kernel(src_ptr, stride_n, stride_h, pool_ptr, page_stride, page_ids_ptr,
                    slots_ptr, bad_ptr, n_rows, H, D, val_off,
                    BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rmask, src, base, vec, h = _src_rows(tl.program_id(0), n_rows, H, stride_n, stride_h,
                                         page_ids_ptr, slots_ptr, page_stride, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (d < D)[None, :]
    x = tl.load(src_ptr + src[:, None] + d[None, :], mask=m2, other=0.0).to(tl.float32)
    if BF16:
        bits = f32_to_bf16_bits(x)
        fin = (bits & 0x7F80) != 0x7F80
    else:
        y = x.to(tl.float16)
        bits = y.to(tl.int16, bitcast=True).to(tl.int32)
        fin = tl.abs(y.to(tl.float32)) <= 65504.0
    fin = fin & (tl.abs(x) <= F32_MAX)
    ok = tl.min(fin.to(tl.int32), axis=1)
    dst = (pool_ptr + base + val_off).to(tl.pointer_type(tl.int16))
    tl.store(dst[:, None] + vec[:, None] * D + d[None, :], bits.to(tl.int16),
             mask=m2 & (ok[:, None] != 0))
    _note_bad(bad_ptr, rmask, ok)


@triton.jit
def _dequant16_kernel(pool_ptr, page_stride, table_ptr, out_ptr, n_rows, TH, H, D, val_off,
                      BF16: tl.constexpr, OUT: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rmask, rows, base, vec, h = _page_rows(tl.program_id(0), n_rows, TH, H, table_ptr,
                                           page_stride, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (d < D)[None, :]
    src = (pool_ptr + base + val_off).to(tl.pointer_type(tl.int16))
    bits = tl.load(src[:, None] + vec[:, None] * D + d[None, :], mask=m2, other=0)
    if BF16:
        x = bf16_bits_to_f32(bits)
    else:
        x = bits.to(tl.float16, bitcast=True).to(tl.float32)
    _store_out(out_ptr + rows[:, None] * D + d[None, :], x, m2, OUT)


# ======================================================================== FP8 e4m3
@triton.jit
def _quant_fp8_kernel(src_ptr, stride_n, stride_h, pool_ptr, page_stride, page_ids_ptr,
                      slots_ptr, side_ptr, bad_ptr, n_rows, H, D, val_off, scl_off,
                      PER_TOKEN: tl.constexpr, SIDE_PER_HEAD: tl.constexpr,
                      NATIVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rmask, src, base, vec, h = _src_rows(tl.program_id(0), n_rows, H, stride_n, stride_h,
                                         page_ids_ptr, slots_ptr, page_stride, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (d < D)[None, :]
    x = tl.load(src_ptr + src[:, None] + d[None, :], mask=m2, other=0.0).to(tl.float32)
    ok = tl.min((tl.abs(x) <= F32_MAX).to(tl.int32), axis=1)
    x = tl.where(tl.abs(x) < F32_MIN_NORMAL, 0.0, x)  # flush fp32 subnormals
    one = tl.full([BLOCK_R], 1.0, tl.float32)
    if PER_TOKEN:
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), AMAX_FLOOR)
        s = tl.math.div_rn(amax, one * 448.0)
        s = (s.to(tl.int32, bitcast=True) & MASK21).to(tl.float32, bitcast=True)
        sptr = (pool_ptr + base + scl_off).to(tl.pointer_type(tl.float32))
        tl.store(sptr + vec, s, mask=rmask & (ok != 0))
    else:
        s = tl.load(side_ptr + h * SIDE_PER_HEAD, mask=rmask, other=1.0)
    inv = tl.math.div_rn(one, s)
    y = tl.minimum(tl.maximum(x * inv[:, None], -448.0), 448.0)
    if NATIVE:
        code = f32_to_e4m3_fast(y)
    else:
        code = f32_to_e4m3(y)
    dst = pool_ptr + base + val_off
    tl.store(dst[:, None] + vec[:, None] * D + d[None, :], code.to(tl.uint8),
             mask=m2 & (ok[:, None] != 0))
    _note_bad(bad_ptr, rmask, ok)


@triton.jit
def _dequant_fp8_kernel(pool_ptr, page_stride, table_ptr, side_ptr, out_ptr, n_rows, TH, H, D,
                        val_off, scl_off, PER_TOKEN: tl.constexpr, SIDE_PER_HEAD: tl.constexpr,
                        NATIVE: tl.constexpr, OUT: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rmask, rows, base, vec, h = _page_rows(tl.program_id(0), n_rows, TH, H, table_ptr,
                                           page_stride, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (d < D)[None, :]
    src = pool_ptr + base + val_off
    code = tl.load(src[:, None] + vec[:, None] * D + d[None, :], mask=m2, other=0)
    if NATIVE:
        v = e4m3_to_f32_fast(code)
    else:
        v = e4m3_to_f32(code)
    if PER_TOKEN:
        sptr = (pool_ptr + base + scl_off).to(tl.pointer_type(tl.float32))
        s = tl.load(sptr + vec, mask=rmask, other=1.0)
    else:
        s = tl.load(side_ptr + h * SIDE_PER_HEAD, mask=rmask, other=1.0)
    _store_out(out_ptr + rows[:, None] * D + d[None, :], v * s[:, None], m2, OUT)


# ======================================================================== FP4 (NVFP4, MXFP4)
@triton.jit
def _quant_fp4_kernel(src_ptr, stride_n, stride_h, pool_ptr, page_stride, page_ids_ptr,
                      slots_ptr, side_ptr, bad_ptr, n_rows, H, D, val_off, scl_off,
                      MX: tl.constexpr, NATIVE: tl.constexpr, BLOCK_R: tl.constexpr,
                      NB: tl.constexpr, BLK: tl.constexpr):
    """Tile [BLOCK_R rows, NB scale blocks, BLK elements]; BLK = 16 (NVFP4) or 32 (MXFP4)."""
    rmask, src, base, vec, h = _src_rows(tl.program_id(0), n_rows, H, stride_n, stride_h,
                                         page_ids_ptr, slots_ptr, page_stride, BLOCK_R)
    nblk = D // BLK
    j = tl.arange(0, NB)
    i = tl.arange(0, BLK)
    m2 = rmask[:, None] & (j < nblk)[None, :]  # [R, NB]
    col = j[None, :, None] * BLK + i[None, None, :]
    x = tl.load(src_ptr + src[:, None, None] + col, mask=m2[:, :, None], other=0.0).to(tl.float32)
    ok = tl.min(tl.min((tl.abs(x) <= F32_MAX).to(tl.int32), axis=2), axis=1)
    x = tl.where(tl.abs(x) < F32_MIN_NORMAL, 0.0, x)
    bamax = tl.max(tl.abs(x), axis=2)  # [R, NB]
    if MX:
        # shared exponent floor(log2(amax)) - 2, clamped to [-125, 127] (OCP MX v1.0 6.3)
        e = (bamax.to(tl.int32, bitcast=True) >> 23) - 127
        shared = tl.minimum(tl.maximum(e - 2, -125), 127)
        inv = ((127 - shared) << 23).to(tl.float32, bitcast=True)  # 2^-shared, exact
        sbyte = shared + 127
    else:
        t = tl.load(side_ptr)
        t6 = tl.full([BLOCK_R, NB], 1.0, tl.float32) * (t * 6.0)
        bs = tl.minimum(tl.math.div_rn(bamax, t6), 448.0)
        if NATIVE:
            sbyte = f32_to_e4m3_fast(bs)
        else:
            sbyte = f32_to_e4m3(bs)
        eff = e4m3_to_f32(sbyte) * t
        safe = tl.where(eff > 0, eff, 1.0)
        inv = tl.where(eff > 0, tl.math.div_rn(tl.full([BLOCK_R, NB], 1.0, tl.float32), safe), 0.0)
    codes = f32_to_e2m1(x * inv[:, :, None])  # [R, NB, BLK]
    lo, hi = tl.split(tl.reshape(codes, (BLOCK_R, NB, BLK // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)  # [R, NB, BLK/2]
    keep = m2 & (ok[:, None] != 0)
    vb = D // 2
    bcol = j[None, :, None] * (BLK // 2) + tl.arange(0, BLK // 2)[None, None, :]
    dst = pool_ptr + base + val_off + vec * vb
    tl.store(dst[:, None, None] + bcol, packed, mask=keep[:, :, None])
    sdst = pool_ptr + base + scl_off + vec * nblk
    tl.store(sdst[:, None] + j[None, :], sbyte.to(tl.uint8), mask=keep)
    _note_bad(bad_ptr, rmask, ok)


@triton.jit
def _dequant_fp4_kernel(pool_ptr, page_stride, table_ptr, side_ptr, out_ptr, n_rows, TH, H, D,
                        val_off, scl_off, MX: tl.constexpr, OUT: tl.constexpr,
                        BLOCK_R: tl.constexpr, NB: tl.constexpr, BLK: tl.constexpr):
    rmask, rows, base, vec, h = _page_rows(tl.program_id(0), n_rows, TH, H, table_ptr,
                                           page_stride, BLOCK_R)
    nblk = D // BLK
    j = tl.arange(0, NB)
    m2 = rmask[:, None] & (j < nblk)[None, :]
    vb = D // 2
    bcol = j[None, :, None] * (BLK // 2) + tl.arange(0, BLK // 2)[None, None, :]
    src = pool_ptr + base + val_off + vec * vb
    packed = tl.load(src[:, None, None] + bcol, mask=m2[:, :, None], other=0)
    sbyte = tl.load((pool_ptr + base + scl_off + vec * nblk)[:, None] + j[None, :], mask=m2, other=0)
    if MX:
        scale = e8m0_to_f32(sbyte)
    else:
        scale = e4m3_to_f32(sbyte) * tl.load(side_ptr)  # effective block scale, as the reference
    lo, hi = unpack_fp4(packed)
    x = tl.reshape(tl.join(lo, hi), (BLOCK_R, NB, BLK)) * scale[:, :, None]
    col = j[None, :, None] * BLK + tl.arange(0, BLK)[None, None, :]
    _store_out(out_ptr + (rows * D)[:, None, None] + col, x, m2[:, :, None], OUT)


# ======================================================================== host wrappers
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _native(native_cvt: bool | None, device: torch.device) -> bool:
    """Hardware fp8 converts: on compiled CUDA with sm_89+ (Ada, Hopper, Blackwell) unless
    told otherwise; the integer-exact converts elsewhere (same bytes)."""
    if native_cvt is None:
        return (device.type == "cuda" and not interpreting()
                and torch.cuda.get_device_capability(device) >= (8, 9))
    return bool(native_cvt)


def _rows_per_program(elems_per_row: int) -> int:
    """Rows per program so a tile holds ~4096 elements (a power of two, 1..128)."""
    return max(1, min(128, 4096 // triton.next_power_of_2(elems_per_row)))


_OUT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_IN = (torch.float16, torch.bfloat16, torch.float32)


def _check_pool(pool: torch.Tensor, spec) -> int:
    if pool.dtype != torch.uint8 or pool.dim() != 2 or pool.stride(1) != 1:
        raise KvbenchError("pool must be a uint8 tensor [num_pages, stride] with unit inner stride")
    if pool.shape[1] < spec.page_bytes:
        raise KvbenchError(f"pool stride {pool.shape[1]} is below the page size {spec.page_bytes}")
    stride = pool.stride(0)
    if stride % 4 or pool.data_ptr() % 4:
        raise KvbenchError(f"pool rows must be 4-byte aligned (row stride {stride})")
    return stride


#: the format families (kvbench.spec.FORMAT_FAMILIES) with kernels here: "float" ->
#: the 16-bit kernels, "fp8" -> the e4m3 kernels, "fp4_block" -> the FP4 kernels. Within
#: a family the constexprs come from the format's declared attributes (element, scale
#: granularity, block size, scale dtype), and the layouts served are those the family's
#: reference codec implements
KERNEL_FAMILIES = ("float", "fp8", "fp4_block")


def _check_format(fmt) -> None:
    if fmt.family not in KERNEL_FAMILIES:
        raise KvbenchError(f"{fmt.name}: no Triton kernels for format family {fmt.family!r}")
    C.codec_for(fmt)  # KvbenchError for a layout the family does not implement


def _check_offsets(pm, reg: int) -> None:
    for kv in range(pm.kv_factor):
        if pm.values(kv, reg).offset % 2 or pm.scales(kv, reg).offset % 4:
            raise KvbenchError(
                f"{pm.fmt.name}: page regions are not aligned for the kernels "
                f"(values at {pm.values(kv, reg).offset}, scales at {pm.scales(kv, reg).offset})"
            )


def _side_for(side, spec, layer: int, kv: int, device) -> torch.Tensor:
    m, f = spec.model, spec.fmt
    s = side_count(m, f)
    if s == 0:
        return torch.ones(1, dtype=torch.float32, device=device)
    want = (m.num_layers, m.kv_factor, s)
    if side is None:
        raise KvbenchError(f"{f.name}: needs out-of-page scales {list(want)} (see "
                           "kvbench.formats.side_scales / unit_side)")
    if tuple(side.shape) != want or side.dtype != torch.float32 or side.device != device:
        raise KvbenchError(f"{f.name}: side scales must be fp32 {list(want)} on {device}, "
                           f"got {side.dtype} {list(side.shape)} on {side.device}")
    return side[layer, kv].contiguous()


def quantize_to_pages(k, v, pool, page_ids, slots, spec, side=None, *, layer: int = 0,
                      check: bool = True, native_cvt: bool | None = None) -> None:
    """Quantize N tokens of one layer straight into a page pool (one launch per K, V).

    k, v: [N, H, D] fp16/bf16/fp32 on the pool's device, last dim contiguous (v None for
    MLA). pool: uint8 [num_pages, stride]. page_ids, slots: int [N], distinct positions.
    side: fp32 [num_layers, kv_factor, S] or None. layer: the layer of these tokens.
    check: validate slot / page ranges and raise KvbenchError if any (token, head)
    vector held NaN/Inf (those vectors are not written; the others are). Both checks
    synchronize with the device; timed loops pass check=False.
    native_cvt: hardware fp8 converts (default on compiled CUDA) or integer-exact ones.
    """
    stride = _check_pool(pool, spec)
    _check_format(spec.fmt)
    pm = page_map(spec)
    reg = region_for_layer(spec, layer)
    _check_offsets(pm, reg)
    fmt = spec.fmt
    dev = pool.device
    tensors = [k] if pm.kv_factor == 1 else [k, v]
    if pm.kv_factor == 1 and v is not None:
        raise KvbenchError("an MLA layer stores one latent tensor; pass v=None")
    n = k.shape[0]
    for name, x in zip("kv", tensors):
        if x is None or tuple(x.shape) != (n, pm.heads, pm.head_dim):
            raise KvbenchError(f"quantize_to_pages {name}: expected [{n}, {pm.heads}, {pm.head_dim}]")
        if x.dtype not in _IN or x.device != dev:
            raise KvbenchError(f"quantize_to_pages {name}: expected fp16/bf16/fp32 on {dev}")
    pid = page_ids.to(device=dev, dtype=torch.int64).contiguous()
    slot = slots.to(device=dev, dtype=torch.int64).contiguous()
    if pid.numel() != n or slot.numel() != n:
        raise KvbenchError(f"page_ids and slots need {n} entries each")
    if n == 0:
        return
    if check:
        if int(slot.min()) < 0 or int(slot.max()) >= pm.tokens:
            raise KvbenchError(f"slots must lie in 0..{pm.tokens - 1}")
        if int(pid.min()) < 0 or int(pid.max()) >= pool.shape[0]:
            raise KvbenchError(f"page ids must lie in 0..{pool.shape[0] - 1}")
    native = _native(native_cvt, dev)
    bad = torch.zeros(1, dtype=torch.int32, device=dev)
    n_rows = n * pm.heads
    for kv, x in enumerate(tensors):
        if x.stride(-1) != 1:
            x = x.contiguous()
        vo, so = pm.values(kv, reg).offset, pm.scales(kv, reg).offset
        common = (x, x.stride(0), x.stride(1), pool, stride, pid, slot)
        if fmt.family == "float":
            br = _rows_per_program(pm.head_dim)
            grid = (triton.cdiv(n_rows, br),)
            _quant16_kernel[grid](*common, bad, n_rows, pm.heads, pm.head_dim, vo,
                                  BF16=fmt.element == "bf16", BLOCK_R=br,
                                  BLOCK_D=triton.next_power_of_2(pm.head_dim))
        elif fmt.family == "fp8":
            sd = _side_for(side, spec, layer, kv, dev)
            br = _rows_per_program(pm.head_dim)
            grid = (triton.cdiv(n_rows, br),)
            _quant_fp8_kernel[grid](*common, sd, bad, n_rows, pm.heads, pm.head_dim, vo, so,
                                    PER_TOKEN=fmt.scale == "token_head",
                                    SIDE_PER_HEAD=1 if fmt.scale == "head" else 0,
                                    NATIVE=native, BLOCK_R=br,
                                    BLOCK_D=triton.next_power_of_2(pm.head_dim))
        else:
            sd = _side_for(side, spec, layer, kv, dev)
            blk = fmt.block
            nb = triton.next_power_of_2(pm.head_dim // blk)
            br = _rows_per_program(nb * blk)
            grid = (triton.cdiv(n_rows, br),)
            _quant_fp4_kernel[grid](*common, sd, bad, n_rows, pm.heads, pm.head_dim, vo, so,
                                    MX=fmt.scale_dtype == "e8m0", NATIVE=native, BLOCK_R=br,
                                    NB=nb, BLK=blk)
    if check:
        nbad = int(bad.item())
        if nbad:
            raise KvbenchError(
                f"{fmt.name}: {nbad} (token, head) vector(s) hold NaN/Inf or exceed the "
                "format's range; they were not stored"
            )


def dequantize_pages(pool, block_table, spec, side=None, *, layer: int = 0,
                     dtype: torch.dtype = torch.float16, check: bool = True,
                     native_cvt: bool | None = None):
    """Dequantize whole pages of one layer into contiguous K and V.

    pool: uint8 [num_pages, stride]; block_table: int [..., P] page ids; side: fp32
    [num_layers, kv_factor, S] or None. Returns (k, v), each [..., P*T, H, D] in dtype
    (fp16, bf16 or fp32), v None for MLA. check: validate page ids (synchronizes).
    """
    stride = _check_pool(pool, spec)
    _check_format(spec.fmt)
    pm = page_map(spec)
    reg = region_for_layer(spec, layer)
    _check_offsets(pm, reg)
    if dtype not in _OUT:
        raise KvbenchError(f"dequantize_pages: dtype must be fp16, bf16 or fp32, not {dtype}")
    dev = pool.device
    fmt = spec.fmt
    lead, p = tuple(block_table.shape[:-1]), block_table.shape[-1]
    table = block_table.to(device=dev, dtype=torch.int64).reshape(-1).contiguous()
    if check and table.numel() and (int(table.min()) < 0 or int(table.max()) >= pool.shape[0]):
        raise KvbenchError(f"page ids must lie in 0..{pool.shape[0] - 1}")
    th = pm.tokens * pm.heads
    n_rows = table.numel() * th
    native = _native(native_cvt, dev)
    outs = []
    for kv in range(pm.kv_factor):
        out = torch.empty((table.numel() * pm.tokens, pm.heads, pm.head_dim), dtype=dtype, device=dev)
        optr = out.view(torch.int16) if dtype == torch.bfloat16 else out
        vo, so = pm.values(kv, reg).offset, pm.scales(kv, reg).offset
        if n_rows:
            if fmt.family == "float":
                br = _rows_per_program(pm.head_dim)
                _dequant16_kernel[(triton.cdiv(n_rows, br),)](
                    pool, stride, table, optr, n_rows, th, pm.heads, pm.head_dim, vo,
                    BF16=fmt.element == "bf16", OUT=_OUT[dtype], BLOCK_R=br,
                    BLOCK_D=triton.next_power_of_2(pm.head_dim))
            elif fmt.family == "fp8":
                sd = _side_for(side, spec, layer, kv, dev)
                br = _rows_per_program(pm.head_dim)
                _dequant_fp8_kernel[(triton.cdiv(n_rows, br),)](
                    pool, stride, table, sd, optr, n_rows, th, pm.heads, pm.head_dim, vo, so,
                    PER_TOKEN=fmt.scale == "token_head",
                    SIDE_PER_HEAD=1 if fmt.scale == "head" else 0, NATIVE=native,
                    OUT=_OUT[dtype], BLOCK_R=br, BLOCK_D=triton.next_power_of_2(pm.head_dim))
            else:
                sd = _side_for(side, spec, layer, kv, dev)
                blk = fmt.block
                nb = triton.next_power_of_2(pm.head_dim // blk)
                br = _rows_per_program(nb * blk)
                _dequant_fp4_kernel[(triton.cdiv(n_rows, br),)](
                    pool, stride, table, sd, optr, n_rows, th, pm.heads, pm.head_dim, vo, so,
                    MX=fmt.scale_dtype == "e8m0", OUT=_OUT[dtype], BLOCK_R=br, NB=nb, BLK=blk)
        outs.append(out.reshape(*lead, p * pm.tokens, pm.heads, pm.head_dim))
    return (outs[0], outs[1] if pm.kv_factor == 2 else None)
