"""kvbench's attention for transformers models: the model's attention reads a
``PagedCache``'s pages itself instead of a dequantized full copy.

``register()`` adds ``ATTENTION_NAME`` ("kvbench_paged") to transformers'
``AttentionInterface`` (and its mask interface, with sdpa's masks), so a model built or
switched with ``attn_implementation="kvbench_paged"`` calls ``paged_attention`` in every
attention layer. ``use_paged_attention(model)`` switches a loaded model for a block.

``paged_attention(module, query, key, value, attention_mask, ...)``: query
``[B, Hq, q, D]``; key/value as the cache's ``update`` returned them. When they carry
``kvbench_pages`` (a ``PagedCache`` in kvbench-attention mode: the layer's new tokens
only), the layer's K/V come from its pages:

* ``fused``: one decode token per row (q = 1), no padded positions, pages in the
  query's CUDA device memory, a shape the kernel reads (power-of-two page tokens and head
  dim >= 16), no softcap: kvbench's paged decode kernel (``kvbench.attention.decode_fused``) reads the
  pages and dequantizes inside its loads, with the module's softmax scale;
* ``reference``: anything else (a CPU, a prompt, left padding): the layer's pages are
  gathered and dequantized by the torch reference codecs and attended with torch's SDPA
  under the model's mask.

Without ``kvbench_pages`` (any other cache) it is transformers' own SDPA attention.
The cache's ``attention_paths`` counts the calls per path. Returns
``(out [B, q, Hq, D] in the query's dtype, None)``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

ATTENTION_NAME = "kvbench_paged"


def _sdpa() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def register() -> str:
    """Register kvbench's attention (and sdpa's mask builder under the same name) with
    transformers; idempotent. Returns the name to pass as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _configs(model: Any) -> list[Any]:
    cfg = model.config
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    return [cfg] if text is cfg else [cfg, text]


@contextlib.contextmanager
def use_paged_attention(model: Any) -> Iterator[Any]:
    """Within the block, ``model``'s attention layers call ``paged_attention`` (their
    config's ``_attn_implementation`` is switched, then restored)."""
    register()
    cfgs = _configs(model)
    before = [c._attn_implementation for c in cfgs]
    try:
        for c in cfgs:
            c._attn_implementation = ATTENTION_NAME
        yield model
    finally:
        for c, b in zip(cfgs, before):
            c._attn_implementation = b


def _no_padding(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    if mask.dtype == torch.bool:
        return bool(mask.all())
    return bool((mask == 0).all())


def _pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def _fused_ready(cache: Any, query: torch.Tensor, mask: torch.Tensor | None, kwargs: dict) -> bool:
    """Whether the fused kernel can take this call: one decode token per row, no padded
    positions, no softcap, the pages in the query's own CUDA device memory, and a shape
    the kernel reads (power-of-two tokens per page and head dim >= 16)."""
    pool = cache.pool
    if not (query.shape[2] == 1 and query.is_cuda and pool is not None and pool.tensor is not None):
        return False
    d = cache.model.head_dim
    return (pool.payload().device == query.device and _pow2(cache.spec.tokens) and _pow2(d) and d >= 16
            and kwargs.get("softcap") is None and _no_padding(mask))


def _decode_fused(cache: Any, layer: int, length: int, query: torch.Tensor,
                  scaling: float | None) -> torch.Tensor:
    from kvbench.attention import decode_fused, q_dtype

    rows, table = cache.pages.view(layer, length)
    b = query.shape[0]
    seq_lens = torch.full((b,), length, dtype=torch.int32, device=rows.device)
    side = None if cache.side is None else cache.side.to(rows.device)
    q = query[:, :, 0].to(q_dtype(cache.spec.fmt)).contiguous()  # the kernel reads packed rows
    out = decode_fused(q, rows, table.to(torch.int32), seq_lens, cache.spec, layer, side,
                       sm_scale=scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out.to(query.dtype).unsqueeze(1)  # [B, 1, Hq, D]


def paged_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0,
                    scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One attention layer over a ``PagedCache``'s pages (see the module docstring)."""
    ref = getattr(key, "kvbench_pages", None)
    if ref is None:
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    cache, layer, length = ref
    if _fused_ready(cache, query, attention_mask, kwargs):
        cache.attention_paths["fused"] += 1
        return _decode_fused(cache, layer, length, query, scaling), None
    cache.attention_paths["reference"] += 1
    k, v = cache._read(layer, length, query.dtype, query.device)
    return _sdpa()(module, query, k, v, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
