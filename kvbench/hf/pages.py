"""Where a ``PagedCache``'s pages live: one tier, or a chain of tiers by age.

``PlacedPages`` owns the page pools of one cache and the block table of every (layer,
batch row). A page holds ``tokens_per_page`` tokens of one layer (layout ``layer``).

A placement is a list of (tier, window tokens), hottest first, the last window
unbounded: ``[("dram", 0)]`` puts every page on dram; ``[("hbm", 256), ("dram", 0)]``
keeps the newest 256 tokens of every layer in HBM and the rest in DRAM;
``[("hbm", 256), ("dram", 4096), ("nvme", 0)]`` adds NVMe below DRAM. New tokens are
written to pages on the first tier. A page moves down as it ages: once its last token
is ``w_0 + ... + w_i`` or more tokens behind the newest it belongs below tier ``i``, and
it is moved straight to the tier it belongs on (its old page freed). Reading a layer
copies its pages below the first tier into staging pages of the first pool, so
attention runs over one pool: the older KV is read from its tier on every step, as an
offloaded cache must. Staging pages are taken from the first pool's free pages and
returned at the next page operation.

Block tables: ``tables[layer][row]`` lists page references in token order; a reference
is ``level * LEVEL + page id`` (level 0: the first tier's pool).
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


#: a page reference's level stride: ``level * LEVEL + page id``
LEVEL = 1 << 40


class PlacedPages:
    """The pages of one cache (see the module docstring). ``max_tokens`` sizes the pools
    unless ``num_pages`` (pages of the first pool) is given."""

    def __init__(self, spec: PageSpec, batch: int, layers: int, max_tokens: int,
                 placement: list[tuple[str, int]], nvme_dir: str | Path | None = None, *,
                 num_pages: int | None = None) -> None:
        if not placement or any(w <= 0 for _, w in placement[:-1]):
            raise KvbenchError(f"a placement needs a positive window on every tier but the last, "
                               f"got {placement}")
        names = [t for t, _ in placement]
        if len(set(names)) != len(names):
            raise KvbenchError(f"a placement names each tier once, got {names}")
        self.spec, self.batch, self.layers = spec, batch, layers
        self.windows = [int(w) for _, w in placement[:-1]]
        t = spec.tokens
        per_seq = _ceil(max_tokens, t)
        self.tables: list[list[list[int]]] = [[[] for _ in range(batch)] for _ in range(layers)]
        self.tiers: list[Tier] = []
        self.pools: list[PagePool] = []
        self.staging: list[int] = []
        try:
            for level, (name, window) in enumerate(placement):
                self.pools.append(self._pool(name, nvme_dir, self._pages(level, window, per_seq, num_pages)))
            if len(self.pools) > 1 and self.pools[0].tensor is None:
                raise KvbenchError(f"the first tier of a placement ({names[0]}) must be local memory, "
                                   "not file-backed or remote")
        except BaseException:
            self.close()
            raise

    @property
    def main(self) -> PagePool | None:
        """The first pool: where tokens are written and attention reads from."""
        return self.pools[0] if self.pools else None

    def _pages(self, level: int, window: int, per_seq: int, num_pages: int | None) -> int:
        """Pages of the pool at ``level``: the last holds whole sequences; the others their
        window plus a partly filled page per (layer, row); the first also one layer's worth
        of every row's pages (a write's pages before they move, or a read's staging)."""
        b, lay, t = self.batch, self.layers, self.spec.tokens
        if level == len(self.windows):
            return (num_pages if level == 0 and num_pages else b * lay * per_seq)
        if level == 0:
            return num_pages or b * lay * (_ceil(window, t) + 1) + b * per_seq
        return b * lay * (_ceil(window, t) + 2)

    def _pool(self, name: str, nvme_dir: str | Path | None, pages: int) -> PagePool:
        tier = _open_tier(name, nvme_dir)
        self.tiers.append(tier)
        return PagePool(tier, self.spec, pages)

    # ---------------------------------------------------------------- writing
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, side: Any, start: int) -> None:
        """Quantize ``[B, H, n, D]`` tokens at positions ``start..start+n`` of ``layer``
        into their pages on the first tier, then move pages that aged out of its window."""
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
        if max(pids) >= LEVEL:
            raise KvbenchError("a token was written into a page that already left the first tier")
        slots = torch.tensor([p % t for p in pos] * b, dtype=torch.long)
        kk = k.transpose(1, 2).reshape(b * n, h, d)
        vv = v.transpose(1, 2).reshape(b * n, h, d)
        if self.main.tensor is not None:  # local memory
            dev = self.main.payload().device
            quantize_to_pages(kk.to(dev), vv.to(dev), self.main.payload(), torch.tensor(pids, device=dev),
                              slots.to(dev), self.spec, None if side is None else side.to(dev), layer=layer)
        else:  # a file or remote pool: read the pages touched, fill them, write them back
            ids = sorted(set(pids))
            local = {p: i for i, p in enumerate(ids)}
            touched = self.main.read_pages(ids)
            quantize_to_pages(kk.cpu(), vv.cpu(), touched, torch.tensor([local[p] for p in pids]), slots,
                              self.spec, side, layer=layer)
            self.main.write_pages(ids, touched)
        if self.windows:
            self._age(layer, start + n)

    def _age(self, layer: int, length: int) -> None:
        """Move every page of ``layer`` to the level its age puts it on: page p (tokens
        p*T .. p*T+T-1) belongs below level i once (p+1)*T <= length - (w_0 + ... + w_i)."""
        t = self.spec.tokens
        below = []  # pages that belong below level i, for each i
        edge = 0
        for w in self.windows:
            edge += w
            below.append(max(0, (length - edge) // t))
        moves: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (from, to) -> (row, page)
        for row in range(self.batch):
            table = self.tables[layer][row]
            for p in range(min(below[0], len(table))):
                want = sum(1 for n in below if p < n)
                have = table[p] // LEVEL
                if want > have:
                    moves.setdefault((have, want), []).append((row, p))
        for (src, dst), where in moves.items():
            old = [self.tables[layer][r][p] % LEVEL for r, p in where]
            new = self.pools[dst].alloc(len(where))
            move_pages(self.pools[src], old, self.pools[dst], new)
            self.pools[src].free(old)
            for (r, p), i in zip(where, new):
                self.tables[layer][r][p] = dst * LEVEL + i

    # ---------------------------------------------------------------- reading
    def view(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool rows ``[N, page_bytes]`` uint8, block table ``[B, P]`` int64 into them)
        holding the first ``length`` tokens of ``layer``; the rows live on the first
        pool's device (host memory for a file or remote pool, read through it)."""
        p = _ceil(length, self.spec.tokens)
        tables = [self.tables[layer][row][:p] for row in range(self.batch)]
        if self.main.tensor is None:  # a file or remote pool: read through it
            rows = self.main.read_pages([i for tb in tables for i in tb])
            return rows, torch.arange(self.batch * p, dtype=torch.long).view(self.batch, p)
        rows = self.main.payload()
        self._unstage()
        lower = [r for tb in tables for r in tb if r >= LEVEL]
        if lower:
            staged: dict[int, int] = {}
            for level in sorted({r // LEVEL for r in lower}):
                refs = [r for r in lower if r // LEVEL == level]
                dst = self.main.alloc(len(refs))
                self.staging += dst
                self.main.write_pages(dst, self.pools[level].read_pages([r % LEVEL for r in refs]))
                staged.update(zip(refs, dst))
            tables = [[staged.get(r, r) for r in tb] for tb in tables]
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
                for level, pool in enumerate(self.pools):
                    ids = [r % LEVEL for r in table if r // LEVEL == level]
                    if ids:
                        pool.free(ids)
                table.clear()

    def close(self) -> None:
        """Release the pools and what their tiers hold (an nvme tier's folder)."""
        for pool in self.pools:
            pool.close()
        for tier in self.tiers:
            tier.close()
        self.tiers, self.pools = [], []

    def describe(self) -> dict[str, Any]:
        levels = [{"tier": pool.tier.label, "window_tokens": w, "pages": pool.num_pages,
                   "pages_used": pool.num_used}
                  for pool, w in zip(self.pools, [*self.windows, None])]
        d: dict[str, Any] = {"tier": levels[-1]["tier"], "pages": self.main.num_pages, "placement": levels}
        if self.windows:
            d.update({"hot_tier": levels[0]["tier"], "hot_window_tokens": self.windows[0],
                      "cold_pages_used": sum(lv["pages_used"] for lv in levels[1:])})
        return d
