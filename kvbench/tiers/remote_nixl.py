"""NIXL as the remote tier's transport (``--set remote.transport=nixl``): the same pool in a
peer rank's host memory, the same requests over torch.distributed for what the peer must
do (allocate, free, gather, scatter), but the page bytes cross as NIXL one-sided READs
and WRITEs that rank 0 starts, over NIXL's UCX backend (pip: nixl, module nixl._api).

How a buffer is reached: rank 0 asks the peer to register it (``OP_NIXL_REGISTER``); the
peer registers the buffer and a staging buffer of the same size with its NIXL agent and
sends back its agent metadata (all of it the first time, then the new regions only)
and both base addresses; rank 0 loads that metadata into its own agent. Then:
  contiguous (the ceiling)  one READ (WRITE) of the byte range, as one descriptor or
                            as descriptors of ``message_bytes`` each, in one request;
  ``per_page``              one request of one descriptor per page, each completed
                            before the next is started;
  ``grouped``               one request of one descriptor per page (what vLLM's NIXL
                            connector posts: prepared descriptor lists, picked by index);
  ``coalesced``             the peer gathers the pages into its staging buffer (a
                            request over torch.distributed, acknowledged), then one READ
                            of the staging bytes in descriptors of as many whole pages
                            as fit in ``chunk_bytes`` (as torch's messages; a put: WRITE
                            to staging, then the peer scatters and acknowledges).
Descriptors are never merged by NIXL here (``skip_desc_merge``), so a case's count of
descriptors is what crossed. A request is polled until NIXL reports it done, within the
group's timeout; an error or the timeout marks the group failed (GroupFailure), as a
torch.distributed wait does.

Exit: NIXL's pip wheels bundle their own libnl-route, whose destructor crashes
(SIGSEGV in rtnl_tc_unregister, at process exit) in a process that also loaded torch;
``exit_process`` therefore ends a process that started an agent with ``os._exit`` once
Python's own exit handlers have run and the streams are flushed."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers.remote import (MESSAGE_LEN, OP_GATHER, OP_NAMES, OP_NIXL_GATHER, OP_NIXL_REGISTER,
                                  OP_NIXL_SCATTER, OP_READ, OP_SCATTER, OP_WRITE, GroupFailure, RemoteBuffer,
                                  RemoteTier, message_parts, pages_per_message, wait_all)

#: the NIXL backend used (the one whose wheels carry UCX; it moves host memory anywhere)
BACKEND = "UCX"
#: ``loaded``: NIXL's native libraries are in this process (from the first try to start
#: an agent, which may fail after loading them): exit_process is then needed;
#: ``failed``: why the agent did not start (not retried)
_state: dict[str, Any] = {"agent": None, "loaded": False, "failed": ""}


def agent(progress_thread: bool = False) -> Any:
    """This process's NIXL agent, made once with the UCX backend: on the rank that starts
    the transfers without a progress thread (polling a request progresses it), on a
    peer with one (nothing else would progress its side while it waits for requests).
    TierUnavailable when NIXL cannot start one here."""
    if _state["failed"]:
        raise TierUnavailable(_state["failed"])
    if _state["agent"] is None:
        try:
            import logging

            _state["loaded"] = True
            from nixl._api import nixl_agent, nixl_agent_config

            if "NIXL_LOG_LEVEL" not in os.environ:  # its INFO lines go to stdout
                logging.getLogger("nixl").setLevel(logging.WARNING)
            made = nixl_agent(f"kvbench-rank{distributed.rank()}-pid{os.getpid()}",
                              nixl_agent_config(enable_prog_thread=progress_thread, backends=[BACKEND]))
        except Exception as exc:  # noqa: BLE001 - NIXL raises its own errors and RuntimeErrors
            _state["failed"] = (f"NIXL could not start an agent with its {BACKEND} backend: "
                                f"{distributed.short_error(exc)} (UCX settings: {describe()['ucx_env']})")
            raise TierUnavailable(_state["failed"]) from None
        if BACKEND not in made.backends:
            raise TierUnavailable(f"NIXL started without its {BACKEND} backend (plugins here: "
                                  f"{', '.join(made.plugin_list) or 'none'})")
        _state["agent"] = made
    return _state["agent"]


def exit_process(code: int) -> None:
    """End the process with ``code``: through ``os._exit`` after Python's exit handlers
    and a flush of the streams when this process loaded NIXL to start an agent (its
    wheel's libnl-route crashes in the C library's exit), else return (the caller exits)."""
    if not _state["loaded"]:
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


def version() -> str:
    """The installed NIXL distribution's version ('' when unknown)."""
    from importlib import metadata

    for dist_name in ("nixl", "nixl-cu13", "nixl-cu12"):
        try:
            return metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return ""


def describe() -> dict[str, Any]:
    """What a case records of the transport: NIXL's version, its backend, the UCX
    settings this process was given (UCX_*; none: UCX picks its transports itself)."""
    ucx = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UCX_")}
    return {"version": version(), "backend": BACKEND, "ucx_env": ucx or "none (UCX's own choice of transports)"}


#: what a NIXL case's figures are, for its notes
NOTE = ("NIXL over UCX: one-sided READs (fetch) and WRITEs (put) started by this rank, one request per "
        "sample (per_page: one per page), descriptors never merged; memory is registered and descriptor "
        "lists prepared on first use and kept for the buffer's life (as vLLM's NIXL connector does: the "
        "warm-up pays it); the peer's part of a coalesced case (gather or scatter through its staging "
        "buffer) is a request over torch.distributed, acknowledged. On one host UCX may move the bytes "
        "through shared memory (cma, posix) rather than TCP")


def _wait(handle: Any, peer: int, what: str) -> None:
    """Poll a posted request until it is done, within the group's timeout. A failure
    marks the group failed (every later remote operation is refused with the reason),
    without blaming the peer (it may be a local error): rank 0 still tells it to stop."""
    ag = agent()
    deadline = time.monotonic() + distributed.timeout_s()
    why = ""
    try:
        state = ag.transfer(handle)
        while state != "DONE":
            if state == "ERR":
                raise KvbenchError("NIXL reported the transfer failed")
            if time.monotonic() > deadline:
                raise KvbenchError(f"not done after {distributed.timeout_s():g} s")
            state = ag.check_xfer_state(handle)
    except Exception as exc:  # noqa: BLE001 - NIXL's errors and the two above
        why = (f"rank {distributed.rank()}: NIXL {what} from rank {peer} failed "
               f"(timeout {distributed.timeout_s():g} s): {distributed.short_error(exc)}")
    try:
        ag.release_xfer_handle(handle)
    except Exception as exc:  # noqa: BLE001 - NIXL raises when a request in flight cannot be cancelled
        why = why or f"rank {distributed.rank()}: NIXL could not release {what}: {distributed.short_error(exc)}"
    if why:
        distributed.mark_failed(why)
        raise GroupFailure(why)


class NixlBuffer(RemoteBuffer):
    """A peer's buffer, its bytes moved by NIXL READ and WRITE from this rank."""

    def __init__(self, tier: RemoteTier, nbytes: int, buffer_id: int, remote_agent: Any, base: int,
                 staging: int) -> None:
        super().__init__(tier, nbytes, buffer_id)
        self.remote_agent, self.base, self.staging = remote_agent, base, staging
        self._local: dict[tuple[int, int], tuple[Any, Any]] = {}  # (ptr, nbytes): (tensor, registration)
        self._dlists: dict[tuple[Any, ...], Any] = {}
        self.last_descriptors = 0  # of the last request posted

    # -- descriptor lists, prepared once and kept for the buffer's life
    def _registered(self, t: Any) -> None:
        if not t.is_contiguous() or t.dtype.itemsize != 1:
            raise KvbenchError("NIXL moves contiguous uint8 tensors here; got a strided or wider one")
        key = (t.data_ptr(), t.numel())
        if key not in self._local:
            self._local[key] = (t, agent().register_memory([t]))

    def _dlist(self, key: tuple[Any, ...], descs: list[tuple[int, int, int]]) -> Any:
        """A prepared descriptor list, made once per ``key``: ``("local", ptr, ...)`` on
        this rank's memory, ``("remote", ...)`` on the peer's."""
        if key not in self._dlists:
            side = "NIXL_INIT_AGENT" if key[0] == "local" else self.remote_agent
            self._dlists[key] = agent().prep_xfer_dlist(side, descs, "DRAM")
        return self._dlists[key]

    def _rows(self, t: Any, n: int, width: int) -> Any:
        """The local side: ``t``'s first ``n`` rows of ``width`` bytes (registered)."""
        self._registered(t)
        ptr = t.data_ptr()
        return self._dlist(("local", ptr, "rows", n, width), [(ptr + i * width, width, 0) for i in range(n)])

    def _pool_rows(self, stride: int, width: int) -> Any:
        rows = self.nbytes // stride
        return self._dlist(("remote", "rows", stride, width), [(self.base + i * stride, width, 0) for i in range(rows)])

    def _move(self, op: str, local: Any, local_ids: Sequence[int], remote: Any, remote_ids: Sequence[int],
              what: str) -> None:
        ag = agent()
        self.last_descriptors = len(local_ids)
        try:
            handle = ag.make_prepped_xfer(op, local, list(local_ids), remote, list(remote_ids),
                                          skip_desc_merge=True)
        except Exception as exc:  # noqa: BLE001 - NIXL's own errors
            raise KvbenchError(f"NIXL could not prepare {what}: {distributed.short_error(exc)}") from None
        _wait(handle, self.peer, what)

    def _contiguous(self, op: str, remote_at: int, t: Any, message_bytes: int, what: str) -> None:
        """``t`` (contiguous, registered) against the peer's bytes at ``remote_at``, as
        descriptors of ``message_bytes`` (0: one) in one request."""
        self._registered(t)
        parts = message_parts(t.view(-1), message_bytes)
        spans, lo = [], 0
        for p in parts:
            spans.append((lo, p.numel()))
            lo += p.numel()
        ptr = t.data_ptr()
        local = self._dlist(("local", ptr, "span", t.numel(), message_bytes), [(ptr + a, b, 0) for a, b in spans])
        remote = self._dlist(("remote", "span", remote_at, t.numel(), message_bytes),
                             [(remote_at + a, b, 0) for a, b in spans])
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
                self._staged(OP_NIXL_SCATTER, ids, stride, width)
            else:
                self._staged(OP_NIXL_GATHER, ids, stride, width)
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
        ptr = t.data_ptr()
        for key in [k for k in self._dlists if k[0] == "local" and k[1] == ptr]:
            agent().release_dlist_handle(self._dlists.pop(key))
        for key in [k for k in self._local if k[0] == ptr]:
            agent().deregister_memory(self._local.pop(key)[1])

    def close(self) -> None:
        if self._open and _state["agent"] is not None:
            for handle in self._dlists.values():
                agent().release_dlist_handle(handle)
            for _, reg in self._local.values():
                agent().deregister_memory(reg)
            self._dlists.clear(), self._local.clear()
        super().close()


class NixlRemoteTier(RemoteTier):
    """The remote tier with NIXL moving the bytes (the peer still allocates over
    torch.distributed)."""

    def __init__(self, peer: int = 1, batching: str = "coalesced", chunk_bytes: int = 0,
                 transport: str = "nixl") -> None:
        from kvbench.tiers.remote import CHUNK_BYTES

        super().__init__(peer, batching, chunk_bytes or CHUNK_BYTES, "nixl")

    @property
    def label(self) -> str:
        return f"remote (host memory of rank {self.peer}, NIXL {BACKEND})"

    def available(self) -> tuple[bool, str]:
        """The group's and the peer's checks, then whether this rank's NIXL agent starts
        (it is started here, once, and kept)."""
        ok, why = super().available()
        if not ok:
            return ok, why
        try:
            agent()
        except TierUnavailable as exc:
            return False, str(exc)
        return True, f"{why}; bytes over NIXL {BACKEND} {version()}".strip()

    def _allocate(self, nbytes: int) -> RemoteBuffer:
        import torch
        import torch.distributed as dist

        ag = agent()  # before the peer allocates: a failure here leaves nothing on the peer
        plain = super()._allocate(nbytes)
        plain._request(OP_NIXL_REGISTER)
        head = torch.zeros(2, dtype=torch.int64)
        wait_all(lambda: [dist.irecv(head, self.peer)], self.peer, OP_NAMES[OP_NIXL_REGISTER])
        status, size = (int(x) for x in head)
        body = torch.zeros(MESSAGE_LEN if status else size, dtype=torch.uint8)
        wait_all(lambda: [dist.irecv(body, self.peer)], self.peer, OP_NAMES[OP_NIXL_REGISTER])
        if status:
            plain.close()
            why = bytes(body.tolist()).rstrip(b"\0").decode(errors="replace")
            raise TierUnavailable(f"tier remote (rank {self.peer}, NIXL) cannot register {nbytes:,} B: {why}")
        where = torch.zeros(2, dtype=torch.int64)
        wait_all(lambda: [dist.irecv(where, self.peer)], self.peer, OP_NAMES[OP_NIXL_REGISTER])
        try:
            name = ag.add_remote_agent(body.numpy().tobytes())
        except Exception as exc:  # noqa: BLE001 - NIXL's own errors
            plain.close()
            raise TierUnavailable(f"NIXL could not load rank {self.peer}'s metadata: "
                                  f"{distributed.short_error(exc)}") from None
        return NixlBuffer(self, nbytes, plain.buffer_id, name, int(where[0]), int(where[1]))


class NixlServing:
    """The peer's side: registers buffers (and a staging buffer each) with this rank's
    agent, and gathers or scatters pages through the staging buffer on request.
    ``server``: the PageServer whose buffers these are."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.regs: dict[int, tuple[Any, Any]] = {}  # buffer id: (staging, registration)
        self.told = False  # whether the client has this agent's full metadata

    def register(self, buffer_id: int, *_: int) -> None:
        from kvbench.tiers.dram import DramTier

        srv, torch = self.server, self.server.torch
        buf = srv._buffer(buffer_id)
        reg = None
        try:
            ag = agent(progress_thread=True)
            staging = DramTier(pinned=False).allocate(buf.numel()).tensor
            reg = ag.register_memory([buf, staging])
            # the first time with the connection details, then the new regions only
            meta = ag.get_partial_agent_metadata(reg, not self.told, [BACKEND])
        except Exception as exc:  # noqa: BLE001 - the refusal goes back to the client
            if reg is not None:
                agent().deregister_memory(reg)
            srv._reply(1)
            text = distributed.short_error(exc).encode()[:MESSAGE_LEN]
            msg = torch.zeros(MESSAGE_LEN, dtype=torch.uint8)
            msg[: len(text)] = torch.tensor(list(text), dtype=torch.uint8)
            srv._send(msg, "a registration's refusal")
            return
        self.told = True
        self.regs[buffer_id] = (staging, reg)
        srv._reply(0, len(meta))
        srv._send(torch.frombuffer(bytearray(meta), dtype=torch.uint8), "NIXL metadata")
        srv._send(torch.tensor([buf.data_ptr(), staging.data_ptr()], dtype=torch.int64), "NIXL addresses")

    def _stage(self, buffer_id: int, n: int, width: int) -> Any:
        if buffer_id not in self.regs:
            raise GroupFailure(f"rank {distributed.rank()}: buffer {buffer_id} is not registered with NIXL")
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
            agent().deregister_memory(self.regs.pop(buffer_id)[1])

    def close(self) -> None:
        for buffer_id in list(self.regs):
            self.forget(buffer_id)
