"""What each decode case holds at once (kvbench.footprint): upper bounds read off
``cache``, ``cpu``, ``hbm``, ``lower`` and ``steps``, in bytes by kind. Shapes as in
``cache.Cache``: B sequences of C tokens, P = ceil(C / T) pages per sequence and
layer, BP = B x P pages per layer, L layers, pages of the layer layout. Temporaries are
summed with what they coexist with. Pure arithmetic (and, for the hbm placement, the
device's free bytes): no torch import."""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.bench import RunContext
from kvbench.footprint import tier_free, total
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB, align_up

#: template pages a Cache encodes (cache.Cache: min(256, BP))
TEMPLATE_PAGES = 256
#: sequences the output is verified on (record._verify)
VERIFIED = 2
#: pipelined placements' HBM staging slots (lower.RING_SLOTS)
RING = 2


@dataclass(frozen=True)
class _Shape:
    L: int
    B: int
    P: int
    T: int
    pb: int  # payload bytes of one page (layer layout)
    elems: int  # K (or V) elements of one page: T x kv_heads x head_dim
    hq: int  # query heads
    C: int

    @property
    def BP(self) -> int:
        return self.B * self.P

    @property
    def cache(self) -> int:
        """Every layer's pages: L x BP x page bytes."""
        return self.L * self.BP * self.pb

    @property
    def stride(self) -> int:
        return align_up(self.pb, 4096)


def _shape(ctx: RunContext, fmt: str, batch: int, context: int) -> _Shape | None:
    """None where decode attention is not modelled for the shape (the case skips with
    ``ModelSpec.attention_gap``)."""
    m = ctx.model
    if m.attention_gap("decode"):
        return None
    spec = PageSpec(m, get_format(fmt), ctx.tokens_per_page, "layer")
    return _Shape(m.num_layers, batch, -(-context // spec.tokens), spec.tokens, spec.page_bytes,
                  spec.tokens * m.kv_heads * m.head_dim, m.num_attention_heads, context)


def templates(s: _Shape, cuda: bool) -> dict[str, int]:
    """cache._templates: min(256, BP) pages encoded from fp32 K and V on the host, the
    pages then copied to the device with CUDA."""
    n = min(TEMPLATE_PAGES, s.BP)
    return total({"pageable": n * (s.pb + 2 * s.elems * 4)}, {"device": n * s.pb} if cuda else {})


def reference(s: _Shape, batch: int, row: int) -> int:
    """attention.decode_reference over ``batch`` sequences of one layer: the gathered
    rows (``row`` bytes each), K and V dequantized to fp32 with as much again twice for
    the codecs' intermediates, and one sequence's scores and probabilities."""
    return batch * s.P * row + 2 * 3 * batch * s.P * s.elems * 4 + 2 * s.hq * s.C * 4


def cpu_reference(ctx: RunContext, fmt: str, batch: int, context: int, placement: str) -> dict[str, int]:
    """cpu.cpu_reference_case (pageable host memory): per cache, the templates and the
    L x BP pages; for nvme also the file (L x BP rows of the 4 KiB-aligned stride),
    one layer's staging pool (BP strided rows) and the O_DIRECT write's one-row staging;
    once, the reference decode's workspace. A quantized format holds a second such
    cache in fp16, its companion."""
    parts, work = [], 0
    for f in dict.fromkeys([fmt, "fp16"]):
        s = _shape(ctx, f, batch, context)
        if s is None:
            return {}
        parts += [templates(s, False), {"pageable": s.cache}]
        if placement == "nvme":
            parts.append({"file": s.L * s.BP * s.stride, "pageable": s.BP * s.stride + s.stride})
        work = max(work, reference(s, batch, s.stride if placement == "nvme" else s.pb))
    return total(*parts, {"pageable": work})


def kernel_check(ctx: RunContext, fmt: str) -> dict[str, int]:
    """cpu.kernel_check_case: a 2-sequence cache of 3 pages each, one layer of its pages
    (device with CUDA), the reference and the kernels' outputs."""
    s = _shape(ctx, fmt, 2, 3 * ctx.tokens_per_page - 5)
    if s is None:
        return {}
    where = "device" if ctx.cuda else "pageable"
    return total(templates(s, ctx.cuda), {where: s.BP * s.pb + 2 * reference(s, 2, s.pb)})


def _copy_arms(ctx: RunContext, h2d: bool = True) -> dict[str, int]:
    """steps._copy_arms: two device buffers (and a pinned one) of 128 MiB quick, 512 full."""
    nb = (128 if ctx.quick else 512) * MiB
    return {"device": 2 * nb, "pinned": nb if h2d else 0}


def ceiling(ctx: RunContext, what: str) -> dict[str, int]:
    """steps.ceiling_case: 512 MiB quick / 2 GiB full on each end (hbm: two device
    buffers; h2d: pinned source, device destination)."""
    nb = (512 if ctx.quick else 2048) * MiB
    return {"device": 2 * nb} if what == "hbm" else {"pinned": nb, "device": nb}


def hbm(ctx: RunContext, fmt: str, batch: int, context: int, fused: bool) -> dict[str, int]:
    """hbm.hbm_case, on the device: the pages of its cache and of its twin (fused fp16
    for a fused quantized case, the same cache again for an unfused one), each pool
    holding as many layers as its share of the free device memory allows (0.45 of it
    with a twin, halved, 0.55 without) but never less than one layer nor more than all
    L: with the free bytes unknown (no CUDA here), all L; the unfused bf16 K+V workspace
    twice; the templates; per-layer block tables; the copy arms; the verification."""
    s = _shape(ctx, fmt, batch, context)
    if s is None:
        return {}
    has_twin = not (fused and fmt == "fp16")
    bf16_kv = 2 * s.BP * s.elems * 2
    free = tier_free("device", ctx.nvme_dir) if ctx.cuda else None
    share = None
    if free is not None:
        from kvbench.tiers.hbm import HBM_MARGIN_BYTES

        budget = int((0.45 if has_twin else 0.55) * (free + HBM_MARGIN_BYTES)) - (0 if fused else 2 * bf16_kv)
        share = budget // (2 if has_twin else 1)

    def pool(x: _Shape) -> int:
        per_layer = x.BP * x.pb
        return x.cache if share is None else min(x.cache, max(per_layer, share))
    caches = [s] + ([(_shape(ctx, "fp16", batch, context) if fused else s)] if has_twin else [])
    parts = [{"device": pool(x) + 4 * x.L * x.BP + reference(s, min(VERIFIED, batch), s.pb)} for x in caches]
    parts += [templates(x, True) for x in {id(x): x for x in caches}.values()]
    return total(*parts, _copy_arms(ctx, h2d=False), {"device": 0 if fused else 2 * bf16_kv})


def prefetch(ctx: RunContext, fmt: str, batch: int, context: int, placement: str, window: int = 0
             ) -> dict[str, int]:
    """lower.prefetch_case (dram_prefetch, hot_window, nvme): on the device the ring
    (2 slots of one layer's BP pages, plus the hot window's pages of every layer; rows
    at the file's 4 KiB stride for nvme), its copy the verification makes, the block
    tables per (slot, layer) and the reference; pinned, every layer's pages (not for
    nvme) or, for nvme, two pinned layer regions and the sequential ceiling's buffer
    (at most 4 regions); the nvme file (L x BP strided rows); the copy arms; the
    templates."""
    s = _shape(ctx, fmt, batch, context)
    if s is None:
        return {}
    hot = min(s.P, -(-window // s.T)) if window else 0
    row = s.stride if placement == "nvme" else s.pb
    ring = (RING * s.BP + s.L * s.B * hot) * row
    device = 2 * ring + 4 * RING * s.L * s.BP + reference(s, min(VERIFIED, batch), row)
    if placement == "nvme":
        region = s.BP * s.stride
        file = s.L * region
        host = {"file": file, "pinned": RING * region + min(file, 4 * region)}
    else:
        host = {"pinned": s.cache}
    return total({"device": device}, host, _copy_arms(ctx), templates(s, True))


def zero_copy(ctx: RunContext, fmt: str, batch: int, context: int) -> dict[str, int]:
    """lower.zero_copy_case: every layer's pages pinned (read in place by the kernel),
    per-layer block tables and the output on the device, the copy arms, the templates,
    and the verification's reference over the pinned pages (pageable workspace)."""
    s = _shape(ctx, fmt, batch, context)
    if s is None:
        return {}
    return total({"pinned": s.cache, "device": 4 * s.L * s.BP + batch * s.hq * ctx.model.head_dim * 4,
                  "pageable": reference(s, min(VERIFIED, batch), s.pb)}, _copy_arms(ctx), templates(s, True))
