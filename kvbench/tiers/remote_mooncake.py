"""Mooncake's transfer engine as a one-sided engine of the remote tier (``--set
remote.transport=mooncake``; the tier itself: kvbench.tiers.remote_onesided). Module
mooncake.engine, from pip's mooncake-transfer-engine (it links CUDA's libcudart and
libcuda: it loads only where an NVIDIA driver is installed) or
mooncake-transfer-engine-non-cuda (host memory only, loads anywhere).

Every rank starts an engine with P2P handshakes (no metadata server): its session is
``address:rpc_port``, the address being the one this host routes to the group's master
by, so that a peer on another host can reach it. The protocol is TCP unless
``KVBENCH_MOONCAKE_PROTOCOL`` names another (``rdma`` beside RDMA NICs). A request is
batch transfers of its descriptors (``batch_transfer_sync_read`` / ``_write``; at most
BATCH_LIMIT each, one after another), each bounded by Mooncake's own transfer timeout, which kvbench sets to the group's
(``MC_TRANSFER_TIMEOUT``, at least 5 s, Mooncake's floor; a value set beforehand is
kept and recorded)."""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable

#: the PyPI distributions that install mooncake.engine
DISTRIBUTIONS = ("mooncake-transfer-engine", "mooncake-transfer-engine-non-cuda",
                 "mooncake-transfer-engine-cuda13")


def version() -> str:
    """The installed distributions of mooncake.engine and their versions, ', '-joined
    (more than one: they install the same module, the last installed wins; '' when
    none is known)."""
    from importlib import metadata

    found = []
    for dist_name in DISTRIBUTIONS:
        try:
            found.append(f"{dist_name} {metadata.version(dist_name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def local_address() -> tuple[str, str]:
    """This rank's address for its Mooncake session, and how it was chosen:
    ``KVBENCH_MOONCAKE_HOST`` when set; else the IPv4 address of the interface gloo was
    told to use (``GLOO_SOCKET_IFNAME``); else the one this host routes to the group's
    master (MASTER_ADDR) by, which a peer on another host can reach. TierUnavailable
    when none can be found (never a silent loopback address for a group across hosts)."""
    if os.environ.get("KVBENCH_MOONCAKE_HOST"):
        return os.environ["KVBENCH_MOONCAKE_HOST"], "KVBENCH_MOONCAKE_HOST"
    ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if ifname:
        import psutil

        found = [a.address for a in psutil.net_if_addrs().get(ifname, []) if a.family == socket.AF_INET]
        if not found:
            raise TierUnavailable(f"Mooncake: GLOO_SOCKET_IFNAME={ifname} has no IPv4 address here "
                                  "(set KVBENCH_MOONCAKE_HOST to the address peers reach this rank at)")
        return found[0], f"GLOO_SOCKET_IFNAME={ifname}"
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master, int(os.environ.get("MASTER_PORT", "29500"))))  # no packet is sent
            return s.getsockname()[0], f"the route to MASTER_ADDR={master}"
    except (OSError, ValueError) as exc:
        raise TierUnavailable(f"Mooncake: no IPv4 route to MASTER_ADDR={master} ({exc}); set "
                              "KVBENCH_MOONCAKE_HOST to the address peers reach this rank at") from None


#: the most descriptors one batch transfer carries: Mooncake's TCP transport refuses a
#: larger batch once its lane queue is full ("TCP lane queue-full rejection", the
#: transfer returning -1: 3,640 descriptors were refused on the CI VM, 1,024 taken), so
#: a request of more crosses as consecutive batches of this many
BATCH_LIMIT = 1024


class Engine:
    """This process's Mooncake transfer engine and what the remote tier asks of it."""

    name, label, hard_exit = "mooncake", "Mooncake transfer engine", False
    note = (f"Mooncake's transfer engine, P2P handshake, batch transfers of at most {BATCH_LIMIT:,} descriptors "
            "(a request of more: several, one after another)")

    def __init__(self, serving: bool) -> None:
        self.timeout_from = "MC_TRANSFER_TIMEOUT, set beforehand"
        if "MC_TRANSFER_TIMEOUT" not in os.environ:
            os.environ["MC_TRANSFER_TIMEOUT"] = str(max(5, math.ceil(distributed.timeout_s())))
            self.timeout_from = "kvbench, from --dist-timeout"
        try:
            self.timeout_s = max(5, int(os.environ["MC_TRANSFER_TIMEOUT"]))  # as Mooncake reads it
        except ValueError:
            raise TierUnavailable(f"MC_TRANSFER_TIMEOUT={os.environ['MC_TRANSFER_TIMEOUT']!r} is not a whole "
                                  "number of seconds") from None
        self.protocol = os.environ.get("KVBENCH_MOONCAKE_PROTOCOL", "tcp")
        self.host, self.host_from = local_address()
        try:
            from mooncake.engine import TransferEngine

            self.te = TransferEngine()
            rc = self.te.initialize(self.host, "P2PHANDSHAKE", self.protocol, "")
        except Exception as exc:  # noqa: BLE001 - an ImportError (libcuda.so.1) or the engine's own
            why = distributed.short_error(exc)
            raise TierUnavailable(f"Mooncake's transfer engine could not start: {why}") from None
        if rc != 0:
            raise TierUnavailable(f"Mooncake's transfer engine could not start on {self.host} over "
                                  f"{self.protocol} (initialize returned {rc})")
        self.session = f"{self.host}:{self.te.get_rpc_port()}"

    def describe(self) -> dict[str, Any]:
        mc = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MC_")}
        return {"version": version(), "protocol": self.protocol, "session": self.session,
                "session_address_from": self.host_from, "transfer_timeout_s": self.timeout_s,
                "transfer_timeout_from": self.timeout_from, "mc_env": mc, "batch_limit": BATCH_LIMIT}

    # -- memory
    def register(self, tensors: list[Any]) -> list[int]:
        done: list[int] = []
        for t in tensors:
            rc = self.te.register_memory(t.data_ptr(), t.numel())
            if rc != 0:
                self.deregister(done)
                raise KvbenchError(f"Mooncake could not register {t.numel():,} B (register_memory returned {rc})")
            done.append(t.data_ptr())
        return done

    def deregister(self, reg: list[int]) -> None:
        for ptr in reg:
            self.te.unregister_memory(ptr)

    def peer_info(self, reg: Any, first: bool) -> bytes:
        """This engine's session (the same for every registration)."""
        return self.session.encode()

    def load_peer(self, info: bytes) -> str:
        return info.decode()

    def probe(self, peer: str, addr: int) -> None:
        """Read one byte of the peer's buffer (untimed): the handshake with its session
        happens here, so an unreachable peer fails the case at once (TierUnavailable),
        before any sample."""
        scratch = self.te.allocate_managed_buffer(1)
        try:
            rc = self.te.transfer_sync_read(peer, scratch, addr, 1)
        finally:
            self.te.free_managed_buffer(scratch, 1)
        if rc != 0:
            raise TierUnavailable(f"Mooncake could not reach the peer's session {peer} (a one-byte read returned {rc})")

    # -- descriptor lists and requests
    def prep(self, peer: Any, descs: list[tuple[int, int]]) -> tuple[Any, list[tuple[int, int]]]:
        return peer, list(descs)

    def release(self, prepared: Any) -> None:
        pass

    def move(self, op: str, local: Any, local_idx: list[int], remote: Any, remote_idx: list[int]) -> int:
        """Batch transfers of at most BATCH_LIMIT descriptors, one after another, each
        waited for (each bounded by MC_TRANSFER_TIMEOUT, the request by the group's
        timeout). Returns the number of batches. TimeoutError when a batch failed after
        Mooncake's timeout (it returns -1 for a timeout and for an error alike) or the
        request ran past the group's."""
        (_, mine), (peer, theirs) = local, remote
        here = [mine[i] for i in local_idx]
        there = [theirs[j][0] for j in remote_idx]
        call = self.te.batch_transfer_sync_read if op == "READ" else self.te.batch_transfer_sync_write
        start = time.monotonic()
        deadline = start + distributed.timeout_s()
        batches = 0
        for lo in range(0, len(here), BATCH_LIMIT):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Mooncake's {op} was not done after {distributed.timeout_s():g} s "
                                   f"({batches} of {-(-len(here) // BATCH_LIMIT)} batches)")
            part = here[lo: lo + BATCH_LIMIT]
            began = time.monotonic()
            rc = call(peer, [a for a, _ in part], there[lo: lo + BATCH_LIMIT], [n for _, n in part])
            batches += 1
            if rc == 0:
                continue
            what = (f"Mooncake's {op} of descriptors {lo:,}..{lo + len(part):,} of {len(here):,} returned {rc} "
                    f"(its log on stderr says why)")
            if time.monotonic() - began >= self.timeout_s:
                raise TimeoutError(f"{what} after its {self.timeout_s} s transfer timeout")
            raise KvbenchError(what)
        return batches
