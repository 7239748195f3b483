"""Paged decode attention: one query token per sequence, grouped-query heads, block
table indirection into KV pages, online softmax, split-KV with a merge kernel.

Pages follow the byte map of ``kvbench.formats.layout``: per layer region
``[K values][V values][K in-page scales][V in-page scales]``, values token-major
``[T][H][D]``. The kernel reads ``fp16``/``bf16`` values directly and ``fp8_e4m3*``,
``nvfp4`` and ``mxfp4`` values with dequantization fused into the loads:

* FP8 codes and FP4 codes times their block scale are exact in bf16, so on CUDA the
  two matrix products (q.K^T and p.V) run on tensor cores in bf16 (fp16 for fp16
  pages) with fp32 accumulation; per-tensor, per-head and per-token-head scales are
  factored out of the products (applied to scores / folded into p), never rounded in.
* Under ``TRITON_INTERPRET=1`` (CPU CI) every operand stays fp32 (the interpreter's
  bf16 is wrong) and bf16 values are decoded from their bits.

Host API: ``paged_decode(...)`` below; the torch reference is
``kvbench.attention.decode_reference``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kvbench.errors import KvbenchError
from kvbench.spec import ELEMENTS, SCALE_DTYPES, KVFormat, get_format

from .quant import bf16_bits_to_f32, dequant_e2m1, e4m3_to_f32, e8m0_to_f32

#: What the kernel reads is told by three constexprs taken from the format's declared
#: attributes (``format_constexprs``), never from its name: VAL, the value element's
#: code (kvbench.spec.ELEMENTS); SCALE, the in-page scale's code (SCALE_DTYPES); SBLK,
#: elements per in-page block scale. The codes, as constexprs the kernel compares with:
VAL_FP16 = tl.constexpr(ELEMENTS["fp16"].code)
VAL_BF16 = tl.constexpr(ELEMENTS["bf16"].code)
VAL_E4M3 = tl.constexpr(ELEMENTS["e4m3"].code)
VAL_E2M1 = tl.constexpr(ELEMENTS["e2m1"].code)
SCALE_NONE = tl.constexpr(SCALE_DTYPES["none"].code)
SCALE_FP32 = tl.constexpr(SCALE_DTYPES["fp32"].code)  # per (token, head) vector
SCALE_E4M3 = tl.constexpr(SCALE_DTYPES["e4m3"].code)  # per SBLK elements
SCALE_E8M0 = tl.constexpr(SCALE_DTYPES["e8m0"].code)  # per SBLK elements

#: (element, in-page scale dtype) pairs the kernel reads, with the scale granularity
#: each in-page scale must have (out-of-page scales go through SIDE for any of them)
READS = {("fp16", "none"): "none", ("bf16", "none"): "none", ("e4m3", "none"): "none",
         ("e4m3", "fp32"): "token_head", ("e2m1", "e4m3"): "block", ("e2m1", "e8m0"): "block"}


def format_constexprs(fmt: str | KVFormat) -> dict[str, int]:
    """The kernel's VAL, SCALE and SBLK for a KV format (a name or a KVFormat), from
    its declared element and scale layout; KvbenchError for a layout it cannot read."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    granularity = READS.get((f.element, f.scale_dtype))
    if granularity is None or (granularity != "none" and f.scale != granularity):
        raise KvbenchError(f"paged decode cannot read {f.name}: {f.element} values with "
                           f"{f.scale} scales in {f.scale_dtype}")
    return {"VAL": f.value_code, "SCALE": f.scale_code, "SBLK": max(1, f.block)}


@triton.jit
def _load_tile(VALS, SCU, page, page_stride, vals_off, sc_off, slot, dim, tmask,
               h, H: tl.constexpr, D: tl.constexpr, VAL: tl.constexpr, SCALE: tl.constexpr,
               SBLK: tl.constexpr, INTERP: tl.constexpr):
    """[TILE, D] fp32 tile of one K or V tensor of one head: row r is token slot[r] of
    page[r] (a tile may span several pages). Decoded values times their in-page
    *block* scale (token-head fp32 scales are applied by the caller). VALS is the pool
    viewed as the value type (fp16/bf16 -> 2-byte elements; else bytes).
    """
    vec = slot[:, None] * H + h  # (token, head) vector index inside the page
    base = page[:, None] * page_stride
    if VAL == VAL_FP16:
        x = tl.load(VALS + base + vals_off + vec * D + dim[None, :],
                    mask=tmask[:, None], other=0.0).to(tl.float32)
    elif VAL == VAL_BF16:
        if INTERP:
            bits = tl.load(VALS + base + vals_off + vec * D + dim[None, :],
                           mask=tmask[:, None], other=0)
            x = bf16_bits_to_f32(bits)
        else:
            x = tl.load(VALS + base + vals_off + vec * D + dim[None, :],
                        mask=tmask[:, None], other=0.0).to(tl.float32)
    elif VAL == VAL_E4M3:
        code = tl.load(VALS + base + vals_off + vec * D + dim[None, :],
                       mask=tmask[:, None], other=0)
        x = e4m3_to_f32(code)
    else:  # VAL_E2M1, two codes per byte, times an e4m3 or e8m0 scale per SBLK elements
        byte = tl.load(VALS + base + vals_off + vec * (D // 2) + dim[None, :] // 2,
                       mask=tmask[:, None], other=0).to(tl.int32)
        code = tl.where((dim[None, :] % 2) == 0, byte & 0xF, (byte >> 4) & 0xF)
        if SCALE == SCALE_E4M3:
            sc = tl.load(SCU + base + sc_off + vec * (D // SBLK) + dim[None, :] // SBLK,
                         mask=tmask[:, None], other=0)
            x = dequant_e2m1(code) * e4m3_to_f32(sc)
        else:
            sc = tl.load(SCU + base + sc_off + vec * (D // SBLK) + dim[None, :] // SBLK,
                         mask=tmask[:, None], other=127)
            x = dequant_e2m1(code) * e8m0_to_f32(sc)
    return tl.where(tmask[:, None], x, 0.0)


@triton.jit
def _paged_decode_kernel(
    Q, K, V, SCF, SCU, BT, LENS, SIDE, PART_O, PART_ML,
    bt_stride, k_page_stride, v_page_stride, sc_page_stride_f, sc_page_stride_u,
    k_off, v_off, ksc_off_f, vsc_off_f, ksc_off_u, vsc_off_u,
    side_k, side_v, sm_scale, blocks_per_split, num_splits,
    T: tl.constexpr, H: tl.constexpr, D: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
    VAL: tl.constexpr, SCALE: tl.constexpr, SBLK: tl.constexpr,
    HEAD_SIDE: tl.constexpr, HAS_SIDE: tl.constexpr,
    TILE: tl.constexpr, INTERP: tl.constexpr,
):
    """Program (b, h, split): query heads of KV head h of sequence b over the split's
    pages, TILE tokens per loop step (several small pages, or part of a large one);
    writes the split's unnormalised output and (max, sum) to the partial buffers."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    seqlen = tl.load(LENS + b)
    g = tl.arange(0, GP)
    dim = tl.arange(0, D)
    rows = tl.arange(0, TILE)
    gmask = g < G
    q = tl.load(Q + (b * (H * G) + h * G + g)[:, None] * D + dim[None, :],
                mask=gmask[:, None], other=0.0).to(tl.float32)
    k_side = 1.0
    v_side = 1.0
    if HAS_SIDE:
        k_side = tl.load(SIDE + side_k + h * HEAD_SIDE)
        v_side = tl.load(SIDE + side_v + h * HEAD_SIDE)
    qk_scale = sm_scale * k_side
    if INTERP:
        qd = q
    elif VAL == VAL_FP16:
        qd = q.to(tl.float16)
    else:
        qd = q.to(tl.bfloat16)

    m_i = tl.full([GP], float("-inf"), tl.float32)
    l_i = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    nblocks = tl.cdiv(seqlen, T)
    start = sp * blocks_per_split
    stop = tl.minimum(nblocks, start + blocks_per_split)
    stop_tok = tl.minimum(seqlen, stop * T)  # an empty split (start >= stop) never loops
    for pos0 in range(start * T, stop_tok, TILE):
        tok = pos0 + rows                              # token positions of this step
        tmask = tok < stop_tok                         # pos0 < stop_tok: >= 1 live row
        slot = tok % T
        page = tl.load(BT + b * bt_stride + tok // T, mask=tmask, other=0).to(tl.int64)
        k = _load_tile(K, SCU, page, k_page_stride, k_off, ksc_off_u, slot, dim, tmask,
                       h, H, D, VAL, SCALE, SBLK, INTERP)
        v = _load_tile(V, SCU, page, v_page_stride, v_off, vsc_off_u, slot, dim, tmask,
                       h, H, D, VAL, SCALE, SBLK, INTERP)
        if INTERP:
            s = tl.dot(qd, tl.trans(k), input_precision="ieee")
        elif VAL == VAL_FP16:
            s = tl.dot(qd, tl.trans(k.to(tl.float16)))
        else:
            s = tl.dot(qd, tl.trans(k.to(tl.bfloat16)))
        s = s * qk_scale
        if SCALE == SCALE_FP32:
            ks = tl.load(SCF + page * sc_page_stride_f + ksc_off_f + slot * H + h,
                         mask=tmask, other=0.0)
            s = s * ks[None, :]
        s = tl.where(tmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if SCALE == SCALE_FP32:
            vs = tl.load(SCF + page * sc_page_stride_f + vsc_off_f + slot * H + h,
                         mask=tmask, other=0.0)
            pv = p * vs[None, :]
        else:
            pv = p
        if INTERP:
            o = tl.dot(pv, v, input_precision="ieee")
        elif VAL == VAL_FP16:
            o = tl.dot(pv.to(tl.float16), v.to(tl.float16))
        else:
            o = tl.dot(pv.to(tl.bfloat16), v.to(tl.bfloat16))
        acc = acc * alpha[:, None] + o
        m_i = m_new
    acc = acc * v_side
    row = (b * (H * G) + h * G + g) * num_splits + sp
    tl.store(PART_O + row[:, None] * D + dim[None, :], acc, mask=gmask[:, None])
    tl.store(PART_ML + row * 2, m_i, mask=gmask)
    tl.store(PART_ML + row * 2 + 1, l_i, mask=gmask)


@triton.jit
def _merge_kernel(PART_O, PART_ML, OUT, num_splits, D: tl.constexpr, SP: tl.constexpr):
    """Combine split partials of one (sequence, query head): softmax-weighted sum. A
    split with no pages left (m = -inf) weighs nothing."""
    r = tl.program_id(0)
    s = tl.arange(0, SP)
    smask = s < num_splits
    m = tl.load(PART_ML + (r * num_splits + s) * 2, mask=smask, other=float("-inf"))
    l = tl.load(PART_ML + (r * num_splits + s) * 2 + 1, mask=smask, other=0.0)
    mx = tl.max(m, 0)
    w = tl.where(smask & (m > float("-inf")), tl.exp(m - mx), 0.0)
    dim = tl.arange(0, D)
    o = tl.load(PART_O + (r * num_splits + s)[:, None] * D + dim[None, :],
                mask=smask[:, None], other=0.0)
    num = tl.sum(o * w[:, None], 0)
    den = tl.sum(l * w, 0)
    tl.store(OUT + r * D + dim, num / den)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class DecodeTile:
    """How the decode kernel walks the KV: tokens per loop step (several small pages,
    or part of a large one), warps per program and software-pipeline stages."""

    tile_tokens: int = 16
    num_warps: int = 4
    num_stages: int = 3

    def describe(self) -> dict[str, int]:
        return {"tile_tokens": self.tile_tokens, "num_warps": self.num_warps,
                "num_stages": self.num_stages}


#: the default (16 tokens per step, 4 warps, Triton's default 3 stages)
DEFAULT_TILE = DecodeTile()
#: the candidates a benchmark's autotune tries, and the set the sm_90 compile test
#: compiles. Rows per step stop at 64, and 64 rows take 8 warps: the compile test found
#: 128+ row tiles spilling kilobytes of registers per thread with triton 3.6 (1024-row
#: tiles over sm_90's shared memory), and 64 rows on 4 warps spilling 8.5 KB for mxfp4
#: with triton 3.9
TILE_CHOICES = (DecodeTile(16, 4, 3), DecodeTile(16, 4, 2), DecodeTile(32, 4, 2),
                DecodeTile(32, 4, 3), DecodeTile(64, 8, 2), DecodeTile(64, 8, 3))
#: split counts are powers of two up to this, so the merge kernel (SP constexpr)
#: compiles at most log2(MAX_SPLITS) + 1 variants; the split count itself is a
#: runtime argument of the decode kernel
MAX_SPLITS = 64


def tile_choices(tokens: int) -> list[DecodeTile]:
    """The autotune candidates for pages of ``tokens`` tokens: every choice (a step
    reads whole small pages or a slice of a large one, so none depends on the page)."""
    return list(TILE_CHOICES)


def choose_splits(batch: int, heads: int, max_blocks: int, device: torch.device,
                  pages_per_step: int = 1) -> int:
    """Split the context so that batch x heads x splits fills the GPU about twice; a
    power of two <= MAX_SPLITS and no more than the context has page steps."""
    steps = -(-max_blocks // pages_per_step)
    if device.type != "cuda":
        want = 1 if steps < 4 else 2
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = max(1, -(-2 * sms // max(1, batch * heads)))
    want = min(want, steps, MAX_SPLITS)
    return 1 << (max(1, want).bit_length() - 1)  # round down to a power of two


def check_shape(tokens: int, head_dim: int) -> None:
    """The kernel's tl.arange and index arithmetic need power-of-two page and head
    sizes (registers and shared memory scale with the tile's rows, not the page)."""
    if tokens < 1 or tokens & (tokens - 1):
        raise ValueError(f"paged decode needs a power-of-two page size in tokens, not {tokens}")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"paged decode needs a power-of-two head_dim >= 16, not {head_dim}")


def prepare_decode(q, k_vals, v_vals, block_table, seq_lens, *, fmt: str | KVFormat, tokens: int,
                   heads: int, head_dim: int, k_off: int, v_off: int, k_page_stride: int,
                   v_page_stride: int, scales_f32=None, scales_u8=None,
                   sc_page_stride_f: int = 0, sc_page_stride_u: int = 0, ksc_off_f: int = 0,
                   vsc_off_f: int = 0, ksc_off_u: int = 0, vsc_off_u: int = 0, side=None,
                   side_k: int = 0, side_v: int = 0, head_side: bool = False,
                   sm_scale: float | None = None, num_splits: int | None = None,
                   tile: DecodeTile | None = None, out=None):
    """Decode attention for one layer, prepared once: arguments, split count, the
    partial-result workspace and the output are fixed here, and the returned callable
    only launches the two kernels (no allocation, no argument building), so a timed
    step holds device work and two launches per layer, and can be captured in a CUDA
    graph. The callable returns ``out``: fp32 ``[B, H*G, D]``.

    fmt: the KV format of the pages (a name or a KVFormat; see ``format_constexprs``).
    q: ``[B, H*G, D]`` (fp16 for fp16 pages, bf16 or fp32 otherwise). k_vals / v_vals:
    the pool (or a K/V buffer) viewed as the value element type (fp16, int16 for bf16
    under the interpreter, bf16 on CUDA, uint8 for fp8/fp4); offsets and page strides
    are in those elements. scales_f32 / scales_u8: the pool viewed as fp32 / uint8 for
    in-page scales (token-head fp32 / block e4m3-e8m0 bytes), with their own offsets and
    strides. block_table: int32 ``[B, max_blocks]``; seq_lens: int32 ``[B]`` (>= 1).
    side: fp32 out-of-page scales (flat) with element offsets side_k / side_v of this
    layer's K and V; head_side when there is one per KV head. tile: see DecodeTile.
    """
    B, HG, D = q.shape
    G = HG // heads
    check_shape(tokens, head_dim)
    fmt_consts = format_constexprs(fmt)
    tile = tile or DEFAULT_TILE
    if tile.tile_tokens < 16 or tile.tile_tokens & (tile.tile_tokens - 1):
        raise ValueError(f"a decode tile needs a power-of-two >= 16 rows (tl.dot), not {tile}")
    pps = max(1, tile.tile_tokens // tokens)  # whole pages a step covers
    max_blocks = block_table.shape[1]
    splits = num_splits or choose_splits(B, heads, max_blocks, q.device, pps)
    if splits < 1 or splits > MAX_SPLITS or splits & (splits - 1):
        raise ValueError(f"num_splits must be a power of two in 1..{MAX_SPLITS}, not {splits}")
    per = -(-max_blocks // splits)
    per = -(-per // pps) * pps  # whole page steps per split
    dev = q.device
    part_o = torch.empty(B * HG * splits * D, device=dev, dtype=torch.float32)
    part_ml = torch.empty(B * HG * splits * 2, device=dev, dtype=torch.float32)
    out = out if out is not None else torch.empty(B, HG, D, device=dev, dtype=torch.float32)
    args = (q, k_vals, v_vals, scales_f32 if scales_f32 is not None else part_ml,
            scales_u8 if scales_u8 is not None else k_vals, block_table, seq_lens,
            side if side is not None else part_ml, part_o, part_ml,
            block_table.stride(0), k_page_stride, v_page_stride, sc_page_stride_f,
            sc_page_stride_u, k_off, v_off, ksc_off_f, vsc_off_f, ksc_off_u, vsc_off_u,
            side_k, side_v, float(sm_scale if sm_scale is not None else head_dim ** -0.5),
            per, splits)
    consts = dict(T=tokens, H=heads, D=head_dim, G=G, GP=max(16, triton.next_power_of_2(G)),
                  **fmt_consts, HEAD_SIDE=1 if head_side else 0, HAS_SIDE=side is not None,
                  TILE=tile.tile_tokens, INTERP=interpreting(), num_warps=tile.num_warps,
                  num_stages=tile.num_stages)
    grid, merge_grid, sp = (B, heads, splits), (B * HG,), max(2, splits)

    def launch():
        _paged_decode_kernel[grid](*args, **consts)
        _merge_kernel[merge_grid](part_o, part_ml, out, splits, D=head_dim, SP=sp)
        return out
    launch.splits = splits  # type: ignore[attr-defined]
    return launch


def paged_decode(q, k_vals, v_vals, block_table, seq_lens, **kw):
    """Decode attention for one layer, prepared and launched at once (see
    ``prepare_decode`` for the arguments). Returns fp32 ``[B, H*G, D]``."""
    return prepare_decode(q, k_vals, v_vals, block_table, seq_lens, **kw)()
