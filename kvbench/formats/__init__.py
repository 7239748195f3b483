"""KV formats: torch reference quantize / dequantize, the page byte map, and packing of
quantized K/V into pages. The ground layer: it imports only ``kvbench.spec`` and
``kvbench.errors``. The matching Triton kernels (``kernels/quant.py``) sit above it;
``kvbench.quantized_pages`` picks the reference or the kernels for a pool.

Modules:
    codecs  quantize / dequantize per format family (``CODECS`` / ``get_codec``, keyed
            by format name), element codecs (e4m3, e2m1, e8m0, nibble packing)
    layout  the page byte map (pure arithmetic, no torch)
    paged   pack_page / unpack_page; quantize_to_pages / dequantize_pages on a pool
    data    K/V/Q test data: synthetic with outlier channels, captured from transformers
    metrics attention and error metrics for the accuracy benchmark

Names are loaded on first use, so ``import kvbench.formats.layout`` needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "codecs": ("CODECS", "Codec", "Quantized", "get_codec", "quantize", "dequantize",
               "roundtrip", "side_scale", "e4m3_encode", "e4m3_decode", "e2m1_encode",
               "e2m1_decode", "e8m0_decode", "pack_nibbles", "unpack_nibbles"),
    "layout": ("PageMap", "Region", "page_map", "side_shape", "side_count",
               "region_for_layer"),
    "paged": ("pack_page", "unpack_page", "quantize_to_pages", "dequantize_pages",
              "side_scales", "unit_side"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'kvbench.formats' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kvbench.formats.{mod}"), name)
