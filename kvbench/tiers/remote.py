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
                 on either side), each posted and completed before the next: what a loop
                 of send/recv costs, n message latencies in a row;
  ``grouped``    the same n per-page messages (no copy), posted together as one
                 ``batch_isend_irecv`` group and then waited for (NCCL fuses such a group
                 into one launch; gloo, which cannot coalesce, posts them back to back);
  ``coalesced``  the peer gathers the pages into a contiguous staging buffer (fetch) or
                 scatters them from it (put), sent in messages of at most ``chunk_bytes``
                 (one message when the list fits; with several, the peer gathers the
                 next chunks while one is sent); a page as large as a chunk goes
                 straight from or into its row, as grouped (nothing to coalesce).
Contiguous ``read_into`` / ``write_from`` of a byte range (one message, or consecutive
messages of a size) are the same-run ceiling.
Every wait is bounded by the group's timeout; a failed wait marks the group failed.
Transports (``TRANSPORTS``): torch.distributed, and NIXL or Mooncake where their package
is installed (kvbench.tiers.remote_onesided: the same requests over torch.distributed,
the bytes as the engine's one-sided READs and WRITEs); a run asking for one that is not
installed skips with the reason (``transport_status``)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers.base import Tier, TierBuffer
from kvbench.units import MiB

BATCHING = ("per_page", "grouped", "coalesced")
#: the largest message of a coalesced transfer unless one is chosen (the remote benchmark
#: uses the message size its contiguous ceiling found fastest, 1-8 MiB over gloo): small
#: enough that gathering the next chunks overlaps the sends
CHUNK_BYTES = 4 * MiB
#: transports the remote tier can name (``--set remote.transport``): torch.distributed,
#: built in; NIXL (pip: nixl) and Mooncake (pip: mooncake-transfer-engine) when their
#: Python packages are importable, each known by the module that is its transfer API
#: (the PyPI name ``mooncake`` alone is an unrelated package)
TRANSPORTS = {"torch": ("torch.distributed", "torch.distributed point to point"),
              "nixl": ("nixl._api", "NIXL (pip install nixl)"),
              "mooncake": ("mooncake.engine", "Mooncake's transfer engine (pip install mooncake-transfer-engine, "
                                              "or mooncake-transfer-engine-non-cuda without an NVIDIA driver)")}
HEADER_LEN = 6
#: bytes of an error text sent back by the peer
MESSAGE_LEN = 240
OP_SHUTDOWN, OP_FREE_BYTES, OP_ALLOC, OP_FREE, OP_READ, OP_WRITE, OP_GATHER, OP_SCATTER = range(8)
#: a one-sided engine's requests (kvbench.tiers.remote_onesided): register a buffer with
#: it, gather pages into the buffer's staging buffer, scatter them from it
OP_ONESIDED_REGISTER, OP_ONESIDED_GATHER, OP_ONESIDED_SCATTER = range(8, 11)
OP_NAMES = ("shutdown", "free bytes", "allocate", "free", "contiguous fetch", "contiguous put",
            "page fetch", "page put", "a registration with the engine", "a gather into staging",
            "a scatter from staging")


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
    """Pages one data message carries: 1 per page and grouped; coalesced as many as fit
    in ``chunk_bytes`` (at least one, at most the whole list)."""
    if batching != "coalesced":
        return 1
    return max(1, min(n, chunk_bytes // max(1, width)))


def messages(batching: str, n: int, width: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Data messages moving ``n`` pages of ``width`` bytes."""
    per = pages_per_message(batching, n, width, chunk_bytes)
    return -(-n // per)


def wire_mode(batching: str, per: int) -> int:
    """What a page request tells the peer (its last header field): ``per`` >= 2 pages per
    message through its staging buffer (coalesced); 1: straight from or into the rows,
    the messages posted as one group (grouped; coalesced pages as large as a chunk); 0:
    straight from or into the rows, one message at a time (per_page)."""
    if batching == "per_page":
        return 0
    return per if batching == "coalesced" else 1


def transport_status(name: str) -> tuple[bool, str]:
    """Whether transport ``name`` (TRANSPORTS) can move pages here, and why not.
    torch.distributed always; NIXL and Mooncake when their module is importable (a
    module lookup: the engine itself starts in the tier's ``available()``)."""
    import importlib.util

    if name == "torch":
        return True, TRANSPORTS[name][1]
    module, what = TRANSPORTS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except Exception as exc:  # noqa: BLE001 - a submodule's lookup imports its package, which may fail
        return False, f"remote.transport={name}: {module} cannot be imported: {distributed.short_error(exc)}"
    if not found:
        return False, (f"remote.transport={name}: the Python module {module} of {what} is not importable here; "
                       "the same cases and ceilings would run over it")
    return True, what.split(" (")[0]


class RemoteBuffer(TierBuffer):
    """``nbytes`` of a peer's host memory, known by the id the peer gave it."""

    def __init__(self, tier: "RemoteTier", nbytes: int, buffer_id: int) -> None:
        self.tier, self.nbytes, self.buffer_id = tier, nbytes, buffer_id
        self.peer = tier.peer
        self._open = True
        self.calls = 0  # counted by the one-sided engines' buffers only (kvbench.tiers.remote_onesided)

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
    def _check_pages(self, ids: Sequence[int], stride: int, width: int, batching: str) -> None:
        """A known batching, and every page a row of this buffer."""
        if batching not in BATCHING:
            raise KvbenchError(f"unknown batching {batching!r}; known: {', '.join(BATCHING)}")
        rows = self.nbytes // stride
        bad = [i for i in ids if not 0 <= i < rows]
        if bad or width > stride:
            raise KvbenchError(f"page {bad[0] if bad else '?'} of {width} B is outside a remote pool of "
                               f"{rows} rows of {stride} B")

    def _page_request(self, op: int, ids: Sequence[int], stride: int, width: int, batching: str,
                      chunk_bytes: int) -> int:
        torch, dist = _torch()
        self._check_pages(ids, stride, width, batching)
        per = pages_per_message(batching, len(ids), width, chunk_bytes)
        self._request(op, len(ids), stride, width, wire_mode(batching, per))
        wait_all(lambda: [dist.isend(torch.tensor(list(ids), dtype=torch.int64), self.peer)], self.peer, OP_NAMES[op])
        return per

    def _page_messages(self, op: Any, rows: Any, per: int, batching: str, what: str) -> None:
        """``rows`` (the local side, ``[n, width]``) in messages of ``per`` pages: one at a
        time (per_page) or posted as one group (grouped, coalesced)."""
        _, dist = _torch()
        parts = [rows[lo: lo + per] for lo in range(0, rows.shape[0], per)]
        if batching == "per_page":
            for part in parts:
                wait_all(lambda part=part: [op(part, self.peer)], self.peer, what)
            return
        ops = [dist.P2POp(op, part, self.peer) for part in parts]
        wait_all(lambda: dist.batch_isend_irecv(ops), self.peer, what)

    def fetch_rows(self, ids: Sequence[int], stride: int, width: int, out: Any,
                   batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES) -> None:
        """Fetch pages ``ids`` (rows of ``stride`` bytes, ``width`` bytes of payload each)
        into ``out``, a contiguous CPU uint8 tensor ``[len(ids), width]``."""
        _, dist = _torch()
        if not ids:
            return
        per = self._page_request(OP_GATHER, ids, stride, width, batching, chunk_bytes)
        self._page_messages(dist.irecv, out[: len(ids)], per, batching, OP_NAMES[OP_GATHER])

    def put_rows(self, ids: Sequence[int], stride: int, width: int, data: Any,
                 batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES) -> None:
        """Put ``data`` (contiguous CPU uint8 ``[len(ids), width]``) into pages ``ids``;
        returns once the peer has stored them."""
        _, dist = _torch()
        if not ids:
            return
        per = self._page_request(OP_SCATTER, ids, stride, width, batching, chunk_bytes)
        self._page_messages(dist.isend, data[: len(ids)], per, batching, OP_NAMES[OP_SCATTER])
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
    #: what a loopback figure over this transport measures, for a case's notes
    stack = "gloo/TCP stack"

    def __init__(self, peer: int = 1, batching: str = "coalesced", chunk_bytes: int = CHUNK_BYTES,
                 transport: str = "torch") -> None:
        if batching not in BATCHING:
            raise KvbenchError(f"unknown batching {batching!r}; known: {', '.join(BATCHING)}")
        if transport not in TRANSPORTS:
            raise KvbenchError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
        self.peer, self.batching, self.chunk_bytes, self.transport = peer, batching, chunk_bytes, transport

    def case_config(self, buf: RemoteBuffer) -> dict[str, Any]:
        """What a case records of the transport beyond its name, from ``buf`` just after
        one paged move (torch.distributed: nothing more)."""
        return {}

    def case_notes(self, cfg: dict[str, Any]) -> list[str]:
        """What crossed per sample besides the payload, for a case's notes."""
        put = cfg["dst"] == "remote"
        return [f"{cfg['messages']:,} data messages per sample ({cfg['batching']}), plus the request and its "
                "page list" + (" and the peer's acknowledgement" if put else "")]

    def batching_for(self, method: str) -> str:
        return method if method in BATCHING else self.batching

    @property
    def label(self) -> str:
        return f"remote (host memory of rank {self.peer}, {distributed.BACKEND})"

    def available(self) -> tuple[bool, str]:
        ok, why = transport_status(self.transport)
        if not ok:
            return False, why
        if self.transport != "torch" and type(self) is RemoteTier:
            return False, (f"remote.transport={self.transport}: this tier moves bytes over torch.distributed; "
                           f"the {self.transport} transport has its own tier class")
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

