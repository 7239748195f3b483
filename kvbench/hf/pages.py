"""Where a ``PagedCache``'s pages live: one tier, or a hot window on one tier and the
rest on another.

``PlacedPages`` owns the page pools of one cache and the block table of every (layer,
batch row). A page holds ``tokens_per_page`` tokens of one layer (layout ``layer``).

* One tier (``hot_tier=None``): every page on ``tier``.
* Hot window (``hot_tier`` given, ``hot_window`` tokens): new tokens are written to pages
  on ``hot_tier``; once a page holds only tokens older than the window (its last token
  is at least ``hot_window`` tokens behind the newest), it moves to ``tier`` (the cold
  tier) and its hot page is freed. Reading a layer copies its cold pages into staging
  pages of the hot pool (one layer's worth, reused by every layer), so attention runs
  over one pool: the cold KV is read from its tier on every step, as an offloaded cache
  must. Staging pages are taken from the hot pool's free pages and returned at the
  next page operation.

Block tables: ``tables[layer][row]`` lists page ids in token order; a non-negative id is
a page of the hot (or only) pool, ``-1 - id`` a page of the cold pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kvbench.errors import KvbenchError
from kvbench.formats.paged import quantize_to_pages
from kvbench.spec import PageSpec
from kvbench.store import PagePool, move_pages
from kvbench.tiers import Tier, make_tier


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _open_tier(name: str, nvme_dir: str | Path | None) -> Tier:
    tier = make_tier(name, nvme_dir)
    ok, why = tier.available()
    if not ok:
        raise KvbenchError(f"tier {name} is unavailable: {why}")
    return tier


class PlacedPages:
    """The pages of one cache (see the module docstring). ``max_tokens`` sizes the pools
    unless ``num_pages`` (pages of the only or the hot pool) is given."""

    def __init__(self, spec: PageSpec, batch: int, layers: int, max_tokens: int, tier: str,
                 nvme_dir: str | Path | None = None, *, hot_tier: str | None = None,
                 hot_window: int = 0, num_pages: int | None = None) -> None:
        self.spec, self.batch, self.layers = spec, batch, layers
        self.window = hot_window if hot_tier else 0
        t = spec.tokens
        per_seq = _ceil(max_tokens, t)
        self.tables: list[list[list[int]]] = [[[] for _ in range(batch)] for _ in range(layers)]
        self.tiers: list[Tier] = []
        self.cold: PagePool | None = None
        self.staging: list[int] = []
        try:
            if hot_tier is None:
                self.main = self._pool(tier, nvme_dir, num_pages or batch * layers * per_seq)
                return
            # the window's pages of every layer, plus one layer's worth of every row's
            # pages: a write's pages before they move, or a read's staged cold pages
            hot_pages = batch * layers * (_ceil(self.window, t) + 1) + batch * per_seq
            self.main = self._pool(hot_tier, nvme_dir, num_pages or hot_pages)
            if self.main.is_file:
                raise KvbenchError(f"the hot window's tier {hot_tier} must be memory, not file-backed")
            self.cold = self._pool(tier, nvme_dir, batch * layers * per_seq)
        except BaseException:
            self.close()
            raise

    def _pool(self, name: str, nvme_dir: str | Path | None, pages: int) -> PagePool:
        tier = _open_tier(name, nvme_dir)
        self.tiers.append(tier)
        return PagePool(tier, self.spec, pages)

    # ---------------------------------------------------------------- writing
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, side: Any, start: int) -> None:
        """Quantize ``[B, H, n, D]`` tokens at positions ``start..start+n`` of ``layer``
        into their (hot or only) pages, then move pages that left the hot window."""
        self._unstage()
        b, h, n, d = k.shape
        t = self.spec.tokens
        pos = range(start, start + n)
        pids: list[int] = []
        for row in range(b):
            table = self.tables[layer][row]
            grow = _ceil(start + n, t) - len(table)
            if grow > 0:
                table += self.main.alloc(grow)
            pids += [table[p // t] for p in pos]
        if min(pids) < 0:
            raise KvbenchError("a token was written into a page that already left the hot window")
        slots = torch.tensor([p % t for p in pos] * b, dtype=torch.long)
        kk = k.transpose(1, 2).reshape(b * n, h, d)
        vv = v.transpose(1, 2).reshape(b * n, h, d)
        if not self.main.is_file:
            dev = self.main.payload().device
            quantize_to_pages(kk.to(dev), vv.to(dev), self.main.payload(), torch.tensor(pids, device=dev),
                              slots.to(dev), self.spec, None if side is None else side.to(dev), layer=layer)
        else:  # a file pool: read the pages touched, fill them, write them back
            ids = sorted(set(pids))
            local = {p: i for i, p in enumerate(ids)}
            touched = self.main.read_pages(ids)
            quantize_to_pages(kk.cpu(), vv.cpu(), touched, torch.tensor([local[p] for p in pids]), slots,
                              self.spec, side, layer=layer)
            self.main.write_pages(ids, touched)
        if self.cold is not None:
            self._evict(layer, start + n)

    def _evict(self, layer: int, length: int) -> None:
        """Move every hot page of ``layer`` whose last token is ``window`` or more
        tokens behind ``length`` to the cold pool."""
        cold_pages = max(0, (length - self.window) // self.spec.tokens)
        moves: list[tuple[int, int]] = []  # (row, page index)
        for row in range(self.batch):
            table = self.tables[layer][row]
            moves += [(row, p) for p in range(min(cold_pages, len(table))) if table[p] >= 0]
        if not moves:
            return
        hot_ids = [self.tables[layer][r][p] for r, p in moves]
        cold_ids = self.cold.alloc(len(moves))
        move_pages(self.main, hot_ids, self.cold, cold_ids)
        self.main.free(hot_ids)
        for (r, p), c in zip(moves, cold_ids):
            self.tables[layer][r][p] = -1 - c

    # ---------------------------------------------------------------- reading
    def view(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool rows ``[N, page_bytes]`` uint8, block table ``[B, P]`` int64 into them)
        holding the first ``length`` tokens of ``layer``; the rows live on the hot (or
        only) pool's device (host memory for a file pool, read from its file)."""
        p = _ceil(length, self.spec.tokens)
        tables = [self.tables[layer][row][:p] for row in range(self.batch)]
        if self.main.is_file:
            rows = self.main.read_pages([i for tb in tables for i in tb])
            return rows, torch.arange(self.batch * p, dtype=torch.long).view(self.batch, p)
        rows = self.main.payload()
        cold = [-1 - i for tb in tables for i in tb if i < 0]
        self._unstage()
        if cold:
            dst = self.staging = self.main.alloc(len(cold))
            self.main.write_pages(dst, self.cold.read_pages(cold))
            it = iter(dst)
            tables = [[i if i >= 0 else next(it) for i in tb] for tb in tables]
        return rows, torch.tensor(tables, dtype=torch.long, device=rows.device)

    def _unstage(self) -> None:
        """Free the previous read's staging pages (they live until the next page
        operation, so the attention that read them has run or is queued before them)."""
        if self.staging:
            self.main.free(self.staging)
            self.staging = []

    # ---------------------------------------------------------------- lifecycle
    def clear(self) -> None:
        """Free every page of every row (the pools stay)."""
        self._unstage()
        for layer_tables in self.tables:
            for table in layer_tables:
                hot = [i for i in table if i >= 0]
                if hot:
                    self.main.free(hot)
                if self.cold is not None and len(hot) < len(table):
                    self.cold.free([-1 - i for i in table if i < 0])
                table.clear()

    def close(self) -> None:
        """Release the pools and what their tiers hold (an nvme tier's folder)."""
        for pool in (getattr(self, "main", None), self.cold):
            if pool is not None:
                pool.close()
        for tier in self.tiers:
            tier.close()
        self.tiers, self.cold, self.main = [], None, None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tier": self.main.tier.label if self.cold is None else self.cold.tier.label,
                             "pages": self.main.num_pages}
        if self.cold is not None:
            d.update({"hot_tier": self.main.tier.label, "hot_window_tokens": self.window,
                      "hot_pages": self.main.num_pages, "cold_pages": self.cold.num_pages,
                      "cold_pages_used": self.cold.num_used})
        return d
