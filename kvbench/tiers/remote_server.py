"""The peer side of the remote tier: a rank that holds buffers in its host memory and
answers the client's requests (the protocol: kvbench.tiers.remote) until shutdown.

Buffers are pageable host memory (kvbench.tiers.dram.aligned_host_empty); an
allocation the host cannot hold beside its margin is refused with the reason, sent
back to the client. A coalesced request gathers (fetch) or scatters (put) the pages
through one staging buffer, reused across requests and grown when a request needs
more; one helper thread gathers the chunks, running ahead of the sends (gloo writes an
isend's bytes in the calling thread), or scatters a chunk while the next one arrives."""

from __future__ import annotations

import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvbench import distributed
from kvbench.tiers.remote import (HEADER_LEN, MESSAGE_LEN, OP_ALLOC, OP_FREE, OP_FREE_BYTES, OP_GATHER,
                                  OP_NAMES, OP_ONESIDED_GATHER, OP_ONESIDED_REGISTER, OP_ONESIDED_SCATTER, OP_READ, OP_SCATTER,
                                  OP_SHUTDOWN, OP_WRITE, GroupFailure, message_parts, wait_all)


def serve(client: int = 0) -> None:
    """Serve requests from rank ``client`` until it sends shutdown (every rank but 0 of a
    run). GroupFailure when the client goes away or sends nothing within the timeout."""
    PageServer(client).run()


class PageServer:
    """Serves one client rank. ``run()`` returns after a shutdown request."""

    def __init__(self, client: int = 0) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.client = torch, dist, client
        self.buffers: dict[int, Any] = {}
        self.next_id = 1
        self.staging = torch.empty(0, dtype=torch.uint8)
        self.helper = ThreadPoolExecutor(1, thread_name_prefix="kvbench-page-copy")
        self.handlers = {OP_FREE_BYTES: self._free_bytes, OP_ALLOC: self._alloc, OP_FREE: self._free,
                         OP_READ: self._read, OP_WRITE: self._write, OP_GATHER: self._gather,
                         OP_SCATTER: self._scatter,
                         OP_ONESIDED_REGISTER: lambda *f: self._onesided().register(*f),
                         OP_ONESIDED_GATHER: lambda *f: self._onesided().gather(*f),
                         OP_ONESIDED_SCATTER: lambda *f: self._onesided().scatter(*f)}
        # a one-sided engine's side of the buffers (kvbench.tiers.remote_onesided), made when asked
        self.onesided: Any = None

    def run(self) -> None:
        header = self.torch.zeros(HEADER_LEN, dtype=self.torch.int64)
        while True:
            self._recv(header, "waiting for the next request")
            op, *fields = (int(x) for x in header)
            if op == OP_SHUTDOWN:
                self._ack()
                if self.onesided is not None:
                    self.onesided.close()
                self.buffers.clear()
                self.helper.shutdown()
                return
            handler = self.handlers.get(op)
            if handler is None:
                raise GroupFailure(f"rank {distributed.rank()}: unknown request {op} from rank {self.client}")
            handler(*fields)

    # -- messages
    def _recv(self, t: Any, what: str) -> None:
        wait_all(lambda: [self.dist.irecv(t, self.client)], self.client, what)

    def _send(self, t: Any, what: str) -> None:
        wait_all(lambda: [self.dist.isend(t, self.client)], self.client, what)

    def _ack(self) -> None:
        self._send(self.torch.ones(1, dtype=self.torch.int64), "an acknowledgement")

    def _reply(self, a: int, b: int = 0) -> None:
        self._send(self.torch.tensor([a, b], dtype=self.torch.int64), "a reply")

    def _buffer(self, buffer_id: int) -> Any:
        try:
            return self.buffers[buffer_id]
        except KeyError:
            raise GroupFailure(f"rank {distributed.rank()}: rank {self.client} asked for buffer "
                               f"{buffer_id}, which this rank does not hold") from None

    def _stage(self, nbytes: int) -> Any:
        if self.staging.numel() < nbytes:
            self.staging = self.torch.empty(nbytes, dtype=self.torch.uint8)
        return self.staging[:nbytes]

    # -- requests
    def _free_bytes(self, *_: int) -> None:
        from kvbench.tiers.dram import DramTier

        self._reply(DramTier(pinned=False).free_bytes())

    def _alloc(self, _buffer: int, nbytes: int, *_: int) -> None:
        from kvbench.tiers.dram import DramTier

        try:
            buf = DramTier(pinned=False).allocate(nbytes).tensor
        except Exception as exc:  # noqa: BLE001 - the refusal goes back to the client
            self._reply(1)
            text = str(exc).encode()[:MESSAGE_LEN]
            msg = self.torch.zeros(MESSAGE_LEN, dtype=self.torch.uint8)
            msg[: len(text)] = self.torch.tensor(list(text), dtype=self.torch.uint8)
            self._send(msg, "an allocation's refusal")
            return
        self.buffers[self.next_id] = buf
        self._reply(0, self.next_id)
        self.next_id += 1

    def _onesided(self) -> Any:
        if self.onesided is None:
            from kvbench.tiers.remote_onesided import OneSidedServing

            self.onesided = OneSidedServing(self)
        return self.onesided

    def _free(self, buffer_id: int, *_: int) -> None:
        if self.onesided is not None:
            self.onesided.forget(buffer_id)
        self.buffers.pop(buffer_id, None)

    def _read(self, buffer_id: int, offset: int, nbytes: int, message_bytes: int, *_: int) -> None:
        part = message_parts(self._buffer(buffer_id)[offset: offset + nbytes], message_bytes)
        wait_all(lambda: [self.dist.isend(p, self.client) for p in part], self.client, OP_NAMES[OP_READ])

    def _write(self, buffer_id: int, offset: int, nbytes: int, message_bytes: int, *_: int) -> None:
        part = message_parts(self._buffer(buffer_id)[offset: offset + nbytes], message_bytes)
        wait_all(lambda: [self.dist.irecv(p, self.client) for p in part], self.client, OP_NAMES[OP_WRITE])
        self._ack()

    def _rows(self, buffer_id: int, n: int, stride: int, width: int) -> tuple[Any, Any]:
        """The buffer's rows ``[rows, width]`` (a view) and the request's page ids."""
        buf = self._buffer(buffer_id)
        ids = self.torch.empty(n, dtype=self.torch.int64)
        self._recv(ids, "a page list")
        rows = buf[: (buf.numel() // stride) * stride].view(-1, stride)[:, :width]
        return rows, ids

    def _direct(self, op: Any, rows: Any, ids: Any, grouped: bool, what: str) -> None:
        """Every page straight from or into its row: one message at a time (per_page,
        ``grouped`` False) or posted as one batch_isend_irecv group."""
        dist = self.dist
        if not grouped:
            for i in ids.tolist():
                wait_all(lambda i=i: [op(rows[i], self.client)], self.client, what)
            return
        ops = [dist.P2POp(op, rows[i], self.client) for i in ids.tolist()]
        wait_all(lambda: dist.batch_isend_irecv(ops), self.client, what)

    def _gather(self, buffer_id: int, n: int, stride: int, width: int, per: int) -> None:
        rows, ids = self._rows(buffer_id, n, stride, width)
        dist, what = self.dist, OP_NAMES[OP_GATHER]
        if per <= 1:  # per_page, grouped (or pages as large as a chunk): no copy (wire_mode)
            self._direct(dist.isend, rows, ids, per == 1, what)
            return
        stage = self._stage(n * width).view(n, width)
        starts = list(range(0, n, per))
        ready = [threading.Event() for _ in starts]

        def gather_all() -> None:
            # the helper gathers every chunk in turn, as far ahead of the sends as it gets:
            # gathering fills whatever CPU time the socket copies leave (gloo writes an
            # isend's bytes in the calling thread; index_select releases the GIL). With a
            # lookahead of one chunk it idled while a send was written: 5-8 points of
            # the ceiling on 2 cores (README, Beyond one machine)
            try:
                for k, lo in enumerate(starts):
                    self.torch.index_select(rows, 0, ids[lo: lo + per], out=stage[lo: lo + per])
                    ready[k].set()
            finally:
                for e in ready:  # a failed gather wakes the sender, which raises its error
                    e.set()
        job = self.helper.submit(gather_all)

        def post() -> list[Any]:
            works = []
            for k, lo in enumerate(starts):
                ready[k].wait()
                if job.done():
                    job.result()
                works.append(dist.isend(stage[lo: lo + per], self.client))
            return works
        try:
            wait_all(post, self.client, what)
        finally:
            futures.wait([job])  # never leave the helper writing the staging buffer

    def _scatter(self, buffer_id: int, n: int, stride: int, width: int, per: int) -> None:
        rows, ids = self._rows(buffer_id, n, stride, width)
        dist, what = self.dist, OP_NAMES[OP_SCATTER]
        if per <= 1:  # per_page, grouped (or pages as large as a chunk): no copy (wire_mode)
            self._direct(dist.irecv, rows, ids, per == 1, what)
        else:
            stage = self._stage(n * width).view(n, width)
            chunks: list[tuple[int, Any]] = []

            def post() -> list[Any]:  # every chunk's receive posted; waited one by one below
                chunks.extend((lo, dist.irecv(stage[lo: lo + per], self.client)) for lo in range(0, n, per))
                return []
            wait_all(post, self.client, what)
            order = ids.tolist()

            def scatter(lo: int) -> None:
                # row by row: index_copy_ of uint8 rows runs at a quarter of memcpy's rate
                for j, i in enumerate(order[lo: lo + per], start=lo):
                    rows[i].copy_(stage[j])
            done = None
            for lo, work in chunks:  # the helper scatters a chunk while the next one arrives
                wait_all(lambda work=work: [work], self.client, what)
                if done is not None:
                    done.result()
                done = self.helper.submit(scatter, lo)
            done.result()
        self._ack()
