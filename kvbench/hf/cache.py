"""``PagedCache``: a transformers ``Cache`` whose layers keep K/V in kvbench pages.

One ``PagePool`` on the chosen tier (layout ``layer``: a page holds ``tokens_per_page``
tokens of one layer, K and V of every KV head), one ``PagedKVStore`` over it, one
sequence per batch row. On ``update`` the new tokens are quantized into their pages with
the format's torch reference codec (``kvbench.formats.paged.quantize_to_pages``); the
layer's whole K/V is then gathered from the pages and dequantized
(``dequantize_pages``) and handed back, so the model's own attention (eager, sdpa) runs
over it. This slice is therefore a storage path, not a fast one: every step reads every
page of the layer. The fused paged-attention path (``kvbench.attention``) is the next
slice of issue 13.

Exactness: a lossless format (fp16, bf16) round-trips bit-exact when the model runs in
that dtype (fp16 pages for a float16 model, bf16 pages for a bfloat16 one); with a
float32 model an fp16 page rounds every element to half, like any fp16 KV cache.

Shapes follow transformers: ``key_states``/``value_states`` ``[B, H_kv, n, D]``; the
returned keys/values ``[B, H_kv, seq_len, D]`` in the input's dtype and device.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvbench.errors import KvbenchError
from kvbench.formats.paged import dequantize_pages, quantize_to_pages, side_scales, unit_side
from kvbench.spec import ModelSpec, PageSpec, get_format, model_from_dict
from kvbench.store import PagedKVStore, PagePool
from kvbench.tiers import make_tier

#: how ``side`` may be given (besides an fp32 tensor ``[num_layers, kv_factor, S]``)
SIDE_MODES = ("prefill", "unit")


def model_spec_from_config(config: Any) -> ModelSpec:
    """A kvbench ``ModelSpec`` from a transformers config (its text decoder's fields, under
    their Hugging Face names). Sliding-window layers are refused: this slice pages only
    full-attention layers."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * layers)
    if any(t != "full_attention" for t in types):
        raise KvbenchError(f"PagedCache pages full-attention layers only; this config's layer_types "
                           f"are {sorted(set(types))}")
    return model_from_dict({
        "name": f"hf-{getattr(cfg, 'model_type', 'model')}",
        "attention_type": "gqa" if kv_heads != heads else "mha",
        "config": {"model_type": getattr(cfg, "model_type", ""), "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                   "head_dim": int(head_dim), "hidden_size": int(cfg.hidden_size)},
        "source_url": "transformers config object (in memory)",
        "retrieved": _dt.date.today().isoformat(),
    }, origin="transformers config")


def _query_length(arg: Any) -> int:
    """transformers' layers were asked ``get_mask_sizes(cache_position)`` (a 1-D tensor of
    the query's positions) before they were asked ``get_mask_sizes(query_length)``; take
    either."""
    if isinstance(arg, torch.Tensor):
        return int(arg.shape[0]) if arg.dim() else int(arg)
    return int(arg)


class PagedLayer(CacheLayerMixin):
    """One model layer of a ``PagedCache``: its tokens live in the cache's pages (group
    ``layer_idx`` of every sequence's block table); ``keys``/``values`` stay None."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = True

    def __init__(self, cache: "PagedCache", layer_idx: int) -> None:
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size = int(key_states.shape[0])
        self.cache._ensure(key_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``[B, H, n, D]`` new tokens in pages; return this layer's whole K/V,
        ``[B, H, seq_len, D]``, dequantized from the pages (not the inputs)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = int(key_states.shape[-2])
        if n:
            self.cache._write(self.layer_idx, key_states, value_states, self.length)
            self.length += n
        return self.cache._read(self.layer_idx, self.length, key_states.dtype, key_states.device)

    def get_mask_sizes(self, query_length: Any) -> tuple[int, int]:
        """(kv_length, kv_offset) for the mask of a query of ``query_length`` tokens."""
        return self.length + _query_length(query_length), 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        """Nothing to move: the layer's data already lives on the cache's tier."""

    def prefetch(self) -> None:
        """Nothing to move (see ``offload``)."""

    def reset(self) -> None:
        self.length = 0

    def _unsupported(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError("PagedCache does not reorder, crop or repeat batch rows yet "
                                  "(beam search, assisted decoding): a later slice of issue 13")

    reorder_cache = crop = batch_repeat_interleave = batch_select_indices = _unsupported


class PagedCache(Cache):
    """A transformers ``Cache`` backed by kvbench's paged store.

    model_config: the model's transformers config (``model.config``).
    fmt: a kvbench format name (``kvbench.spec.FORMATS``: fp16, bf16, fp8_e4m3, nvfp4, ...).
    tier: ``hbm``, ``dram`` or ``nvme`` (``nvme_dir``: the folder for the pool's file).
    tokens_per_page: tokens per page (layout ``layer``).
    max_cache_len: tokens per sequence the pool is sized for, when ``num_pages`` is not
        given (the pool is made on the first update, when the batch size is known:
        ``batch * num_layers * ceil(max_cache_len / tokens_per_page)`` pages).
    side: the out-of-page scales of fp8_e4m3 / fp8_e4m3_head / nvfp4: "prefill" (each
        layer's scales computed from its first update, the prompt; later tokens beyond
        its range saturate), "unit" (all 1.0), or an fp32 tensor
        ``[num_layers, kv_factor, S]``. Ignored by formats without them.

    ``update`` returns the dequantized full K/V of the layer gathered from its pages, so
    the model's normal attention runs (the fused paged-attention path is the next slice).
    Call ``close()`` (or use ``with``) to release the pool and the tier's files.
    """

    def __init__(self, model_config: Any, fmt: str = "fp16", tier: str = "dram",
                 tokens_per_page: int = 16, *, max_cache_len: int = 4096,
                 num_pages: int | None = None, nvme_dir: str | Path | None = None,
                 side: str | torch.Tensor = "prefill") -> None:
        self.model = model_spec_from_config(model_config)
        self.spec = PageSpec(self.model, get_format(fmt), tokens_per_page, "layer")
        self.tier_name, self.nvme_dir = tier, nvme_dir
        # private names: transformers' Cache has had max_cache_len / max_batch_size properties
        self._max_tokens, self._num_pages = max_cache_len, num_pages
        if isinstance(side, str) and side not in SIDE_MODES:
            raise KvbenchError(f"side {side!r}: one of {', '.join(SIDE_MODES)} or a tensor")
        self.side_mode = side if isinstance(side, str) else "given"
        self.side = None if isinstance(side, str) else side.to(torch.float32)
        if self.side is None:
            self.side = unit_side(self.model, self.spec.fmt)
        self._calibrated: set[int] = set()
        self.tier = self.pool = self.store = None
        self.batch: int | None = None
        super().__init__(layers=[PagedLayer(self, i) for i in range(self.model.num_layers)])

    # ---------------------------------------------------------------- pages
    def _ensure(self, key_states: torch.Tensor) -> None:
        """Make the pool and one sequence per batch row on the first update."""
        b, h, _, d = key_states.shape
        if (h, d) != (self.model.kv_heads, self.model.head_dim):
            raise KvbenchError(f"key states have {h} heads of {d}; the config says "
                               f"{self.model.kv_heads} of {self.model.head_dim}")
        if self.store is not None:
            if b != self.batch:
                raise KvbenchError(f"PagedCache holds a batch of {self.batch}, got {b} rows")
            return
        tier = make_tier(self.tier_name, self.nvme_dir)
        ok, why = tier.available()
        if not ok:
            raise KvbenchError(f"tier {self.tier_name} is unavailable: {why}")
        pages = self._num_pages or b * self.model.num_layers * -(-self._max_tokens // self.spec.tokens)
        self.tier, self.pool = tier, PagePool(tier, self.spec, pages)
        self.store = PagedKVStore(self.pool)
        self.batch = int(b)
        for row in range(self.batch):
            self.store.add_sequence(row)

    def _write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Quantize ``[B, H, n, D]`` tokens at positions ``start..start+n`` of ``layer``."""
        b, h, n, d = k.shape
        if self.side_mode == "prefill" and layer not in self._calibrated and self.side is not None:
            self.side[layer] = side_scales(k.transpose(1, 2), v.transpose(1, 2), self.spec.fmt).to(self.side)
        self._calibrated.add(layer)
        t = self.spec.tokens
        pos = list(range(start, start + n))
        pids: list[int] = []
        for row in range(b):
            grow = start + n - self.store.seqs[row].tokens
            if grow > 0:
                self.store.append_tokens(row, grow)
            table = self.store.seqs[row].table[layer]
            pids += [table[p // t] for p in pos]
        slots = torch.tensor([p % t for p in pos] * b, dtype=torch.long)
        kk = k.transpose(1, 2).reshape(b * n, h, d)
        vv = v.transpose(1, 2).reshape(b * n, h, d)
        if not self.pool.is_file:
            quantize_to_pages(kk, vv, self.pool.payload(), torch.tensor(pids), slots, self.spec,
                              self.side, layer=layer)
            return
        # a file pool: read the pages touched, fill them, write them back
        ids = sorted(set(pids))
        local = {p: i for i, p in enumerate(ids)}
        staging = self.pool.read_pages(ids)
        quantize_to_pages(kk, vv, staging, torch.tensor([local[p] for p in pids]), slots,
                          self.spec, self.side, layer=layer)
        self.pool.write_pages(ids, staging)

    def _read(self, layer: int, length: int, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` tokens of ``layer``, ``[B, H, length, D]`` in ``dtype``."""
        p = -(-length // self.spec.tokens)
        tables = [self.store.seqs[row].table[layer][:p] for row in range(self.batch)]
        if self.pool.is_file:
            rows = self.pool.read_pages([i for t in tables for i in t])
            table = torch.arange(self.batch * p, dtype=torch.long).view(self.batch, p)
        else:
            rows, table = self.pool.payload(), torch.tensor(tables, dtype=torch.long)
        k, v = dequantize_pages(rows, table, self.spec, self.side, layer=layer, dtype=dtype)
        return tuple(x[:, :length].transpose(1, 2).contiguous().to(device) for x in (k, v))

    # ---------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Free every sequence's pages (the pool stays) and empty the layers."""
        if self.store is not None:
            for row in list(self.store.seqs):
                self.store.free_sequence(row)
                self.store.add_sequence(row)
        self._calibrated.clear()
        for layer in self.layers:
            layer.reset()

    def close(self) -> None:
        """Release the pool and what the tier holds (an nvme tier's folder)."""
        if self.pool is not None:
            self.pool.close()
            self.tier.close()
        self.tier = self.pool = self.store = None

    def __enter__(self) -> "PagedCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, for a result record."""
        return {**self.spec.describe(), "tier": self.pool.tier.label if self.pool else self.tier_name,
                "pages": self.pool.num_pages if self.pool else None, "side": self.side_mode}
