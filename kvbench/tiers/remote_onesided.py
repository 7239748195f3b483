"""The remote tier over a one-sided transfer engine (``--set remote.transport=nixl`` or
``mooncake``): the same pool in a peer rank's host memory, the same requests over
torch.distributed for what the peer must do (allocate, free, gather, scatter), but the
page bytes cross as one-sided READs and WRITEs that rank 0 starts through the engine
(kvbench.tiers.remote_nixl: NIXL over UCX; kvbench.tiers.remote_mooncake: Mooncake's
transfer engine over TCP or RDMA).

How a buffer is reached: rank 0 asks the peer to register it (``OP_ONESIDED_REGISTER``,
naming the engine); the peer registers the buffer and a staging buffer of the same size
with its engine and sends back what rank 0 needs to reach them (NIXL: agent metadata;
Mooncake: its session address) and both base addresses. Then:
  contiguous (the ceiling)  one READ (WRITE) of the byte range, as one descriptor or
                            as descriptors of ``message_bytes`` each, in one request;
  ``per_page``              one request of one descriptor per page, each completed
                            before the next is started;
  ``grouped``               one request of one descriptor per page (what vLLM's NIXL
                            connector and Mooncake's batch transfers post);
  ``coalesced``             the peer gathers the pages into its staging buffer (a
                            request over torch.distributed, acknowledged), then one READ
                            of the staging bytes in descriptors of as many whole pages
                            as fit in ``chunk_bytes`` (as torch's messages; a put: WRITE
                            to staging, then the peer scatters and acknowledges).
A case's count of descriptors is what crossed (the engines are told not to merge them).
Every request is bounded by the group's timeout: a timeout marks the group failed
(GroupFailure), as a torch.distributed wait does; an error the engine reports fails the
case.

The engine interface (each engine module's ``Engine`` class): ``name``, ``label``,
``hard_exit`` (whether the process must end through os._exit), ``start(serving)``,
``register(tensors)`` / ``deregister(reg)``, ``peer_info(reg, first)`` -> bytes,
``load_peer(info)``, ``probe(peer, addr)`` (reach the peer once, untimed, so that an
unreachable one is a TierUnavailable), ``prep(peer, descs)`` / ``release(prepared)``, ``move(op, local,
local_idx, remote, remote_idx)`` (blocks until done and returns the number of blocking
calls it made, or raises: TimeoutError past the group's timeout), ``describe()``,
``note``."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers import remote_mooncake, remote_nixl
from kvbench.tiers.remote import (CHUNK_BYTES, MESSAGE_LEN, OP_GATHER, OP_NAMES, OP_ONESIDED_GATHER,
                                  OP_ONESIDED_REGISTER, OP_ONESIDED_SCATTER, OP_READ, OP_SCATTER, OP_WRITE,
                                  TRANSPORTS, GroupFailure, RemoteBuffer, RemoteTier, message_parts,
                                  pages_per_message, wait_all)

#: the one-sided engines, by transport name
ENGINES = {"nixl": remote_nixl.Engine, "mooncake": remote_mooncake.Engine}
#: this process's engine (one transport per process), why it did not start (not
#: retried), and whether the process must end through os._exit (exit_process)
_state: dict[str, Any] = {"engine": None, "failed": "", "hard_exit": False}


def engine(name: str, serving: bool = False) -> Any:
    """This process's engine of transport ``name``, started once: as the rank that starts
    the transfers, or (``serving``) as a peer that only answers them. TierUnavailable
    when it cannot start here."""
    if _state["failed"]:
        raise TierUnavailable(_state["failed"])
    made = _state["engine"]
    if made is not None:
        if made.name != name:
            raise TierUnavailable(f"this process runs the {made.name} transport; {name} was asked for too")
        return made
    cls = ENGINES[name]
    _state["hard_exit"] = _state["hard_exit"] or cls.hard_exit  # set before its libraries load
    try:
        made = cls(serving)
    except TierUnavailable as exc:
        _state["failed"] = str(exc)
        raise
    _state["engine"] = made
    return made


def exit_process(code: int) -> None:
    """End the process with ``code`` through ``os._exit``, after Python's exit handlers
    and a flush of the streams, when an engine that needs it was loaded (NIXL's wheel
    crashes in the C library's exit); else return (the caller exits)."""
    if not _state["hard_exit"]:
        return
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


#: what every one-sided case's figures are, for its notes (the engine adds its own)
NOTE = ("one-sided READs (fetch) and WRITEs (put) started by this rank, one request per sample (per_page: "
        "one per page; config.engine_calls: the blocking engine calls a sample made), descriptors never "
        "merged; memory is registered and descriptor lists prepared on first use and kept for the buffer's "
        "life (as vLLM's NIXL connector does: the warm-up pays it); the peer's part of a coalesced case "
        "(gather or scatter through its staging buffer) is a request over torch.distributed, acknowledged")


class OneSidedBuffer(RemoteBuffer):
    """A peer's buffer, its bytes moved by the engine's READs and WRITEs from this rank."""

    def __init__(self, tier: "OneSidedTier", nbytes: int, buffer_id: int, peer_handle: Any, base: int,
                 staging: int) -> None:
        super().__init__(tier, nbytes, buffer_id)
        self.engine = tier.engine()
        self.peer_handle, self.base, self.staging = peer_handle, base, staging
        #: how the engine names the peer (NIXL: its agent; Mooncake: its session address)
        self.peer_name = peer_handle.decode() if isinstance(peer_handle, bytes) else str(peer_handle)
        # a local storage's data pointer: (the whole storage as a uint8 tensor, its registration)
        self._local: dict[int, tuple[Any, Any]] = {}
        self._lists: dict[tuple[Any, ...], Any] = {}
        self.last_descriptors = 0  # of the last request posted
        self.calls = 0  # blocking engine calls made since the count was last reset (a request: 1, or batches)

    # -- descriptor lists, prepared once and kept for the buffer's life
    def _registered(self, t: Any) -> int:
        """Register the whole storage under ``t`` once (an engine may refuse overlapping
        regions, and views of one tensor overlap); its data pointer, the key of what was
        prepared on it."""
        import torch

        if not t.is_contiguous() or t.dtype.itemsize != 1:
            raise KvbenchError(f"{self.engine.label} moves contiguous uint8 tensors here; got a strided or wider one")
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._local:
            whole = torch.empty(0, dtype=torch.uint8).set_(storage)
            self._local[key] = (whole, self.engine.register([whole]))
        return key

    def _list(self, key: tuple[Any, ...], descs: list[tuple[int, int]]) -> Any:
        """A prepared descriptor list, made once per ``key``: ``("local", ptr, ...)`` on
        this rank's memory, ``("remote", ...)`` on the peer's."""
        if key not in self._lists:
            self._lists[key] = self.engine.prep(None if key[0] == "local" else self.peer_handle, descs)
        return self._lists[key]

    def _rows(self, t: Any, n: int, width: int) -> Any:
        """The local side: ``t``'s first ``n`` rows of ``width`` bytes (registered)."""
        home, ptr = self._registered(t), t.data_ptr()
        return self._list(("local", home, "rows", ptr, n, width), [(ptr + i * width, width) for i in range(n)])

    def _pool_rows(self, stride: int, width: int) -> Any:
        rows = self.nbytes // stride
        return self._list(("remote", "rows", stride, width), [(self.base + i * stride, width) for i in range(rows)])

    def _move(self, op: str, local: Any, local_ids: Sequence[int], remote: Any, remote_ids: Sequence[int],
              what: str) -> None:
        """One request, bounded. A timeout marks the group failed (without blaming the
        peer: rank 0 still tells it to stop); an error the engine reports fails the case
        (a dead peer then fails the next request over torch.distributed)."""
        self.last_descriptors = len(local_ids)
        try:
            self.calls += self.engine.move(op, local, list(local_ids), remote, list(remote_ids))
        except Exception as exc:  # noqa: BLE001 - the engines' own errors
            why = (f"rank {distributed.rank()}: {self.engine.label} {what} from rank {self.peer} failed: "
                   f"{distributed.short_error(exc)}")
            if isinstance(exc, TimeoutError):
                distributed.mark_failed(why)
                raise GroupFailure(why) from None
            raise KvbenchError(why) from None

    def _contiguous(self, op: str, remote_at: int, t: Any, message_bytes: int, what: str) -> None:
        """``t`` (contiguous, registered) against the peer's bytes at ``remote_at``, as
        descriptors of ``message_bytes`` (0: one) in one request."""
        home, ptr = self._registered(t), t.data_ptr()
        spans, lo = [], 0
        for p in message_parts(t.view(-1), message_bytes):
            spans.append((lo, p.numel()))
            lo += p.numel()
        local = self._list(("local", home, "span", ptr, t.numel(), message_bytes), [(ptr + a, b) for a, b in spans])
        remote = self._list(("remote", "span", remote_at, t.numel(), message_bytes),
                            [(remote_at + a, b) for a, b in spans])
        self._move(op, local, range(len(spans)), remote, range(len(spans)), what)

    # -- contiguous: the ceiling
    def read_into(self, offset: int, dst: Any, message_bytes: int = 0) -> None:
        self._check_range(offset, dst.numel())
        self._contiguous("READ", self.base + offset, dst, message_bytes, OP_NAMES[OP_READ])

    def write_from(self, offset: int, src: Any, message_bytes: int = 0) -> None:
        self._check_range(offset, src.numel())
        self._contiguous("WRITE", self.base + offset, src, message_bytes, OP_NAMES[OP_WRITE])

    # -- pages
    def _staged(self, op: int, ids: Sequence[int], stride: int, width: int) -> None:
        """Ask the peer to gather the pages into its staging buffer (or scatter them from
        it) and wait for its acknowledgement."""
        import torch
        import torch.distributed as dist

        self._request(op, len(ids), stride, width, 0)
        wait_all(lambda: [dist.isend(torch.tensor(list(ids), dtype=torch.int64), self.peer)], self.peer,
                 OP_NAMES[op])
        self._ack(OP_NAMES[op])

    def _pages(self, op: str, ids: Sequence[int], stride: int, width: int, t: Any, batching: str,
               chunk_bytes: int) -> None:
        n, what = len(ids), OP_NAMES[OP_GATHER if op == "READ" else OP_SCATTER]
        per = pages_per_message(batching, n, width, chunk_bytes)
        if per > 1:  # coalesced, through staging, in descriptors of whole pages (as torch's messages)
            if op == "WRITE":
                self._contiguous(op, self.staging, t[:n], per * width, what)
                self._staged(OP_ONESIDED_SCATTER, ids, stride, width)
            else:
                self._staged(OP_ONESIDED_GATHER, ids, stride, width)
                self._contiguous(op, self.staging, t[:n], per * width, what)
            return
        local, remote = self._rows(t, n, width), self._pool_rows(stride, width)
        if batching == "per_page":
            for j, i in enumerate(ids):
                self._move(op, local, [j], remote, [i], what)
            return
        self._move(op, local, range(n), remote, ids, what)

    def fetch_rows(self, ids: Sequence[int], stride: int, width: int, out: Any,
                   batching: str = "coalesced", chunk_bytes: int = 0) -> None:
        if ids:
            self._check_pages(ids, stride, width, batching)
            self._pages("READ", list(ids), stride, width, out, batching, chunk_bytes or self.tier.chunk_bytes)

    def put_rows(self, ids: Sequence[int], stride: int, width: int, data: Any,
                 batching: str = "coalesced", chunk_bytes: int = 0) -> None:
        if ids:
            self._check_pages(ids, stride, width, batching)
            self._pages("WRITE", list(ids), stride, width, data, batching, chunk_bytes or self.tier.chunk_bytes)

    def read_pages(self, ids: Sequence[int], stride: int, width: int, method: str = "") -> Any:
        out = super().read_pages(ids, stride, width, method)
        self._forget_local(out)
        return out

    def write_pages(self, ids: Sequence[int], stride: int, data: Any, method: str = "") -> None:
        data = data.to("cpu").contiguous()
        self.put_rows(list(ids), stride, data.shape[1], data, self.tier.batching_for(method), self.tier.chunk_bytes)
        self._forget_local(data)

    def _forget_local(self, t: Any) -> None:
        """Release what a one-off tensor (the store's reads and writes) had prepared."""
        home = t.untyped_storage().data_ptr()
        for key in [k for k in self._lists if k[0] == "local" and k[1] == home]:
            self.engine.release(self._lists.pop(key))
        if home in self._local:
            self.engine.deregister(self._local.pop(home)[1])

    def close(self) -> None:
        if self._open:
            for prepared in self._lists.values():
                self.engine.release(prepared)
            for _, reg in self._local.values():
                self.engine.deregister(reg)
            self._lists.clear(), self._local.clear()
        super().close()


class OneSidedTier(RemoteTier):
    """The remote tier with a one-sided engine moving the bytes (the peer still
    allocates over torch.distributed). ``transport``: a name in ENGINES."""

    def __init__(self, peer: int = 1, batching: str = "coalesced", chunk_bytes: int = 0,
                 transport: str = "nixl") -> None:
        if transport not in ENGINES:
            raise KvbenchError(f"transport {transport!r} is not one-sided; one-sided: {', '.join(ENGINES)}")
        super().__init__(peer, batching, chunk_bytes or CHUNK_BYTES, transport)

    def engine(self) -> Any:
        return engine(self.transport)

    @property
    def stack(self) -> str:
        return f"{ENGINES[self.transport].label} stack"

    def case_config(self, buf: RemoteBuffer) -> dict[str, Any]:
        """The engine's description and the peer's name, and the blocking engine calls
        the paged move just made took (``buf.calls``, reset before it)."""
        return {"engine": {**self.engine().describe(), "peer": getattr(buf, "peer_name", None)},
                "engine_calls": buf.calls}

    def case_notes(self, cfg: dict[str, Any]) -> list[str]:
        made = self.engine()
        staged = cfg["batching"] == "coalesced" and cfg["messages"] < cfg["pages"]
        crossed = (f"{cfg['messages']:,} {made.label} descriptors per sample ({cfg['batching']}) in "
                   f"{cfg['engine_calls']:,} blocking engine call(s), one after another"
                   + (", plus the peer's gather or scatter request, its page list and acknowledgement"
                      if staged else ""))
        return [crossed, f"{made.note}: {NOTE}"]

    @property
    def label(self) -> str:
        return f"remote (host memory of rank {self.peer}, {ENGINES[self.transport].label})"

    def available(self) -> tuple[bool, str]:
        """The group's and the peer's checks, then whether this rank's engine starts (it
        is started here, once, and kept)."""
        ok, why = super().available()
        if not ok:
            return ok, why
        try:
            made = self.engine()
        except TierUnavailable as exc:
            return False, str(exc)
        return True, f"{why}; bytes over {made.label} {made.describe().get('version', '')}".strip()

    def _allocate(self, nbytes: int) -> RemoteBuffer:
        import torch
        import torch.distributed as dist

        made = self.engine()  # before the peer allocates: a failure here leaves nothing on the peer
        plain = super()._allocate(nbytes)
        what = OP_NAMES[OP_ONESIDED_REGISTER]
        plain._request(OP_ONESIDED_REGISTER, list(TRANSPORTS).index(self.transport))
        head = torch.zeros(2, dtype=torch.int64)
        wait_all(lambda: [dist.irecv(head, self.peer)], self.peer, what)
        status, size = (int(x) for x in head)
        body = torch.zeros(MESSAGE_LEN if status else size, dtype=torch.uint8)
        wait_all(lambda: [dist.irecv(body, self.peer)], self.peer, what)
        if status:
            plain.close()
            why = bytes(body.tolist()).rstrip(b"\0").decode(errors="replace")
            raise TierUnavailable(f"tier remote (rank {self.peer}, {made.label}) cannot register {nbytes:,} B: {why}")
        where = torch.zeros(2, dtype=torch.int64)
        wait_all(lambda: [dist.irecv(where, self.peer)], self.peer, what)
        try:
            peer_handle = made.load_peer(body.numpy().tobytes())
            made.probe(peer_handle, int(where[0]))
        except Exception as exc:  # noqa: BLE001 - the engines' own errors
            plain.close()
            raise TierUnavailable(f"{made.label} could not reach rank {self.peer}'s buffer: "
                                  f"{distributed.short_error(exc)}") from None
        return OneSidedBuffer(self, nbytes, plain.buffer_id, peer_handle, int(where[0]), int(where[1]))


class OneSidedServing:
    """The peer's side: registers buffers (and a staging buffer each) with this rank's
    engine, and gathers or scatters pages through the staging buffer on request.
    ``server``: the PageServer whose buffers these are."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.regs: dict[int, tuple[Any, Any]] = {}  # buffer id: (staging, registration)
        self.told = False  # whether the client has had this engine's connection details
        self.engine: Any = None

    def _refuse(self, why: str) -> None:
        srv, torch = self.server, self.server.torch
        srv._reply(1)
        text = why.encode()[:MESSAGE_LEN]
        msg = torch.zeros(MESSAGE_LEN, dtype=torch.uint8)
        msg[: len(text)] = torch.tensor(list(text), dtype=torch.uint8)
        srv._send(msg, "a registration's refusal")

    def register(self, buffer_id: int, transport: int, *_: int) -> None:
        from kvbench.tiers.dram import DramTier

        srv, torch = self.server, self.server.torch
        buf, reg = srv._buffer(buffer_id), None
        try:
            self.engine = engine(list(TRANSPORTS)[transport], serving=True)
            staging = DramTier(pinned=False).allocate(buf.numel()).tensor
            reg = self.engine.register([buf, staging])
            info = self.engine.peer_info(reg, not self.told)
        except Exception as exc:  # noqa: BLE001 - the refusal goes back to the client
            if reg is not None:
                self.engine.deregister(reg)
            self._refuse(distributed.short_error(exc))
            return
        self.told = True
        self.regs[buffer_id] = (staging, reg)
        srv._reply(0, len(info))
        srv._send(torch.frombuffer(bytearray(info), dtype=torch.uint8), "the engine's connection details")
        srv._send(torch.tensor([buf.data_ptr(), staging.data_ptr()], dtype=torch.int64), "the buffers' addresses")

    def _stage(self, buffer_id: int, n: int, width: int) -> Any:
        if buffer_id not in self.regs:
            raise GroupFailure(f"rank {distributed.rank()}: buffer {buffer_id} is not registered with an engine")
        return self.regs[buffer_id][0][: n * width].view(n, width)

    def gather(self, buffer_id: int, n: int, stride: int, width: int, *_: int) -> None:
        rows, ids = self.server._rows(buffer_id, n, stride, width)
        self.server.torch.index_select(rows, 0, ids, out=self._stage(buffer_id, n, width))
        self.server._ack()

    def scatter(self, buffer_id: int, n: int, stride: int, width: int, *_: int) -> None:
        rows, ids = self.server._rows(buffer_id, n, stride, width)
        stage = self._stage(buffer_id, n, width)
        for j, i in enumerate(ids.tolist()):  # row by row: index_copy_ of uint8 rows is slower
            rows[i].copy_(stage[j])
        self.server._ack()

    def forget(self, buffer_id: int) -> None:
        """Deregister a buffer the client freed (and drop its staging buffer)."""
        if buffer_id in self.regs:
            self.engine.deregister(self.regs.pop(buffer_id)[1])

    def close(self) -> None:
        for buffer_id in list(self.regs):
            self.forget(buffer_id)
