"""Page geometry: tokens per page and a layout over a model's KV shape (pure arithmetic).

Re-exported by ``kvbench.spec`` (import ``PageSpec`` and ``LAYOUTS`` from there). Only
``model.num_layers`` and ``model.kv_bytes_per_token_per_layer(fmt)`` are read (and, for a
page of a named component, ``model.components`` and ``model.codec``), so this module
needs nothing from the model or format code.
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
    (``model.components[0]``: K and V, MLA's latent, DeepSeek-V4's K=V entries) unless
    ``component`` names another (kvbench.kvcomponents: ``indexer_keys``, ``csa_entries``,
    ``hca_entries``, ...): then it holds ``tokens`` *entries* of that component (one entry
    covers its ``tokens_per_entry`` tokens: a CSA page of 16 entries spans 16 x m tokens),
    of one layer that keeps it ("layer") or of every such layer ("block"), each entry its
    codec's bytes in the page's format. Such pages are bytes to place and move (the store,
    round trips, transfers); no decode kernel reads them yet.
    """

    model: Any  # kvbench.spec.ModelSpec
    fmt: Any  # kvbench.spec.KVFormat
    tokens: int
    layout: str = "layer"
    #: a component of the model other than its primary one ("": the primary)
    component: str = ""

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise KvbenchError(f"tokens per page must be positive, got {self.tokens}")
        if self.layout not in LAYOUTS:
            raise KvbenchError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")

        if self.component:
            self.part()  # an unknown component fails here, in one line

    def part(self) -> Any:
        """The named component (kvbench.kvcomponents.KVComponent), or None for the primary."""
        if not self.component:
            return None
        for c in self.model.components:
            if c.name == self.component:
                return c
        raise KvbenchError(f"model {self.model.name} has no KV component {self.component!r}; known: "
                           f"{', '.join(c.name for c in self.model.components)}")

    @property
    def layers_per_page(self) -> int:
        if self.layout != "block":
            return 1
        part = self.part()
        return len(part.layers) if part else self.model.num_layers

    @property
    def page_bytes(self) -> int:
        """Payload bytes of one page (values and in-page scales)."""
        part = self.part()
        if part is None:
            return self.tokens * self.layers_per_page * self.model.kv_bytes_per_token_per_layer(self.fmt)
        return self.tokens * self.layers_per_page * part.entry_bytes(self.model.codec(part, self.fmt))

    def pages_for_tokens(self, tokens: int) -> int:
        """Pages one sequence of ``tokens`` tokens needs (all layers, every layer paged;
        a component: its entries for that many tokens, on the layers that keep it)."""
        part = self.part()
        if part is None:
            return -(-tokens // self.tokens) * (self.model.num_layers // self.layers_per_page)
        return -(-part.entries(tokens) // self.tokens) * (len(part.layers) // self.layers_per_page)

    def describe(self) -> dict[str, Any]:
        out = {
            "model": self.model.name,
            "format": self.fmt.name,
            "tokens_per_page": self.tokens,
            "layout": self.layout,
            "page_bytes": self.page_bytes,
        }
        part = self.part()
        if part is not None:  # tokens_per_page counts entries of this component
            out.update(component=part.name, tokens_per_entry=part.tokens_per_entry,
                       entries_per_page=self.tokens, tokens_per_page=self.tokens * part.tokens_per_entry)
        return out
