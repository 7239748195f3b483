"""Page geometry: tokens per page and a layout over a model's KV shape (pure arithmetic).

Re-exported by ``kvbench.spec`` (import ``PageSpec`` and ``LAYOUTS`` from there). Only
``model.num_layers`` and ``model.kv_bytes_per_token_per_layer(fmt)`` are read, so this
module needs nothing from the model or format code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvbench.errors import KvbenchError

# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------

LAYOUTS = ("layer", "block")


@dataclass(frozen=True)
class PageSpec:
    """Geometry of one page.

    layout "layer": a page holds ``tokens`` tokens of one layer (K and V, all KV heads),
        as vLLM's per-layer KV blocks do; a sequence needs num_layers pages per span.
    layout "block": a page holds ``tokens`` tokens of every layer, one contiguous block
        per token span (the layout that makes offload copies large).
    Inside a page, for each layer: the K values of all (token, head) vectors, then V
    values, then the in-page scales of K, then of V (see kvbench.formats for the exact
    byte map). A page holds vectors of the model's primary component
    (``model.components[0]``: K and V, MLA's latent, DeepSeek-V4's K=V entries); the
    others (indexer keys, compressed entries, state) are sized by ModelSpec, not paged.
    """

    model: Any  # kvbench.spec.ModelSpec
    fmt: Any  # kvbench.spec.KVFormat
    tokens: int
    layout: str = "layer"

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise KvbenchError(f"tokens per page must be positive, got {self.tokens}")
        if self.layout not in LAYOUTS:
            raise KvbenchError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")

    @property
    def layers_per_page(self) -> int:
        return self.model.num_layers if self.layout == "block" else 1

    @property
    def page_bytes(self) -> int:
        """Payload bytes of one page (values and in-page scales)."""
        return self.tokens * self.layers_per_page * self.model.kv_bytes_per_token_per_layer(self.fmt)

    def pages_for_tokens(self, tokens: int) -> int:
        """Pages one sequence of ``tokens`` tokens needs (all layers, every layer paged)."""
        spans = -(-tokens // self.tokens)
        return spans * (self.model.num_layers // self.layers_per_page)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "format": self.fmt.name,
            "tokens_per_page": self.tokens,
            "layout": self.layout,
            "page_bytes": self.page_bytes,
        }
