"""The one staged reader pipeline: a file read in chunks into two (or more) staging
buffers, pinned with CUDA, each chunk handed on (an H2D copy and a scatter into its
destination pages, an attention step) while the next chunk's reads fill the other
buffer. Reads run at any queue depth (the movers' thread pool). Used by transfer
(nvme->hbm), prefix (a prefix's pages from NVMe) and decode (KV layers from NVMe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kvbench import movers


@dataclass
class Chunk:
    """Chunk ``index`` covers destination rows ``start``..``start + rows`` and is read
    into staging slot ``slot`` by ``read``."""
    index: int
    slot: int
    start: int
    rows: int
    read: Callable[[], None]


class StagedReader:
    """Run ``chunks`` through ``slots`` staging buffers: before chunk i refills its
    slot, whatever ``hand_on`` enqueued for the slot's previous chunk has finished
    (the event it returned, or nothing: it was synchronous). ``hand_on(chunk)`` moves
    a chunk out of its slot and returns an event-like object (``synchronize()``) or
    None. Calling the reader runs one whole pass and waits for its last hand-on."""

    def __init__(self, chunks: Sequence[Chunk], slots: int,
                 hand_on: Callable[[Chunk], Any]):
        if slots < 1:
            raise ValueError("a staged reader needs at least one staging slot")
        self.chunks, self.slots, self.hand_on = list(chunks), slots, hand_on

    def __call__(self) -> None:
        pending: list[Any] = [None] * self.slots
        try:
            for c in self.chunks:
                if pending[c.slot] is not None:
                    pending[c.slot].synchronize()   # the slot's last chunk has left it
                    pending[c.slot] = None
                c.read()
                pending[c.slot] = self.hand_on(c)
        finally:  # also when a read fails: nothing may still copy out of a staging buffer
            for ev in pending:
                if ev is not None:
                    ev.synchronize()


def page_chunks(f: Any, stride: int, page_ids: Sequence[int], staging: Sequence[Any],
                method: str, pool: Any, page_bytes: int, chunk_rows: int) -> list[Chunk]:
    """Chunks of ``chunk_rows`` pages of a file pool, read page by page (``method``)
    into rows of the staging buffers in turn."""
    out = []
    for i, start in enumerate(range(0, len(page_ids), chunk_rows)):
        ids = list(page_ids[start: start + chunk_rows])
        slot = i % len(staging)
        out.append(Chunk(i, slot, start, len(ids), movers.file_reader(
            f, stride, ids, staging[slot], method, pool, page_bytes)))
    return out


def region_chunks(f: Any, region_bytes: int, offsets: Sequence[int], staging: Sequence[Any],
                  method: str, pool: Any, request_bytes: int) -> list[Chunk]:
    """One chunk per contiguous file region (e.g. a layer's pages, layer-contiguous),
    read sequentially in ``request_bytes`` requests into the staging buffers in turn."""
    return [Chunk(i, i % len(staging), i, 1, movers.sequential_reader(
        f, region_bytes, staging[i % len(staging)], request_bytes, method, pool, offset=off))
        for i, off in enumerate(offsets)]
