"""The remote benchmark's GPU end: pages between a peer rank's host memory and this
rank's HBM. The remote tier moves host tensors (gloo), so the pages cross through this
rank's pinned host memory: a fetch lands in pinned rows, then one host->device copy and
a scatter into the HBM pool's pages; a put gathers the HBM pages, copies them to pinned
rows, then sends them. Both steps are inside every timed sample, one after the other
(no overlap), and the ceiling does the same with the bytes contiguous: the same
contiguous transfer plus one contiguous copy to or from HBM."""

from __future__ import annotations

import random
from typing import Any, Callable

from kvbench.bench import RunContext, tier_or_skip
from kvbench.spec import PageSpec

#: what ran, for the case's config and notes
PATH = "gloo to pinned host memory, then one copy to HBM (a put: the reverse)"


class HbmEnd:
    """This rank's end of a remote->hbm or hbm->remote case: an HBM pool of 2n pages,
    the n pages the case moves (random ids), and the steps that join them to the pinned
    rows the remote tier fills or sends. ``data``: the n pages' bytes (a put: they are
    written to the HBM pages first)."""

    def __init__(self, ctx: RunContext, spec: PageSpec, n: int, fetch: bool, data: Any, key: str) -> None:
        import torch

        from kvbench.store import PagePool

        self.fetch, self.width = fetch, spec.page_bytes
        self.pool = PagePool(tier_or_skip("hbm", ctx), spec, 2 * n)
        try:
            self.ids = random.Random(f"{ctx.seed}/{key}/hbm").sample(range(2 * n), n)
            where = self.pool.tensor.device  # CUDA (tests stand a host tier in for it)
            self.sync = torch.cuda.synchronize if where.type == "cuda" else (lambda: None)
            self.idx = torch.tensor(self.ids, dtype=torch.long, device=where)
            self.dev = torch.empty((n, spec.page_bytes), dtype=torch.uint8, device=where)
            if not fetch:
                self.pool.write_pages(self.ids, data)
            self.sync()
        except BaseException:
            self.pool.close()
            raise

    def paged(self, rows: Any) -> Callable[[], None]:
        """The HBM step of a paged sample, given the pinned rows ``[n, width]``: after a
        fetch, rows -> HBM -> the pool's pages; before a put, the pool's pages -> rows."""
        import torch

        pages = self.pool.tensor[:, : self.width]

        def scatter() -> None:
            self.dev.copy_(rows, non_blocking=True)
            pages.index_copy_(0, self.idx, self.dev)
            self.sync()

        def gather() -> None:
            torch.index_select(pages, 0, self.idx, out=self.dev)
            rows.copy_(self.dev, non_blocking=True)
            self.sync()
        return scatter if self.fetch else gather

    def contiguous(self, flat: Any) -> Callable[[], None]:
        """The HBM step of a ceiling sample: one contiguous copy of the same bytes."""
        dev = self.dev.view(-1)

        def up() -> None:
            dev.copy_(flat, non_blocking=True)
            self.sync()

        def down() -> None:
            flat.copy_(dev, non_blocking=True)
            self.sync()
        return up if self.fetch else down

    def pages(self) -> Any:
        """The n pages as the HBM pool holds them now (on the host)."""
        return self.pool.read_pages(self.ids).cpu()

    def close(self) -> None:
        self.pool.close()


def joined(move: Callable[[], None], step: Callable[[], None] | None, fetch: bool) -> Callable[[], None]:
    """``move`` then ``step`` (a fetch) or ``step`` then ``move`` (a put); ``move`` alone
    without a step (the dram end)."""
    if step is None:
        return move
    if fetch:
        return lambda: (move(), step())
    return lambda: (step(), move())
