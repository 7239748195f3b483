"""Torch reference quantize / dequantize for every KV format, on CPU or CUDA.

A tensor to quantize has shape ``[..., H, D]``: any leading dims (tokens, layers), then KV
heads H, then head_dim D (the last dim is contiguous in the page). Quantizing yields a
``Quantized``: packed value bytes, in-page scale bytes and the out-of-page ("side") scale.
Every operation is chosen so that the Triton kernels in ``kernels/quant.py`` reproduce
the bytes exactly: divisions are IEEE divisions by tensors (never by a Python scalar,
which torch's CUDA kernels turn into a reciprocal multiply), scales are applied as
``x * (1 / s)`` with the reciprocal computed once per scale, and every scale and decoded
value is kept an fp32 normal number, because compiled CUDA code may flush subnormals.

Scale convention everywhere: a scale ``s`` is the dequantization multiplier,
``x ~= decode(code) * s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kvbench.errors import KvbenchError
from kvbench.spec import FORMATS, KVFormat, get_format

# ---- constants, with sources ----------------------------------------------------------
#: Largest finite OCP E4M3 ("e4m3fn") value, 1.75 * 2^8 (OCP 8-bit Floating Point
#: Specification (OFP8) rev 1.0, 2023, Table 1). torch's cast to float8_e4m3fn does not
#: saturate (above 464 it gives NaN), so every path clamps to +-448 first.
FP8_MAX = 448.0
#: Largest E2M1 value, 1.5 * 2^2 (OCP Microscaling Formats (MX) Specification v1.0, 2023,
#: section 5.3.3, FP4 E2M1).
E2M1_MAX = 6.0
#: emax of E2M1 (MX spec v1.0 Table 1): the shared exponent is floor(log2(amax)) - 2
#: (MX spec section 6.3, "Conversion from vector of scalar floats to MX").
E2M1_EMAX = 2
#: The eight E2M1 magnitudes by code 0..7 (sign is bit 3): 0, 0.5, 1, 1.5, 2, 3, 4, 6.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: E8M0 bias (MX spec v1.0 section 5.4.1): value 2^(byte - 127); byte 0xFF is NaN.
E8M0_BIAS = 127
#: NVFP4 second-level (per tensor) scale = amax / (448 * 6), so the largest block scale
#: fits e4m3 exactly (NVIDIA, "Introducing NVFP4 for Efficient and Accurate Low-Precision
#: Inference", developer blog, 2025; TensorRT Model Optimizer's NVFP4 recipe).
NVFP4_TENSOR_DIV = FP8_MAX * E2M1_MAX  # 2688
#: NVFP4 block length (elements per e4m3 scale) and MXFP4 block length (per e8m0 scale,
#: MX spec v1.0 Table 1, k = 32). The codecs read a format's declared ``block``; the
#: registry's nvfp4 and mxfp4 declare these (tests check that they agree).
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32
#: Inputs below the smallest fp32 normal are flushed to zero before quantizing (compiled
#: CUDA code may flush them anyway; this makes both paths agree).
F32_MIN_NORMAL = 2.0**-126
#: Floor of every amax a scale is computed from: keeps scales, reciprocals and decoded
#: values fp32 normals (no subnormal arithmetic anywhere), and all-zero tensors valid.
AMAX_FLOOR = 2.0**-64
#: Lowest MXFP4 shared exponent we write (the MX spec allows -127). At -125 the smallest
#: decoded nonzero value, 0.5 * 2^-125, is still an fp32 normal.
MX_MIN_EXP = -125
#: Scales are rounded toward zero to this many significant bits so that dequantized
#: values are exact products and a second quantization finds the same scale
#: (448 = 7 * 2^6 needs 3 bits: 24 - 3 = 21; NVFP4 value * e4m3 * scale needs
#: 2 + 4 bits: 24 - 6 = 18).
FP8_SCALE_BITS = 21
NVFP4_SCALE_BITS = 18


def scale_mask(bits: int) -> int:
    """int32 mask that keeps the sign, exponent and the top ``bits - 1`` mantissa bits."""
    return ~((1 << (24 - bits)) - 1) & 0xFFFFFFFF


# ---- element codecs ----------------------------------------------------------------------
def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)


def _div(a: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """IEEE fp32 division by a same-device tensor (torch's CUDA division by a CPU scalar
    multiplies by the reciprocal instead, which would not match the kernels)."""
    if not isinstance(c, torch.Tensor):
        c = torch.full((1,), c, dtype=torch.float32, device=a.device)
    return a / c


def _aligned(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    """t made contiguous with a storage offset that allows viewing it as a dtype of
    ``nbytes`` bytes (a slice of a page may start at any byte)."""
    t = t.contiguous()
    return t.clone() if t.storage_offset() % nbytes else t


def _truncate_bits(s: torch.Tensor, bits: int) -> torch.Tensor:
    """Round positive fp32 ``s`` toward zero to ``bits`` significant bits."""
    mask = scale_mask(bits) - (1 << 32)  # as a negative int32
    return (s.contiguous().view(torch.int32) & mask).view(torch.float32)


def e4m3_encode(y: torch.Tensor) -> torch.Tensor:
    """fp32 -> OCP E4M3 codes (uint8), round to nearest even, saturating at +-448.
    A zero result is always +0 (code 0x00, never 0x80), so re-quantizing is byte-stable."""
    c = _f32(y).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    return torch.where(c == 0x80, torch.zeros_like(c), c)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    """OCP E4M3 codes (uint8) -> fp32 (exact; 0x7F / 0xFF decode to NaN)."""
    return codes.contiguous().view(torch.float8_e4m3fn).to(torch.float32)


def e2m1_encode(y: torch.Tensor) -> torch.Tensor:
    """fp32 -> E2M1 codes (uint8 0..15, sign in bit 3), round to nearest even, saturating
    at +-6. Ties: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
    A result of magnitude 0 is always +0 (code 0), so re-quantizing is byte-stable."""
    a = _f32(y).abs()
    m = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    # Midpoints between neighbours; ">" where the lower neighbour has an even code
    # (ties go down to it), ">=" where the upper one has.
    for thr, ge in ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
                    (2.5, False), (3.5, True), (5.0, False)):
        m += (a >= thr) if ge else (a > thr)
    neg = (y < 0) & (m > 0)
    return m | (neg.to(torch.uint8) << 3)


_E2M1_TABLE: dict[torch.device, torch.Tensor] = {}


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) -> fp32 (code 8 is -0.0)."""
    dev = codes.device
    if dev not in _E2M1_TABLE:
        vals = list(E2M1_VALUES) + [-v for v in E2M1_VALUES]
        _E2M1_TABLE[dev] = torch.tensor(vals, dtype=torch.float32, device=dev)
    return _E2M1_TABLE[dev][codes.long()]


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes (uint8) -> fp32 2^(byte-127) (MX spec v1.0 section 5.4.1): byte 0 is
    2^-127 (an fp32 subnormal), 0xFF is NaN."""
    c = codes.to(torch.int32)
    bits = torch.where(c == 0, torch.full_like(c, 0x00400000), c << 23)
    bits = torch.where(c == 255, torch.full_like(c, 0x7FC00000), bits)
    return bits.view(torch.float32)


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e as fp32 for int tensors e in [-126, 127], built from bits (exact)."""
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., 2n] (values 0..15) -> bytes [..., n]; element 2i in the low
    nibble of byte i."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """bytes [..., n] -> uint8 codes [..., 2n] (inverse of pack_nibbles)."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


# ---- the quantized container ---------------------------------------------------------
@dataclass(frozen=True)
class Quantized:
    """One quantized tensor of shape ``[..., H, D]``.

    values: uint8 ``[..., H, VB]`` packed values, VB = fmt.value_bytes(D) (fp16/bf16:
        little-endian 2-byte words; fp8: one code per byte; fp4: two codes per byte,
        element 2i in the low nibble).
    scales: uint8 ``[..., H, SB]`` the in-page scale bytes of each vector, or None:
        fp8 token_head: one little-endian fp32 (SB = 4); nvfp4: e4m3 per 16 elements
        (SB = D/16); mxfp4: e8m0 per 32 elements (SB = D/32).
    side: fp32 ``[S]`` out-of-page scale (S = 1 per tensor, S = H per head), or None.
    """

    fmt: str
    shape: tuple[int, ...]
    values: torch.Tensor
    scales: torch.Tensor | None = None
    side: torch.Tensor | None = None

    @property
    def heads(self) -> int:
        return self.shape[-2]

    @property
    def head_dim(self) -> int:
        return self.shape[-1]

    def stored_bytes(self) -> int:
        """Bytes held in pages plus side bytes."""
        n = self.values.numel()
        n += self.scales.numel() if self.scales is not None else 0
        n += 4 * self.side.numel() if self.side is not None else 0
        return n

    def scale_values(self) -> torch.Tensor | None:
        """Decoded in-page scales as fp32 ([..., H] or [..., H, D/block])."""
        if self.scales is None:
            return None
        f = get_format(self.fmt)
        if f.scale_dtype == "fp32":
            return _aligned(self.scales, 4).view(torch.float32).squeeze(-1)
        return _SCALE_DECODE[f.scale_dtype](self.scales)


# ---- input checks --------------------------------------------------------------------
def _check_input(x: torch.Tensor, f: KVFormat, convert: bool = True) -> torch.Tensor:
    """``x`` checked (a float tensor [..., H, D] of a head dim ``f`` packs, no NaN/Inf),
    in fp32 (``convert``) or as it is."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise KvbenchError(f"{f.name}: expected a floating-point tensor [..., heads, head_dim]")
    if x.dim() < 2:
        raise KvbenchError(f"{f.name}: expected shape [..., heads, head_dim], got {tuple(x.shape)}")
    d = x.shape[-1]
    f.vector_bytes(d)  # raises KvbenchError for head dims the format cannot pack
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise KvbenchError(
            f"{f.name}: input holds {bad} NaN/Inf value(s); refusing to quantize it"
        )
    return _f32(x) if convert else x


def _flush(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < F32_MIN_NORMAL, torch.zeros_like(x), x)


def _check_side(side: torch.Tensor | None, f: KVFormat, heads: int, device) -> torch.Tensor:
    want = heads if f.scale == "head" else 1
    if side is None:
        raise KvbenchError(f"{f.name}: needs its out-of-page scale (side) for dequantizing")
    side = torch.as_tensor(side, dtype=torch.float32).to(device).reshape(-1)
    if side.numel() != want:
        raise KvbenchError(f"{f.name}: side scale has {side.numel()} value(s), expected {want}")
    if not bool(torch.isfinite(side).all()) or not bool((side > 0).all()):
        raise KvbenchError(f"{f.name}: side scales must be finite and positive")
    return side


def _head_view(s: torch.Tensor, heads: int) -> torch.Tensor:
    """[S] side scale -> broadcastable against [..., H, D]."""
    return s.view(heads, 1) if s.numel() == heads and heads != 1 else s.view(1, 1)


# ---- side (out-of-page) scales -------------------------------------------------------
def side_scale(x: torch.Tensor, fmt: str | KVFormat) -> torch.Tensor | None:
    """The out-of-page scale a format needs for ``x [..., H, D]``, fp32 ``[S]``: per tensor
    (S = 1) or per head (S = H); None for formats without one. Computed from x's amax
    (floored at AMAX_FLOOR) and rounded toward zero to FP8_SCALE_BITS / NVFP4_SCALE_BITS."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    if f.tensor_scale_bytes == 0:
        return None
    x = _flush(_check_input(x, f))
    if f.scale == "head":
        amax = x.abs().reshape(-1, x.shape[-2], x.shape[-1]).amax(dim=(0, 2))
    else:
        amax = x.abs().amax().reshape(1)
    amax = amax.clamp_min(AMAX_FLOOR)
    if f.family == "fp4_block":  # NVFP4's second level: the largest block scale fits e4m3
        return _truncate_bits(_div(amax, NVFP4_TENSOR_DIV), NVFP4_SCALE_BITS)
    return _truncate_bits(_div(amax, FP8_MAX), FP8_SCALE_BITS)


# ---- per-family quantize / dequantize ------------------------------------------------
#: the torch dtype of each element of the "float" family
_FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: in-page block scale decoders by scale_dtype
_SCALE_DECODE = {"e4m3": e4m3_decode, "e8m0": e8m0_decode}


def _q16(x: torch.Tensor, f: KVFormat, side) -> Quantized:
    dt = _FLOAT_DTYPES[f.element]
    if isinstance(x, torch.Tensor) and x.dtype == dt:  # already the element: its bytes are the values
        vals = _check_input(x, f, convert=False).contiguous().view(torch.uint8)
        return Quantized(f.name, tuple(x.shape), vals)
    y = _check_input(x, f).to(dt)
    if not bool(torch.isfinite(y).all()):
        raise KvbenchError(f"{f.name}: input exceeds the format's range (would store Inf)")
    vals = y.contiguous().view(torch.uint8)
    return Quantized(f.name, tuple(x.shape), vals)


def _dq16(q: Quantized) -> torch.Tensor:
    dt = _FLOAT_DTYPES[get_format(q.fmt).element]
    return _aligned(q.values, 2).view(dt).to(torch.float32)


def _qfp8(x: torch.Tensor, f: KVFormat, side) -> Quantized:
    xf = _flush(_check_input(x, f))
    h = x.shape[-2]
    if f.scale == "token_head":
        amax = xf.abs().amax(-1).clamp_min(AMAX_FLOOR)  # [..., H]
        s = _truncate_bits(_div(amax, FP8_MAX), FP8_SCALE_BITS)
        inv = torch.reciprocal(s).unsqueeze(-1)
        codes = e4m3_encode(xf * inv)
        scales = s.contiguous().view(torch.uint8).reshape(*s.shape, 4)
        return Quantized(f.name, tuple(x.shape), codes, scales=scales)
    side = side_scale(xf, f) if side is None else _check_side(side, f, h, xf.device)
    inv = torch.reciprocal(_head_view(side, h))
    return Quantized(f.name, tuple(x.shape), e4m3_encode(xf * inv), side=side)


def _dqfp8(q: Quantized) -> torch.Tensor:
    f = get_format(q.fmt)
    vals = e4m3_decode(q.values)
    if f.scale == "token_head":
        return vals * q.scale_values().unsqueeze(-1)
    side = _check_side(q.side, f, q.heads, vals.device)
    return vals * _head_view(side, q.heads)


def _qnvfp4(x: torch.Tensor, f: KVFormat, side) -> Quantized:
    xf = _flush(_check_input(x, f))
    *lead, h, d = x.shape
    side = side_scale(xf, f) if side is None else _check_side(side, f, h, xf.device)
    t = side  # [1]
    xb = xf.reshape(*lead, h, d // f.block, f.block)
    bamax = xb.abs().amax(-1)  # [..., H, NB]
    bs = _div(bamax, t * E2M1_MAX).clamp_max(FP8_MAX)
    bcode = e4m3_encode(bs)
    eff = e4m3_decode(bcode) * t  # the effective block scale, fp32
    inv = torch.where(eff > 0, torch.reciprocal(eff), torch.zeros_like(eff))
    codes = e2m1_encode(xb * inv.unsqueeze(-1)).reshape(*lead, h, d)
    return Quantized(f.name, tuple(x.shape), pack_nibbles(codes), scales=bcode, side=side)


def _dqnvfp4(q: Quantized) -> torch.Tensor:
    f = get_format(q.fmt)
    *lead, h, d = q.shape
    t = _check_side(q.side, f, h, q.values.device)
    vals = e2m1_decode(unpack_nibbles(q.values)).reshape(*lead, h, d // f.block, f.block)
    eff = e4m3_decode(q.scales) * t
    return (vals * eff.unsqueeze(-1)).reshape(q.shape)


def _qmxfp4(x: torch.Tensor, f: KVFormat, side) -> Quantized:
    xf = _flush(_check_input(x, f))
    *lead, h, d = x.shape
    xb = xf.reshape(*lead, h, d // f.block, f.block)
    bamax = xb.abs().amax(-1)  # 0 or an fp32 normal (inputs are flushed)
    e = (bamax.view(torch.int32) >> 23) - 127  # floor(log2(bamax)); -127 for 0
    shared = (e - E2M1_EMAX).clamp(MX_MIN_EXP, 127)
    inv = pow2(-shared)  # exact: the scale is a power of two
    codes = e2m1_encode(xb * inv.unsqueeze(-1)).reshape(*lead, h, d)
    scales = (shared + E8M0_BIAS).to(torch.uint8)
    return Quantized(f.name, tuple(x.shape), pack_nibbles(codes), scales=scales)


def _dqmxfp4(q: Quantized) -> torch.Tensor:
    blk = get_format(q.fmt).block
    *lead, h, d = q.shape
    vals = e2m1_decode(unpack_nibbles(q.values)).reshape(*lead, h, d // blk, blk)
    return (vals * e8m0_decode(q.scales).unsqueeze(-1)).reshape(q.shape)


def _qfp4(x: torch.Tensor, f: KVFormat, side) -> Quantized:
    """fp4_block: e4m3 block scales follow NVFP4's recipe (with the fp32 per-tensor
    scale), e8m0 ones OCP MX's."""
    return (_qnvfp4 if f.scale_dtype == "e4m3" else _qmxfp4)(x, f, side)


def _dqfp4(q: Quantized) -> torch.Tensor:
    return (_dqnvfp4 if get_format(q.fmt).scale_dtype == "e4m3" else _dqmxfp4)(q)


# ---- registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    """Reference quantizer of one KV format.

    quantize(x [..., H, D] float, side fp32 [S] | None) -> Quantized; side is computed
        from x when the format needs one and none is given.
    dequantize(Quantized) -> fp32 [..., H, D].
    """

    fmt: KVFormat
    quantize: Callable[[torch.Tensor, KVFormat, torch.Tensor | None], Quantized]
    dequantize: Callable[[Quantized], torch.Tensor]

    @property
    def name(self) -> str:
        return self.fmt.name


#: the reference quantize / dequantize of each family (kvbench.spec.FORMAT_FAMILIES)
_IMPL = {
    "float": (_q16, _dq16),
    "fp8": (_qfp8, _dqfp8),
    "fp4_block": (_qfp4, _dqfp4),
}
#: the element and scale layouts each family's codec implements
_SUPPORTS = {
    "float": lambda f: f.element in _FLOAT_DTYPES and f.scale == "none",
    "fp8": lambda f: f.element == "e4m3" and (
        (f.scale in ("tensor", "head") and f.tensor_scale_bytes == 4)
        or (f.scale == "token_head" and f.scale_dtype == "fp32")),
    "fp4_block": lambda f: f.element == "e2m1" and f.scale == "block" and (
        (f.scale_dtype == "e4m3" and f.tensor_scale_bytes == 4)
        or (f.scale_dtype == "e8m0" and f.tensor_scale_bytes == 0)),
}


def codec_for(f: KVFormat) -> Codec:
    """The reference codec of format ``f``, chosen by its family; KvbenchError when the
    family's codec does not implement the element or scale layout ``f`` declares."""
    if f.family not in _IMPL or not _SUPPORTS[f.family](f):
        raise KvbenchError(
            f"{f.name}: no reference codec for family {f.family!r} with element {f.element}, "
            f"scale {f.scale} ({f.scale_dtype}, block {f.block}, "
            f"{f.tensor_scale_bytes} B per tensor)"
        )
    return Codec(f, *_IMPL[f.family])


#: One codec per KV format name in kvbench.spec.FORMATS (as imported; ``get_codec``
#: also serves formats registered later).
CODECS: dict[str, Codec] = {name: codec_for(f) for name, f in FORMATS.items()}


def get_codec(name: str) -> Codec:
    f = get_format(name)  # KvbenchError for unknown names
    c = CODECS.get(name)
    return c if c is not None and c.fmt is f else codec_for(f)


def quantize(x: torch.Tensor, fmt: str, side: torch.Tensor | None = None) -> Quantized:
    """Quantize ``x [..., H, D]`` (fp16/bf16/fp32, CPU or CUDA) into format ``fmt``.

    NaN/Inf inputs raise KvbenchError; fp32 subnormal inputs are flushed to zero; the
    out-of-page scale ``side`` (fp32 [1] or [H]) is computed from x when not given.
    """
    c = get_codec(fmt)
    return c.quantize(x, c.fmt, side)


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode a Quantized back to ``dtype`` (computed in fp32, then cast)."""
    return get_codec(q.fmt).dequantize(q).to(dtype)


def roundtrip(x: torch.Tensor, fmt: str, side: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """dequantize(quantize(x)) in one call."""
    return dequantize(quantize(x, fmt, side), dtype)
