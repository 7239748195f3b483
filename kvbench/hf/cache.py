"""``PagedCache``: a transformers ``Cache`` whose layers keep K/V in kvbench pages.

The pages (layout ``layer``: a page holds ``tokens_per_page`` tokens of one layer, K and
V of every KV head) live on one tier, or as a hot window of recent tokens on one tier
and the rest on another (``kvbench.hf.pages.PlacedPages``); one block table per layer
and batch row. On ``update`` the new tokens are quantized into their pages with the
format's torch reference codec (``kvbench.formats.paged.quantize_to_pages``). Then
either the model's attention is kvbench's (``kvbench.hf.attention``) and reads the pages
itself, or the layer's whole K/V is gathered from the pages, dequantized and handed
back for the model's own attention (eager, sdpa) to run over.

Exactness: a lossless format (fp16, bf16) round-trips bit-exact when the model runs in
that dtype (fp16 pages for a float16 model, bf16 pages for a bfloat16 one); with a
float32 model an fp16 page rounds every element to half, like any fp16 KV cache.

Shapes follow transformers: ``key_states``/``value_states`` ``[B, H_kv, n, D]``; the
returned keys/values ``[B, H_kv, seq_len, D]`` in the input's dtype and device.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kvbench.errors import KvbenchError
from kvbench.formats.paged import dequantize_pages, side_scales, unit_side
from kvbench.spec import ModelSpec, PageSpec, get_format, model_from_dict
from kvbench.hf.pages import PlacedPages

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
        ``[B, H, seq_len, D]``, dequantized from the pages (not the inputs), or, under
        kvbench's attention, the new tokens marked with ``kvbench_pages``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = int(key_states.shape[-2])
        if n:
            self.cache._write(self.layer_idx, key_states, value_states, self.length)
            self.length += n
        if self.cache.paged_attention:
            key_states.kvbench_pages = (self.cache, self.layer_idx, self.length)
            return key_states, value_states
        self.cache.attention_paths["copy"] += 1
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
    tier: where the pages live: a registered tier (``hbm``, ``dram``, ``nvme``;
        ``nvme_dir``: the folder for the pool's file).
    hot_tier, hot_window: a placement of two tiers: the ``hot_window`` most recent tokens
        of every layer on ``hot_tier`` (a memory tier), the older ones on ``tier``
        (``kvbench.hf.pages``). ``hot_tier=None``: every page on ``tier``.
    placement: the general form, instead of the three above: (tier, window tokens)
        pairs, hottest first, the last window 0 (unbounded), e.g.
        ``[("hbm", 256), ("dram", 4096), ("nvme", 0)]``.
    tokens_per_page: tokens per page (layout ``layer``).
    max_cache_len: tokens per sequence the pools are sized for, when ``num_pages`` is not
        given (the pools are made on the first update, when the batch size is known).
    side: the out-of-page scales of fp8_e4m3 / fp8_e4m3_head / nvfp4: "prefill" (each
        layer's scales computed from its first update, the prompt; later tokens beyond
        its range saturate), "unit" (all 1.0), or an fp32 tensor
        ``[num_layers, kv_factor, S]``. Ignored by formats without them.

    Attention: when the model's attention implementation is kvbench's
    (``kvbench.hf.attention``, ``attn_implementation="kvbench_paged"``), ``update``
    returns only the new tokens, marked, and the attention reads this layer's pages
    itself (fused paged decode on CUDA); with any other implementation ``update``
    returns the layer's whole K/V dequantized from the pages, and the model's own
    attention runs over that copy. ``attention_paths`` counts which path ran.
    Call ``close()`` (or use ``with``) to release the pools and the tiers' files.
    """

    def __init__(self, model_config: Any, fmt: str = "fp16", tier: str = "dram",
                 tokens_per_page: int = 16, *, max_cache_len: int = 4096,
                 num_pages: int | None = None, nvme_dir: str | Path | None = None,
                 side: str | torch.Tensor = "prefill", hot_tier: str | None = None,
                 hot_window: int = 0, placement: list[tuple[str, int]] | None = None) -> None:
        self.model = model_spec_from_config(model_config)
        self.config = model_config
        self.spec = PageSpec(self.model, get_format(fmt), tokens_per_page, "layer")
        self.nvme_dir = nvme_dir
        if placement is None and hot_tier is not None and (hot_window <= 0 or hot_tier == tier):
            raise KvbenchError(f"a hot window needs a positive hot_window (got {hot_window}) and a hot "
                               f"tier other than {tier!r}")
        if placement is None:
            placement = [(hot_tier, int(hot_window)), (tier, 0)] if hot_tier else [(tier, 0)]
        self.placement = [(str(t), int(w)) for t, w in placement]
        self.tier_name = "+".join(t for t, _ in self.placement)
        # private names: transformers' Cache has had max_cache_len / max_batch_size properties
        self._max_tokens, self._num_pages = max_cache_len, num_pages
        if isinstance(side, str) and side not in SIDE_MODES:
            raise KvbenchError(f"side {side!r}: one of {', '.join(SIDE_MODES)} or a tensor")
        self.side_mode = side if isinstance(side, str) else "given"
        self.side = None if isinstance(side, str) else side.to(torch.float32)
        if self.side is None:
            self.side = unit_side(self.model, self.spec.fmt)
        self._calibrated: set[int] = set()
        self.pages: PlacedPages | None = None
        self.batch: int | None = None
        self.attention_paths: Counter[str] = Counter()
        super().__init__(layers=[PagedLayer(self, i) for i in range(self.model.num_layers)])

    @property
    def pool(self) -> Any:
        """The hot (or only) page pool, None before the first update or after close."""
        return self.pages.main if self.pages is not None else None

    @property
    def paged_attention(self) -> bool:
        """Whether the model's attention reads the pages itself (kvbench's attention)."""
        from kvbench.hf.attention import ATTENTION_NAME

        cfg = self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else self.config
        return getattr(cfg, "_attn_implementation", None) == ATTENTION_NAME

    # ---------------------------------------------------------------- pages
    def _ensure(self, key_states: torch.Tensor) -> None:
        """Make the pools on the first update."""
        b, h, _, d = key_states.shape
        if (h, d) != (self.model.kv_heads, self.model.head_dim):
            raise KvbenchError(f"key states have {h} heads of {d}; the config says "
                               f"{self.model.kv_heads} of {self.model.head_dim}")
        if self.pages is not None:
            if b != self.batch:
                raise KvbenchError(f"PagedCache holds a batch of {self.batch}, got {b} rows")
            return
        self.pages = PlacedPages(self.spec, int(b), self.model.num_layers, self._max_tokens, self.placement,
                                 self.nvme_dir, num_pages=self._num_pages)
        self.batch = int(b)

    def _write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Quantize ``[B, H, n, D]`` tokens at positions ``start..start+n`` of ``layer``."""
        if self.side_mode == "prefill" and layer not in self._calibrated and self.side is not None:
            self.side[layer] = side_scales(k.transpose(1, 2), v.transpose(1, 2), self.spec.fmt).to(self.side)
        self._calibrated.add(layer)
        self.pages.write(layer, k, v, self.side, start)

    def _read(self, layer: int, length: int, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` tokens of ``layer``, ``[B, H, length, D]`` in ``dtype``."""
        rows, table = self.pages.view(layer, length)
        side = None if self.side is None else self.side.to(rows.device)
        k, v = dequantize_pages(rows, table, self.spec, side, layer=layer, dtype=dtype)
        return tuple(x[:, :length].transpose(1, 2).to(device) for x in (k, v))

    # ---------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Free every sequence's pages (the pool stays) and empty the layers."""
        if self.pages is not None:
            self.pages.clear()
        self._calibrated.clear()
        for layer in self.layers:
            layer.reset()

    def close(self) -> None:
        """Release the pools and what the tiers hold (an nvme tier's folder)."""
        if self.pages is not None:
            self.pages.close()
        self.pages = None

    def __enter__(self) -> "PagedCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, for a result record."""
        placed = self.pages.describe() if self.pages is not None else {"tier": self.tier_name}
        return {**self.spec.describe(), **placed, "side": self.side_mode,
                "attention_paths": dict(self.attention_paths)}
