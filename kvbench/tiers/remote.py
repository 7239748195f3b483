"""The remote tier: pages in a pool that a peer rank holds in its host memory, put and
fetched with torch.distributed point-to-point operations over gloo (kvbench.distributed).

Roles: the client (rank 0, which runs the benchmarks) builds ``RemoteTier(peer=1)`` and
allocates buffers on it; every other rank runs ``serve()``: it waits for a request,
acts on it, and loops until a shutdown request. A request is one int64 header
``[op, buffer, a, b, c, d]`` (HEADER_LEN fields); a page list follows as int64[n]; page data
follows it (put) or comes back (fetch) as uint8 messages; requests that change the
peer's memory end with an int64 acknowledgement, so a timed put includes the peer
having stored the pages.

Batching, how a list of pages crosses (``BATCHING``):
  ``per_page``   one message per page, straight from and into the pool's rows (no copy
                 on either side; n messages: the per-message cost shows);
  ``coalesced``  the peer gathers the pages into a contiguous staging buffer (fetch) or
                 scatters them from it (put), sent in messages of at most ``chunk_bytes``
                 (one message when the list fits; with several, the gather of one chunk
                 overlaps the send of the one before); a page as large as a chunk goes
                 straight from or into its row, as per_page (nothing to coalesce).
Contiguous ``read_into`` / ``write_from`` of a byte range (one message, or consecutive
messages of a size) are the same-run ceiling.
Every wait is bounded by the group's timeout; a failed wait marks the group failed."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers.base import Tier, TierBuffer
from kvbench.units import MiB

BATCHING = ("per_page", "coalesced")
#: the largest message of a coalesced transfer: 4 MiB, where gloo over loopback TCP is
#: already at its contiguous rate, small enough to overlap the gather with the send
CHUNK_BYTES = 4 * MiB
HEADER_LEN = 6
#: bytes of an error text sent back by the peer
MESSAGE_LEN = 240
OP_SHUTDOWN, OP_FREE_BYTES, OP_ALLOC, OP_FREE, OP_READ, OP_WRITE, OP_GATHER, OP_SCATTER = range(8)
OP_NAMES = ("shutdown", "free bytes", "allocate", "free", "contiguous fetch", "contiguous put",
            "page fetch", "page put")


class GroupFailure(KvbenchError):
    """A rank stopped answering (died, hung past the timeout, or refused): one line,
    exit 1 (the run failed; the input was fine)."""

    exit_code = 1


def _torch() -> tuple[Any, Any]:
    import torch
    import torch.distributed as dist

    return torch, dist


def wait_all(post: Callable[[], Sequence[Any]], peer: int, what: str) -> None:
    """Post operations (``post()`` returns their works) and wait for every one, each
    within the group's timeout; GroupFailure (and the group marked failed) when posting
    or waiting fails."""
    try:
        for w in post():
            w.wait(distributed.timeout())
    except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeErrors of many kinds
        why = (f"rank {distributed.rank()}: rank {peer} stopped answering during {what} "
               f"(timeout {distributed.timeout_s():g} s): {distributed.short_error(exc)}")
        distributed.mark_failed(why, peer)
        raise GroupFailure(why) from None


def _header(op: int, *fields: int) -> Any:
    torch, _ = _torch()
    h = torch.zeros(HEADER_LEN, dtype=torch.int64)
    h[0] = op
    h[1: 1 + len(fields)] = torch.tensor(fields, dtype=torch.int64)
    return h


def message_parts(flat: Any, message_bytes: int) -> list[Any]:
    """A 1-D tensor as consecutive slices of ``message_bytes`` (0: the whole tensor)."""
    step = message_bytes or max(1, flat.numel())
    return [flat[lo: lo + step] for lo in range(0, flat.numel(), step)]


def pages_per_message(batching: str, n: int, width: int, chunk_bytes: int) -> int:
    """Pages one data message carries: 1 per page; coalesced as many as fit in
    ``chunk_bytes`` (at least one, at most the whole list)."""
    if batching == "per_page":
        return 1
    return max(1, min(n, chunk_bytes // max(1, width)))


def messages(batching: str, n: int, width: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Data messages moving ``n`` pages of ``width`` bytes."""
    per = pages_per_message(batching, n, width, chunk_bytes)
    return -(-n // per)


class RemoteBuffer(TierBuffer):
    """``nbytes`` of a peer's host memory, known by the id the peer gave it."""

    def __init__(self, tier: "RemoteTier", nbytes: int, buffer_id: int) -> None:
        self.tier, self.nbytes, self.buffer_id = tier, nbytes, buffer_id
        self.peer = tier.peer
        self._open = True

    def _request(self, op: int, *fields: int) -> None:
        if not self._open:
            raise KvbenchError(f"remote buffer {self.buffer_id} on rank {self.peer} is closed")
        _, dist = _torch()
        if distributed.failure():
            raise GroupFailure(f"the process group failed earlier in this run: {distributed.failure()}")
        wait_all(lambda: [dist.isend(_header(op, self.buffer_id, *fields), self.peer)], self.peer, OP_NAMES[op])

    def _ack(self, what: str) -> None:
        torch, dist = _torch()
        wait_all(lambda: [dist.irecv(torch.zeros(1, dtype=torch.int64), self.peer)], self.peer, what)

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or offset + n > self.nbytes:
            raise KvbenchError(f"bytes {offset:,}..{offset + n:,} are outside a remote buffer of {self.nbytes:,} B")

    # -- contiguous: the ceiling
    def read_into(self, offset: int, dst: Any, message_bytes: int = 0) -> None:
        """Fetch ``dst.numel()`` bytes at ``offset`` into a contiguous CPU uint8 tensor,
        in one message, or in consecutive messages of ``message_bytes``."""
        _, dist = _torch()
        self._check_range(offset, dst.numel())
        self._request(OP_READ, offset, dst.numel(), message_bytes)
        wait_all(lambda: [dist.irecv(part, self.peer) for part in message_parts(dst, message_bytes)],
                 self.peer, OP_NAMES[OP_READ])

    def write_from(self, offset: int, src: Any, message_bytes: int = 0) -> None:
        """Put a contiguous CPU uint8 tensor at ``offset`` (in one message, or messages of
        ``message_bytes``); returns once the peer has it."""
        _, dist = _torch()
        self._check_range(offset, src.numel())
        self._request(OP_WRITE, offset, src.numel(), message_bytes)
        wait_all(lambda: [dist.isend(part, self.peer) for part in message_parts(src, message_bytes)],
                 self.peer, OP_NAMES[OP_WRITE])
        self._ack(OP_NAMES[OP_WRITE])

    # -- pages
    def _page_request(self, op: int, ids: Sequence[int], stride: int, width: int, batching: str,
                      chunk_bytes: int) -> int:
        torch, dist = _torch()
        if batching not in BATCHING:
            raise KvbenchError(f"unknown batching {batching!r}; known: {', '.join(BATCHING)}")
        rows = self.nbytes // stride
        bad = [i for i in ids if not 0 <= i < rows]
        if bad or width > stride:
            raise KvbenchError(f"page {bad[0] if bad else '?'} of {width} B is outside a remote pool of "
                               f"{rows} rows of {stride} B")
        per = pages_per_message(batching, len(ids), width, chunk_bytes)
        self._request(op, len(ids), stride, width, per if batching == "coalesced" else 0)
        wait_all(lambda: [dist.isend(torch.tensor(list(ids), dtype=torch.int64), self.peer)], self.peer, OP_NAMES[op])
        return per

    def fetch_rows(self, ids: Sequence[int], stride: int, width: int, out: Any,
                   batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES) -> None:
        """Fetch pages ``ids`` (rows of ``stride`` bytes, ``width`` bytes of payload each)
        into ``out``, a contiguous CPU uint8 tensor ``[len(ids), width]``."""
        _, dist = _torch()
        if not ids:
            return
        per = self._page_request(OP_GATHER, ids, stride, width, batching, chunk_bytes)
        ops = [dist.P2POp(dist.irecv, out[lo: lo + per], self.peer) for lo in range(0, len(ids), per)]
        wait_all(lambda: dist.batch_isend_irecv(ops), self.peer, OP_NAMES[OP_GATHER])

    def put_rows(self, ids: Sequence[int], stride: int, width: int, data: Any,
                 batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES) -> None:
        """Put ``data`` (contiguous CPU uint8 ``[len(ids), width]``) into pages ``ids``;
        returns once the peer has stored them."""
        _, dist = _torch()
        if not ids:
            return
        per = self._page_request(OP_SCATTER, ids, stride, width, batching, chunk_bytes)
        ops = [dist.P2POp(dist.isend, data[lo: lo + per], self.peer) for lo in range(0, len(ids), per)]
        wait_all(lambda: dist.batch_isend_irecv(ops), self.peer, OP_NAMES[OP_SCATTER])
        self._ack(OP_NAMES[OP_SCATTER])

    def read_pages(self, ids: Sequence[int], stride: int, width: int, method: str = "") -> Any:
        """Pages as a new ``[len(ids), width]`` uint8 CPU tensor. ``method``: a name in
        BATCHING, else the tier's batching (a pool passes its file read method here)."""
        torch, _ = _torch()
        out = torch.empty((len(ids), width), dtype=torch.uint8)
        self.fetch_rows(list(ids), stride, width, out, self.tier.batching_for(method), self.tier.chunk_bytes)
        return out

    def write_pages(self, ids: Sequence[int], stride: int, data: Any, method: str = "") -> None:
        self.put_rows(list(ids), stride, data.shape[1], data.to("cpu").contiguous(),
                      self.tier.batching_for(method), self.tier.chunk_bytes)

    def close(self) -> None:
        """Free the peer's memory (nothing to do once the group has failed)."""
        if self._open and not distributed.failure():
            try:
                self._request(OP_FREE)
            except GroupFailure:
                pass  # recorded on the group; the case that saw it says so
        self._open = False


class RemoteTier(Tier):
    """Pages in the host memory of rank ``peer`` of the run's process group, reached
    over gloo (kvbench.distributed). ``batching`` is what a pool's reads and writes
    use (``BATCHING``); ``chunk_bytes`` the largest coalesced message."""

    name = "remote"
    host_memory = True  # the peer's: it holds the pages in its host memory
    remote = True

    def __init__(self, peer: int = 1, batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES) -> None:
        if batching not in BATCHING:
            raise KvbenchError(f"unknown batching {batching!r}; known: {', '.join(BATCHING)}")
        self.peer, self.batching, self.chunk_bytes = peer, batching, chunk_bytes

    def batching_for(self, method: str) -> str:
        return method if method in BATCHING else self.batching

    @property
    def label(self) -> str:
        return f"remote (host memory of rank {self.peer}, {distributed.BACKEND})"

    def available(self) -> tuple[bool, str]:
        ok, why = distributed.group_status()
        if not ok:
            return False, why
        if self.peer == distributed.rank():
            return False, f"rank {self.peer} holds the pages: the remote tier is used from another rank"
        if not 0 <= self.peer < distributed.world_size():
            return False, f"peer rank {self.peer} is outside the {distributed.world_size()}-rank group"
        return True, f"host memory of rank {self.peer} over {distributed.BACKEND} ({why})"

    def _ask(self, op: int, *fields: int) -> Any:
        torch, dist = _torch()
        reply = torch.zeros(2, dtype=torch.int64)
        wait_all(lambda: [dist.isend(_header(op, 0, *fields), self.peer)], self.peer, OP_NAMES[op])
        wait_all(lambda: [dist.irecv(reply, self.peer)], self.peer, OP_NAMES[op])
        return reply

    def free_bytes(self) -> int:
        """What the peer's host memory can still hold (its dram tier's figure)."""
        self.check()
        return int(self._ask(OP_FREE_BYTES)[0])

    def _allocate(self, nbytes: int) -> RemoteBuffer:
        torch, dist = _torch()
        status, buffer_id = (int(x) for x in self._ask(OP_ALLOC, nbytes))
        if status != 0:
            text = torch.zeros(MESSAGE_LEN, dtype=torch.uint8)
            wait_all(lambda: [dist.irecv(text, self.peer)], self.peer, OP_NAMES[OP_ALLOC])
            why = bytes(text.tolist()).rstrip(b"\0").decode(errors="replace")
            raise TierUnavailable(f"tier remote (rank {self.peer}) cannot hold {nbytes:,} B: {why}")
        return RemoteBuffer(self, nbytes, buffer_id)


def stop_servers() -> list[str]:
    """Tell every other rank to stop serving (rank 0, at the end of a run; a rank that
    failed earlier is left out); what went wrong, one line per rank (empty when all
    acknowledged)."""
    torch, dist = _torch()
    problems = []
    for peer in range(1, distributed.world_size()):
        if peer in distributed.failed_ranks():
            problems.append(f"rank {peer} not told to stop: it failed earlier ({distributed.failure()})")
            continue
        try:
            wait_all(lambda: [dist.isend(_header(OP_SHUTDOWN), peer)], peer, OP_NAMES[OP_SHUTDOWN])
            wait_all(lambda: [dist.irecv(torch.zeros(1, dtype=torch.int64), peer)], peer, OP_NAMES[OP_SHUTDOWN])
        except GroupFailure as exc:
            problems.append(str(exc))
    return problems

