"""The paged KV store: a page pool on a tier, a free-list allocator, block tables.

A pool is ``num_pages`` pages of ``PageSpec.page_bytes`` payload each, at a fixed
``stride`` (payload rounded up to 4 KiB on a file-backed tier, so every page can be read
with O_DIRECT). On a memory tier (``hbm``, ``dram``) the pool is one uint8 tensor
``[num_pages, stride]``; on a file-backed tier (``nvme``) it is one file of
``num_pages * stride`` bytes; on a remote tier (``remote``) it is a buffer a peer rank
holds. File-backed and remote pools have no local tensor: their pages are read and
written through the buffer (positional file I/O; messages to the peer).

A ``PagedKVStore`` keeps one block table per sequence: for layout ``layer`` a list
of page ids per layer (``[num_layers][blocks]``), for layout ``block`` one list
(``[1][blocks]``) whose pages hold every layer of a token span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from kvbench.errors import KvbenchError
from kvbench.spec import PageSpec
from kvbench.tiers.base import Tier
from kvbench.tiers.nvme import DIRECT_ALIGN, FileBuffer
from kvbench.units import align_up, fmt_bytes


#: the most bytes one coalesced file read moves (well under Linux's ~2 GiB per call)
RUN_BYTES = 256 << 20


def _runs(ids: Sequence[int], stride: int) -> list[tuple[int, int, int]]:
    """(first row, first page id, pages) of each run of consecutive page ids in ``ids``,
    each at most RUN_BYTES long."""
    most = max(1, RUN_BYTES // stride)
    runs: list[tuple[int, int, int]] = []
    for row, i in enumerate(ids):
        if runs and runs[-1][1] + runs[-1][2] == i and runs[-1][2] < most:
            r, first, n = runs[-1]
            runs[-1] = (r, first, n + 1)
        else:
            runs.append((row, i, 1))
    return runs


class PagePool:
    """Fixed-size pages on one tier with a LIFO free list (recently freed pages are
    reused first, as serving engines' block managers do).

    ``stride``: bytes per page row, when not the default (at least ``page_bytes``, a
    multiple of 4 KiB on a file-backed tier): a memory pool whose rows match a file
    pool's can take a run of pages read from the file in one copy."""

    def __init__(self, tier: Tier, spec: PageSpec, num_pages: int, stride: int | None = None) -> None:
        if num_pages <= 0:
            raise KvbenchError(f"a page pool needs at least one page, got {num_pages}")
        self.tier = tier
        self.spec = spec
        self.num_pages = num_pages
        self.page_bytes = spec.page_bytes
        self.is_file = tier.file_backed
        self.stride = align_up(self.page_bytes, DIRECT_ALIGN) if self.is_file else self.page_bytes
        if stride is not None:
            if stride < self.page_bytes or (self.is_file and stride % DIRECT_ALIGN):
                raise KvbenchError(f"a page row of {stride} B cannot hold a {self.page_bytes} B page"
                                   + (f" at {DIRECT_ALIGN} B alignment" if self.is_file else ""))
            self.stride = stride
        total = self.stride * num_pages
        free = tier.free_bytes() if tier.available()[0] else 0
        if self.stride > free:
            raise KvbenchError(
                f"a {fmt_bytes(self.page_bytes)} page is larger than tier {tier.label} can hold "
                f"({fmt_bytes(free)} available)"
            )
        self.buffer = tier.allocate(total)
        #: pages reached through the buffer's own reads and writes, not a local tensor
        self.through_buffer = tier.file_backed or tier.remote
        self.tensor = None if self.through_buffer else self.buffer.tensor.view(num_pages, self.stride)
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._used: set[int] = set()

    # ---------------------------------------------------------------- allocator
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def alloc(self, n: int = 1) -> list[int]:
        if n > len(self._free):
            raise KvbenchError(
                f"page pool on {self.tier.label} is full: asked for {n} pages, {len(self._free)} free "
                f"of {self.num_pages}"
            )
        ids = [self._free.pop() for _ in range(n)]
        self._used.update(ids)
        return ids

    def free(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        for i in ids:
            if i not in self._used:
                raise KvbenchError(f"page {i} is not allocated (double free?)")
        for i in ids:
            self._used.remove(i)
            self._free.append(i)

    # ---------------------------------------------------------------- data
    @property
    def device(self) -> str:
        return self.tier.device

    def payload(self) -> Any:
        """The pool as ``[num_pages, page_bytes]`` (a view; torch-backed tiers only)."""
        if self.tensor is None:
            raise KvbenchError(f"a pool on tier {self.tier.name} has no tensor view; use read_pages")
        return self.tensor[:, : self.page_bytes]

    def file(self) -> FileBuffer:
        assert isinstance(self.buffer, FileBuffer)
        return self.buffer

    def read_pages(self, ids: Sequence[int], method: str = "buffered") -> Any:
        """Pages as a ``[len(ids), page_bytes]`` uint8 tensor on this tier's device
        (host memory for the file and remote tiers). ``method``: the file tier's read
        path, or the remote tier's batching (kvbench.tiers.remote.BATCHING)."""
        import torch

        if self.tensor is not None:
            idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.tensor.device)
            return self.tensor.index_select(0, idx)[:, : self.page_bytes]
        if self.tier.remote:
            return self.buffer.read_pages(ids, self.stride, self.page_bytes, method)
        from kvbench.tiers.dram import aligned_host_empty

        out = aligned_host_empty(len(ids) * self.stride, pin=False).view(len(ids), self.stride)
        f = self.file()
        for row, first, n in _runs(ids, self.stride):  # one read per run of consecutive pages
            f.read_into(first * self.stride, out[row:row + n].view(-1), method)
        return out[:, : self.page_bytes]

    def write_pages(self, ids: Sequence[int], data: Any, method: str = "buffered") -> None:
        """Write ``data`` (``[len(ids), page_bytes]`` uint8, any device) to pages ``ids``."""
        import torch

        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != self.page_bytes:
            raise KvbenchError(
                f"page data must be uint8 [n, {self.page_bytes}], got {data.dtype} {tuple(data.shape)}"
            )
        if data.shape[0] != len(ids):
            raise KvbenchError(f"{len(ids)} page ids for {data.shape[0]} pages of data")
        if self.tensor is not None:
            idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.tensor.device)
            self.tensor[:, : self.page_bytes].index_copy_(0, idx, data.to(self.tensor.device))
            return
        if self.tier.remote:
            self.buffer.write_pages(ids, self.stride, data, method)
            return
        from kvbench.tiers.dram import aligned_host_empty

        f = self.file()
        host = data.to("cpu")
        if method == "odirect":
            staging = aligned_host_empty(self.stride, pin=False)
            staging.zero_()
            for row, i in enumerate(ids):
                staging[: self.page_bytes].copy_(host[row])
                f.write_from(i * self.stride, staging, method)
        else:
            for row, i in enumerate(ids):
                f.write_from(i * self.stride, host[row].contiguous(), method)

    def close(self) -> None:
        self.tensor = None
        self.buffer.close()

    def __enter__(self) -> "PagePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def move_pages(src: PagePool, src_ids: Sequence[int], dst: PagePool, dst_ids: Sequence[int],
               method: str = "buffered") -> None:
    """Copy pages between any two pools (any tiers), payload bytes only. Not a
    benchmark path: the transfer benchmark times its own movers."""
    if src.page_bytes != dst.page_bytes:
        raise KvbenchError(f"page sizes differ: {src.page_bytes} vs {dst.page_bytes} B")
    if len(src_ids) != len(dst_ids):
        raise KvbenchError("move_pages needs as many destination pages as source pages")
    dst.write_pages(dst_ids, src.read_pages(src_ids, method=method), method=method)


@dataclass
class SequenceState:
    tokens: int = 0
    #: [groups][blocks] page ids; groups = num_layers (layer layout) or 1 (block)
    table: list[list[int]] = field(default_factory=list)


class PagedKVStore:
    """Block tables over one pool. Tokens are appended per sequence; pages are taken
    from the pool as spans fill, and returned when a sequence is freed.

    ``layers`` (layer layout only): keep tables for the first ``layers`` layers instead of
    every layer of the model, for a benchmark that keeps only some layers resident (or
    one layer at a time in a staging buffer). Several stores may share one pool."""

    def __init__(self, pool: PagePool, layers: int | None = None) -> None:
        self.pool = pool
        self.spec = pool.spec
        self.groups = self.spec.model.num_layers // self.spec.layers_per_page
        if layers is not None:
            if self.spec.layout != "layer" or not 0 < layers <= self.groups:
                raise KvbenchError(f"a {self.spec.layout}-layout store of {self.groups} groups cannot "
                                   f"hold {layers} layers")
            self.groups = layers
        self.seqs: dict[int, SequenceState] = {}

    def add_sequence(self, seq_id: int) -> None:
        if seq_id in self.seqs:
            raise KvbenchError(f"sequence {seq_id} already exists")
        self.seqs[seq_id] = SequenceState(table=[[] for _ in range(self.groups)])

    def append_tokens(self, seq_id: int, n: int) -> list[int]:
        """Grow a sequence by n tokens; return the page ids newly allocated."""
        if n < 0:
            raise KvbenchError("cannot append a negative number of tokens")
        st = self.seqs[seq_id]
        have = len(st.table[0])
        need = -(-(st.tokens + n) // self.spec.tokens)
        new_blocks = need - have
        new: list[int] = []
        if new_blocks > 0:
            new = self.pool.alloc(new_blocks * self.groups)
            for g in range(self.groups):
                st.table[g].extend(new[g * new_blocks: (g + 1) * new_blocks])
        st.tokens += n
        return new

    def append_tokens_layer_major(self, seq_ids: Sequence[int], n: int) -> list[int]:
        """Grow every sequence of ``seq_ids`` by n tokens with one allocation, handed out
        layer-major: the new pages of group 0 for every sequence (in ``seq_ids`` order,
        block by block), then group 1, and so on. From a pool whose free pages are
        consecutive (a fresh one) each group's new pages of the batch are then one run of
        consecutive ids (``group_pages``), so one layer of the batch moves in one copy.
        Returns the page ids newly allocated, in that order."""
        if n < 0:
            raise KvbenchError("cannot append a negative number of tokens")
        if len(set(seq_ids)) != len(seq_ids):
            raise KvbenchError("a sequence appears twice in one layer-major append")
        states = [self.seqs[s] for s in seq_ids]
        grow = [max(0, -(-(st.tokens + n) // self.spec.tokens) - len(st.table[0])) for st in states]
        new = self.pool.alloc(sum(grow) * self.groups)
        at = 0
        for g in range(self.groups):
            for st, k in zip(states, grow):
                st.table[g].extend(new[at: at + k])
                at += k
        for st in states:
            st.tokens += n
        return new

    def group_pages(self, seq_ids: Sequence[int], group: int) -> range:
        """The page ids of one group (a layer, for layout ``layer``) of ``seq_ids``, in
        order (sequence by sequence, block by block), when they are one run of
        consecutive ids; KvbenchError when they are not."""
        ids = [p for s in seq_ids for p in self.seqs[s].table[group]]
        run = range(ids[0], ids[0] + len(ids)) if ids else range(0)
        if ids != list(run):
            raise KvbenchError(f"the pages of group {group} of {len(seq_ids)} sequences are not "
                               "consecutive ids (allocate them with append_tokens_layer_major "
                               "from free pages that are)")
        return run

    def free_sequence(self, seq_id: int) -> None:
        st = self.seqs.pop(seq_id)
        self.pool.free([p for group in st.table for p in group])

    def block_table(self, seq_id: int) -> list[list[int]]:
        return [list(g) for g in self.seqs[seq_id].table]

    def locate(self, seq_id: int, token: int, layer: int) -> tuple[int, int, int]:
        """(page id, token slot within the page, layer index within the page)."""
        st = self.seqs[seq_id]
        if not 0 <= token < st.tokens:
            raise KvbenchError(f"token {token} outside sequence {seq_id} of {st.tokens} tokens")
        group, layer_in_page = (layer, 0) if self.spec.layout == "layer" else (0, layer)
        block, slot = divmod(token, self.spec.tokens)
        return st.table[group][block], slot, layer_in_page

    def block_tables_tensor(self, seq_ids: Sequence[int], device: str = "cpu") -> Any:
        """int32 ``[len(seq_ids), groups, max_blocks]``, padded with -1."""
        import torch

        width = max((len(self.seqs[s].table[0]) for s in seq_ids), default=0)
        out = torch.full((len(seq_ids), self.groups, width), -1, dtype=torch.int32)
        for i, s in enumerate(seq_ids):
            for g, row in enumerate(self.seqs[s].table):
                if row:
                    out[i, g, : len(row)] = torch.tensor(row, dtype=torch.int32)
        return out.to(device)

    def migrate(self, seq_id: int, dst: "PagedKVStore", method: str = "buffered") -> None:
        """Move a sequence's pages to another store (any tier), keeping its tokens."""
        if dst.spec.page_bytes != self.spec.page_bytes or dst.groups != self.groups:
            raise KvbenchError("stores have different page geometry")
        st = self.seqs[seq_id]
        src_ids = [p for g in st.table for p in g]
        dst_ids = dst.pool.alloc(len(src_ids))
        try:
            move_pages(self.pool, src_ids, dst.pool, dst_ids, method=method)
        except BaseException:
            dst.pool.free(dst_ids)
            raise
        per = len(st.table[0])
        dst.seqs[seq_id] = SequenceState(
            tokens=st.tokens, table=[dst_ids[g * per: (g + 1) * per] for g in range(self.groups)]
        )
        self.free_sequence(seq_id)
