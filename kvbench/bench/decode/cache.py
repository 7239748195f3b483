"""The decode batch and where its pages live.

``Cache`` is one case's batch: B sequences of C tokens of one model and format (layer
layout), their query, lengths and template pages of real encoded K/V; it holds no pages
itself. ``LayerStore`` pages the batch into a ``kvbench.store.PagePool`` of a tier
through a ``PagedKVStore``, allocated layer-major, so that each layer's pages of the
batch are one run of consecutive ids: a layer moves in one copy.
"""

from __future__ import annotations

from typing import Any

from kvbench.bench import RunContext, Skip
from kvbench.spec import PageSpec, get_format
from kvbench.store import PagedKVStore, PagePool
from kvbench.units import GB


def _templates(spec: PageSpec, n: int, device: str, seed: int):
    """n pages of real encoded K/V (normal data, a few outlier key channels) for one
    layer region, and the model's side scales computed from them."""
    import torch

    from kvbench.formats.layout import side_shape
    from kvbench.formats.paged import quantize_to_pages, side_scales

    m = spec.model
    T, H, D = spec.tokens, m.kv_heads, m.head_dim
    g = torch.Generator(device="cpu").manual_seed(seed)
    k = torch.randn(n * T, H, D, generator=g)
    k[..., : max(1, D // 32)] *= 8.0  # outlier channels, as real keys have
    v = torch.randn(n * T, H, D, generator=g)
    shape = side_shape(m, spec.fmt)
    side = None
    if shape:
        side = torch.empty(shape)
        side[:] = side_scales(k, v, spec.fmt)
    layer_spec = PageSpec(m, spec.fmt, T, "layer")
    pool = torch.zeros(n, layer_spec.page_bytes, dtype=torch.uint8)
    ids = torch.arange(n).repeat_interleave(T)
    slots = torch.arange(T).repeat(n)
    quantize_to_pages(k, v, pool, ids, slots, layer_spec, side, layer=0, backend="torch")
    return pool.to(device), (side.to(device) if side is not None else None)


def _fill(dst, templates) -> None:
    """Tile template pages over dst rows ``[N, >= page_bytes]``."""
    n, pb = templates.shape
    for start in range(0, dst.shape[0], n):
        k = min(n, dst.shape[0] - start)
        dst[start: start + k, :pb].copy_(templates[:k])


class Cache:
    """A batch of ``B`` sequences of ``C`` tokens, layer layout: ``P`` pages per sequence
    and layer, ``BP`` pages per layer, ``L`` layers. Pages live in ``LayerStore``s."""

    def __init__(self, ctx: RunContext, fmt: str, batch: int, context: int):
        import torch

        gap = ctx.model.attention_gap("decode")
        if gap:
            raise Skip(gap)
        from kvbench.kernels_loader import load_kernels

        try:
            load_kernels("paged_attention").check_shape(ctx.tokens_per_page, ctx.model.head_dim)
        except ValueError as exc:
            raise Skip(f"{ctx.model.name}: {exc}") from None
        self.spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, "layer")
        self.B, self.C = batch, context
        self.P = -(-context // self.spec.tokens)
        self.L = ctx.model.num_layers
        self.BP = batch * self.P
        dev = "cuda" if ctx.cuda else "cpu"
        self.lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
        hq = ctx.model.num_attention_heads
        g = torch.Generator(device="cpu").manual_seed(ctx.seed + 1)
        from kvbench.attention import q_dtype
        self.q = torch.randn(batch, hq, self.spec.model.head_dim, generator=g).to(dev, q_dtype(fmt))
        self.templates, self.side = _templates(self.spec, min(256, self.BP), dev, ctx.seed)

    @property
    def kv_bytes_per_step(self) -> int:
        """Bytes the kernels read per step: every page of every layer (payload)."""
        return self.L * self.BP * self.spec.page_bytes


class LayerStore:
    """The batch's sequences (ids ``0..B-1``) in ``pool`` through a ``PagedKVStore`` of
    ``layers`` layers (default: the model's), ``tokens`` tokens each (default: the
    context), allocated layer-major. ``rows[l]``: layer l's page ids, one run of
    consecutive ids (``PagedKVStore.group_pages`` checks it); ``tables(device)``: per
    layer the block table, int32 ``[B, blocks]``."""

    def __init__(self, cache: Cache, pool: PagePool, layers: int | None = None,
                 tokens: int | None = None) -> None:
        self.pool = pool
        self.store = PagedKVStore(pool, layers=layers)
        seqs = range(cache.B)
        for b in seqs:
            self.store.add_sequence(b)
        self.store.append_tokens_layer_major(seqs, cache.C if tokens is None else tokens)
        self.layers = self.store.groups
        self.rows = [self.store.group_pages(seqs, layer) for layer in range(self.layers)]
        bt = self.store.block_tables_tensor(seqs)  # int32 [B, layers, blocks], CPU
        self._tables = [bt[:, layer].contiguous() for layer in range(self.layers)]

    def tables(self, device: str) -> list[Any]:
        """Per layer, its block table on ``device`` (a new tensor per call on CUDA)."""
        return [t.to(device) for t in self._tables]

    def view(self, layer: int) -> Any:
        """Layer ``layer``'s pages: rows ``[BP, stride]`` of the pool's tensor."""
        r = self.rows[layer]
        return self.pool.tensor[r.start: r.stop]


def _host_store(cache: Cache, pin: bool) -> LayerStore:
    """Every layer of ``cache`` in host memory (pinned or pageable), filled with the
    template pages; Skip when it does not fit."""
    from kvbench.tiers.dram import DramTier

    need = cache.L * cache.BP * cache.spec.page_bytes
    tier = DramTier(pinned=pin)
    free = tier.free_bytes()
    if need > free:
        raise Skip(f"the cache ({need / GB:.1f} GB) does not fit in host memory ({free / GB:.1f} GB free)")
    pool = PagePool(tier, cache.spec, cache.L * cache.BP)
    _fill(pool.tensor, cache.templates.cpu())
    return LayerStore(cache, pool)
