"""Quantized KV in pages: pack / unpack one page, and write / read tokens of a page pool,
in plain torch (the reference the Triton kernels are checked against; also the CPU path).
The Triton kernels sit a layer above (``kernels/quant.py``); ``kvbench.quantized_pages``
chooses between the two (``backend="auto"`` uses the kernels for CUDA pools).

Byte map: ``kvbench.formats.layout``. Side (out-of-page) scales of a whole model are an
fp32 tensor ``[num_layers, kv_factor, S]`` (S = H per head, 1 per tensor), or None for
formats without one; ``side_scales`` computes them from data, ``unit_side`` gives 1.0.
"""

from __future__ import annotations

import torch

from kvbench.errors import KvbenchError
from kvbench.formats.codecs import Quantized, dequantize, quantize, side_scale
from kvbench.formats.layout import PageMap, page_map, region_for_layer, side_count, side_shape
from kvbench.spec import KVFormat, ModelSpec, PageSpec, get_format

#: the backend this module is: the torch reference (the others: kvbench.quantized_pages)
BACKEND = "torch"
#: lossless elements and their torch dtypes: read back in the same dtype they are the
#: stored values, with no fp32 round trip
_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ---- side scales -----------------------------------------------------------------------
def side_scales(k: torch.Tensor, v: torch.Tensor | None, fmt: str | KVFormat) -> torch.Tensor | None:
    """Side scales of one layer computed from its data: ``k, v [..., H, D]`` -> fp32
    ``[kv_factor, S]`` (stack over layers for a model's ``[L, kv_factor, S]``), or None
    when the format has no out-of-page scale. v is None for MLA."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    if f.tensor_scale_bytes == 0:
        return None
    parts = [side_scale(k, f)] + ([side_scale(v, f)] if v is not None else [])
    return torch.stack(parts)


def unit_side(model: ModelSpec, fmt: str | KVFormat, device: str | torch.device = "cpu") -> torch.Tensor | None:
    """An uncalibrated side tensor, all 1.0 (as serving engines default to): fp32
    ``[num_layers, kv_factor, S]``, or None for formats without out-of-page scales."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    shape = side_shape(model, f)
    return None if shape is None else torch.ones(shape, dtype=torch.float32, device=device)


def _layer_side(side: torch.Tensor | None, spec: PageSpec, layer: int, kv: int) -> torch.Tensor | None:
    """side[layer, kv] as fp32 [S], checked; None when the format has no side scale."""
    f, m = spec.fmt, spec.model
    s = side_count(m, f)
    if s == 0:
        return None
    if side is None:
        raise KvbenchError(
            f"{f.name}: needs out-of-page scales [layers, kv, {s}] (see side_scales / unit_side)"
        )
    want = (m.num_layers, m.kv_factor, s)
    if tuple(side.shape) != want:
        raise KvbenchError(f"{f.name}: side scales have shape {tuple(side.shape)}, expected {want}")
    return side[layer, kv]


# ---- one page --------------------------------------------------------------------------
def _expect(x: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if x is None or tuple(x.shape) != shape:
        got = None if x is None else tuple(x.shape)
        raise KvbenchError(f"{what}: expected shape {shape}, got {got}")


def pack_region(qs: list[Quantized], pm: PageMap) -> torch.Tensor:
    """Bytes of one layer region from its quantized K (and V) ``[T, H, D]``:
    uint8 ``[region_bytes]``."""
    parts = [q.values.reshape(-1) for q in qs]
    parts += [q.scales.reshape(-1) for q in qs if q.scales is not None]
    out = torch.cat(parts)
    assert out.numel() == pm.region_bytes, (out.numel(), pm.region_bytes)
    return out


def pack_page(k: torch.Tensor, v: torch.Tensor | None, spec: PageSpec,
              side: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize and pack one page: uint8 ``[spec.page_bytes]``.

    k, v: ``[T, H, D]`` for layout "layer", ``[L, T, H, D]`` for layout "block" (L =
        num_layers); any float dtype; v is None for MLA (kv_factor 1).
    side: out-of-page scales of the layers in this page, fp32 ``[kv_factor, S]``
        ("layer") or ``[L, kv_factor, S]`` ("block"); required by fp8_e4m3,
        fp8_e4m3_head and nvfp4 (compute with ``side_scales`` or ``unit_side``).
    """
    pm = page_map(spec)
    tensors = [k] if pm.kv_factor == 1 else [k, v]
    if pm.kv_factor == 1 and v is not None:
        raise KvbenchError("an MLA page holds one latent tensor; pass v=None")
    block = spec.layout == "block"
    shape = ((pm.regions,) if block else ()) + (pm.tokens, pm.heads, pm.head_dim)
    for name, x in zip("kv", tensors):
        _expect(x, shape, f"pack_page {name}")
    s = side_count(spec.model, spec.fmt)
    if s:
        _expect(side, ((pm.regions,) if block else ()) + (pm.kv_factor, s), "pack_page side")
    regions = []
    for r in range(pm.regions):
        qs = []
        for kv, x in enumerate(tensors):
            xr = x[r] if block else x
            sd = None if not s else (side[r, kv] if block else side[kv])
            qs.append(quantize(xr, spec.fmt.name, sd))
        regions.append(pack_region(qs, pm))
    return torch.cat(regions)


def _unpack_tensor(page: torch.Tensor, pm: PageMap, kv: int, region: int,
                   side: torch.Tensor | None, lead: tuple[int, ...]) -> Quantized:
    vr, sr = pm.values(kv, region), pm.scales(kv, region)
    vals = page[..., vr.offset:vr.end].reshape(*lead, pm.heads, pm.value_bytes)
    scales = None
    if pm.scale_bytes:
        scales = page[..., sr.offset:sr.end].reshape(*lead, pm.heads, pm.scale_bytes)
    return Quantized(pm.fmt.name, (*lead, pm.heads, pm.head_dim), vals, scales, side)


def unpack_page(page: torch.Tensor, spec: PageSpec, side: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32):
    """Inverse of ``pack_page``: uint8 ``[>= page_bytes]`` -> ``(k, v)`` in ``dtype``,
    shapes as pack_page takes them; v is None for MLA."""
    pm = page_map(spec)
    if page.dtype != torch.uint8 or page.dim() != 1 or page.numel() < pm.page_bytes:
        raise KvbenchError(f"unpack_page: expected uint8 [{pm.page_bytes}] bytes")
    block = spec.layout == "block"
    s = side_count(spec.model, spec.fmt)
    if s:
        _expect(side, ((pm.regions,) if block else ()) + (pm.kv_factor, s), "unpack_page side")
    out: list[list[torch.Tensor]] = [[] for _ in range(pm.kv_factor)]
    for r in range(pm.regions):
        for kv in range(pm.kv_factor):
            sd = None if not s else (side[r, kv] if block else side[kv])
            q = _unpack_tensor(page, pm, kv, r, sd, (pm.tokens,))
            out[kv].append(dequantize(q, dtype))
    res = [torch.stack(o) if block else o[0] for o in out]
    return (res[0], res[1] if pm.kv_factor == 2 else None)


# ---- a pool of pages -----------------------------------------------------------------
def _check_pool(pool: torch.Tensor, spec: PageSpec) -> None:
    if pool.dtype != torch.uint8 or pool.dim() != 2:
        raise KvbenchError("pool must be a uint8 tensor [num_pages, stride]")
    if pool.shape[1] < spec.page_bytes:
        raise KvbenchError(f"pool stride {pool.shape[1]} is below the page size {spec.page_bytes}")


def _check_backend(backend: str) -> None:
    """Callers may name the backend; this module is only the torch reference."""
    if backend != BACKEND:
        raise KvbenchError(
            f"backend {backend!r}: kvbench.formats.paged is the torch reference only; "
            "kvbench.quantized_pages dispatches to the Triton kernels"
        )


def quantize_to_pages(k: torch.Tensor, v: torch.Tensor | None, pool: torch.Tensor,
                      page_ids: torch.Tensor, slots: torch.Tensor, spec: PageSpec,
                      side: torch.Tensor | None = None, *, layer: int = 0,
                      backend: str = BACKEND) -> None:
    """Quantize N tokens of one layer into their (page, slot) positions of a pool.

    k, v: ``[N, H, D]`` fp16/bf16/fp32 (v None for MLA). pool: uint8 ``[num_pages, stride]``.
    page_ids, slots: int ``[N]`` (distinct positions; slot < spec.tokens). side: the whole
    model's side scales fp32 ``[num_layers, kv_factor, S]`` (or None). layer: which layer
    these tokens belong to (its region in a "block" page, its row of ``side``).
    backend: "torch" only (see ``kvbench.quantized_pages`` for the Triton kernels).
    NaN/Inf inputs raise KvbenchError.
    """
    _check_backend(backend)
    _check_pool(pool, spec)
    pm = page_map(spec)
    reg = region_for_layer(spec, layer)
    n = k.shape[0]
    tensors = [k] if pm.kv_factor == 1 else [k, v]
    for name, x in zip("kv", tensors):
        _expect(x, (n, pm.heads, pm.head_dim), f"quantize_to_pages {name}")
    pid = page_ids.to(device=pool.device, dtype=torch.long).reshape(n, 1)
    slot = slots.to(device=pool.device, dtype=torch.long).reshape(n, 1)
    if n and (int(slot.min()) < 0 or int(slot.max()) >= pm.tokens):
        raise KvbenchError(f"slots must lie in 0..{pm.tokens - 1}")
    qs = [quantize(x.to(pool.device), spec.fmt.name, _layer_side(side, spec, layer, kv))
          for kv, x in enumerate(tensors)]
    for kv, q in enumerate(qs):
        for reg_map, data, per in ((pm.values(kv, reg), q.values, pm.value_bytes),
                                   (pm.scales(kv, reg), q.scales, pm.scale_bytes)):
            if not per:
                continue
            row = pm.heads * per
            cols = reg_map.offset + slot * row + torch.arange(row, device=pool.device)
            pool[pid, cols] = data.reshape(n, row)


def dequantize_pages(pool: torch.Tensor, block_table: torch.Tensor, spec: PageSpec,
                     side: torch.Tensor | None = None, *, layer: int = 0,
                     dtype: torch.dtype = torch.float16, backend: str = BACKEND,
                     check: bool = True):
    """Read and dequantize pages of one layer into contiguous tensors.

    block_table: int ``[..., P]`` page ids. Returns ``(k, v)``, each ``[..., P*T, H, D]``
    in ``dtype`` (v None for MLA): token j of page i of the table is row i*T + j.
    backend: "torch" only. check: accepted for the same call as the Triton path's (whose
    page-id range check is a device-to-host sync); indexing checks the ids here.
    """
    _check_backend(backend)
    _check_pool(pool, spec)
    pm = page_map(spec)
    reg = region_for_layer(spec, layer)
    lead = tuple(block_table.shape[:-1])
    p = block_table.shape[-1]
    idx = block_table.to(device=pool.device, dtype=torch.long).reshape(-1)
    shape = (*lead, p * pm.tokens, pm.heads, pm.head_dim)
    same = _FLOAT.get(spec.fmt.element) if spec.fmt.family == "float" else None
    out = []
    for kv in range(pm.kv_factor):
        vr, sr = pm.values(kv, reg), pm.scales(kv, reg)
        # gather this region of each page only (one copy, contiguous; index_select, not
        # advanced indexing, which copies a uint8 row byte by byte: ~15x slower on a CPU)
        vals = pool[:, vr.offset:vr.end].index_select(0, idx)
        if same is dtype:  # lossless and already in dtype: the bytes are the values
            out.append(vals.view(dtype).view(shape))
            continue
        scales = pool[:, sr.offset:sr.end].index_select(0, idx) if pm.scale_bytes else None
        q = Quantized(pm.fmt.name, shape, vals.view(*shape[:-2], pm.heads, pm.value_bytes),
                      None if scales is None else scales.view(*shape[:-2], pm.heads, pm.scale_bytes),
                      _layer_side(side, spec, layer, kv))
        out.append(dequantize(q, dtype).reshape(shape))
    return (out[0], out[1] if pm.kv_factor == 2 else None)
