"""Decode attention over paged KV: the torch reference, the fused Triton path
(dequantization inside the attention kernel) and the unfused path (dequantize the
pages to bf16 with their own kernel first, then bf16 paged attention).

Shapes: q ``[B, Hq, D]`` (Hq = KV heads x group size), block_table int32 ``[B, P]``
(page ids of one layer group), seq_lens int32 ``[B]``; outputs fp32 ``[B, Hq, D]``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from kvbench.errors import KvbenchError
from kvbench.formats.layout import page_map, region_for_layer, side_count
from kvbench.spec import KVFormat, PageSpec, get_format


def q_dtype(fmt: str | KVFormat) -> torch.dtype:
    """The query dtype the kernels expect: fp16 with fp16 values, bf16 otherwise."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    return torch.float16 if f.element == "fp16" else torch.bfloat16


def decode_reference(q: torch.Tensor, pool: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, spec: PageSpec, layer: int = 0,
                     side: torch.Tensor | None = None) -> torch.Tensor:
    """Gather + dequantize (torch reference codecs) + fp32 softmax attention."""
    from kvbench.formats.paged import dequantize_pages

    gap = spec.model.attention_gap("decode")
    if gap:
        raise KvbenchError(gap)
    k, v = dequantize_pages(pool, block_table, spec, side, layer=layer, dtype=torch.float32,
                            backend="torch")
    B, Hq, D = q.shape
    H = spec.model.kv_heads
    G = Hq // H
    out = torch.empty(B, Hq, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(seq_lens[b])
        kb = k[b, :n].to(q.device)   # [n, H, D]
        vb = v[b, :n].to(q.device)
        qb = q[b].float().view(H, G, D)
        s = torch.einsum("hgd,nhd->hgn", qb, kb) * D ** -0.5
        p = torch.softmax(s, dim=-1)
        out[b] = torch.einsum("hgn,nhd->hgd", p, vb).reshape(Hq, D)
    return out


def _views(pool: torch.Tensor, fmt: KVFormat, interp: bool) -> tuple[torch.Tensor, int]:
    """The pool as its value element type, and the element size in bytes."""
    if fmt.element == "fp16":
        return pool.view(torch.float16), 2
    if fmt.element == "bf16":
        return pool.view(torch.int16 if interp else torch.bfloat16), 2
    return pool, 1  # 8- and 4-bit codes: bytes


def fused_args(pool: torch.Tensor, spec: PageSpec, layer: int,
               side: torch.Tensor | None, zero_copy: bool = False) -> dict[str, Any]:
    """Offsets, strides and views for one layer of a pool, for ``paged_decode``.
    zero_copy: the pool is pinned host memory that the CUDA kernel reads in place
    (unified addressing)."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    if zero_copy:
        a = fused_args(pool, spec, layer, side)
        host = load_kernels("gather").HostPointer
        for key in ("k_vals", "v_vals", "scales_f32", "scales_u8"):
            if key in a:
                a[key] = host(a[key])
        return a
    fmt = spec.fmt
    pm = page_map(spec)
    reg = region_for_layer(spec, layer)
    stride = pool.shape[1]
    if stride % 4:
        raise KvbenchError(f"pool stride {stride} is not a multiple of 4 bytes")
    vals, es = _views(pool, fmt, pa.interpreting())
    kv_off = [pm.values(kv, reg).offset for kv in range(2)]
    sc_off = [pm.scales(kv, reg).offset for kv in range(2)]
    a: dict[str, Any] = dict(
        fmt=fmt.name, tokens=pm.tokens, heads=pm.heads, head_dim=pm.head_dim,
        k_vals=vals, v_vals=vals, k_off=kv_off[0] // es, v_off=kv_off[1] // es,
        k_page_stride=stride // es, v_page_stride=stride // es,
    )
    if fmt.scale == "token_head":
        a.update(scales_f32=pool.view(torch.float32), sc_page_stride_f=stride // 4,
                 ksc_off_f=sc_off[0] // 4, vsc_off_f=sc_off[1] // 4)
    if fmt.scale == "block":
        a.update(scales_u8=pool, sc_page_stride_u=stride, ksc_off_u=sc_off[0], vsc_off_u=sc_off[1])
    s = side_count(spec.model, fmt)
    if s:
        if side is None:
            raise KvbenchError(f"{fmt.name}: the fused kernel needs the side scales")
        kvf = spec.model.kv_factor
        a.update(side=side.reshape(-1).contiguous(), side_k=(layer * kvf) * s,
                 side_v=(layer * kvf + 1) * s, head_side=fmt.scale == "head")
    return a


def prepare_fused(q: torch.Tensor, pool: torch.Tensor, block_table: torch.Tensor,
                  seq_lens: torch.Tensor, spec: PageSpec, layer: int = 0,
                  side: torch.Tensor | None = None, zero_copy: bool = False,
                  **kw: Any) -> Callable[[], torch.Tensor]:
    """One layer of decode attention with dequantization fused into the loads,
    prepared once (views, offsets, workspace, output): the returned callable only
    launches the kernels (see ``kvbench_kernels.paged_attention.prepare_decode``; kw:
    ``tile``, ``num_splits``, ``out``)."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    return pa.prepare_decode(q, block_table=block_table, seq_lens=seq_lens,
                             **fused_args(pool, spec, layer, side, zero_copy), **kw)


def decode_fused(q: torch.Tensor, pool: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor, spec: PageSpec, layer: int = 0,
                 side: torch.Tensor | None = None, zero_copy: bool = False,
                 **kw: Any) -> torch.Tensor:
    """One layer of decode attention, dequantization fused into the kernel's loads."""
    return prepare_fused(q, pool, block_table, seq_lens, spec, layer, side, zero_copy, **kw)()


def decode_unfused(q: torch.Tensor, pool: torch.Tensor, block_table: torch.Tensor,
                   seq_lens: torch.Tensor, spec: PageSpec, layer: int = 0,
                   side: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
    """Dequantize the pages to bf16 first (kvbench_kernels.quant), then bf16 paged
    attention over the dequantized copy."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    # check=False: no host sync in timed steps
    k, v = load_kernels("quant").dequantize_pages(pool, block_table, spec, side, layer=layer,
                                                  dtype=torch.bfloat16, check=False)
    B, P = block_table.shape
    pm = page_map(spec)
    per_page = pm.tokens * pm.heads * pm.head_dim
    interp = pa.interpreting()
    kv = [x.reshape(-1).view(torch.int16) if interp else x.reshape(-1) for x in (k, v)]
    table = torch.arange(B * P, dtype=torch.int32, device=q.device).view(B, P)
    return pa.paged_decode(q.to(torch.bfloat16) if not interp else q, kv[0], kv[1], table,
                           seq_lens, fmt="bf16", tokens=pm.tokens, heads=pm.heads,
                           head_dim=pm.head_dim, k_off=0, v_off=0, k_page_stride=per_page,
                           v_page_stride=per_page, **kw)
