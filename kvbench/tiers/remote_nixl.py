"""NIXL as a one-sided engine of the remote tier (``--set remote.transport=nixl``; the
tier itself: kvbench.tiers.remote_onesided), over NIXL's UCX backend (pip: nixl, module
nixl._api).

The rank that starts transfers runs its agent without a progress thread (polling a
request progresses it); a peer runs one (nothing else would progress its side while it
waits for requests). A peer sends its agent metadata for each registration: with its
connection details the first time, then the new regions only. Descriptor lists are
prepared (``prep_xfer_dlist``) and requests made from them by index
(``make_prepped_xfer``, never merging descriptors). A request is polled until NIXL
reports it done, within the group's timeout.

Exit: NIXL's pip wheels bundle their own libnl-route, whose destructor crashes
(SIGSEGV in rtnl_tc_unregister, at process exit) in a process that also loaded torch;
``hard_exit`` asks remote_onesided.exit_process to end such a process through os._exit
once Python's own exit handlers have run and the streams are flushed."""

from __future__ import annotations

import os
import time
from typing import Any

from kvbench import distributed
from kvbench.errors import KvbenchError, TierUnavailable

#: the NIXL backend used (the one whose wheels carry UCX; it moves host memory anywhere)
BACKEND = "UCX"


def version() -> str:
    """The installed NIXL distribution's version ('' when unknown)."""
    from importlib import metadata

    for dist_name in ("nixl", "nixl-cu13", "nixl-cu12"):
        try:
            return metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return ""


class Engine:
    """This process's NIXL agent and what the remote tier asks of it."""

    name, label, hard_exit = "nixl", f"NIXL {BACKEND}", True
    note = ("NIXL over UCX; on one host UCX may move the bytes through shared memory (cma, posix) rather "
            "than TCP (UCX_TLS=tcp,self measures its TCP path)")

    def __init__(self, serving: bool) -> None:
        try:
            import logging

            from nixl._api import nixl_agent, nixl_agent_config

            if "NIXL_LOG_LEVEL" not in os.environ:  # its INFO lines go to stdout
                logging.getLogger("nixl").setLevel(logging.WARNING)
            self.agent = nixl_agent(f"kvbench-rank{distributed.rank()}-pid{os.getpid()}",
                                    nixl_agent_config(enable_prog_thread=serving, backends=[BACKEND]))
        except Exception as exc:  # noqa: BLE001 - NIXL raises its own errors and RuntimeErrors
            why, ucx = distributed.short_error(exc), self.describe()["ucx_env"]
            raise TierUnavailable(f"NIXL could not start an agent with its {BACKEND} backend: {why} "
                                  f"(UCX settings: {ucx})") from None
        if BACKEND not in self.agent.backends:
            raise TierUnavailable(f"NIXL started without its {BACKEND} backend (plugins here: "
                                  f"{', '.join(self.agent.plugin_list) or 'none'})")

    def describe(self) -> dict[str, Any]:
        """NIXL's version, its backend, the UCX settings this process was given (UCX_*;
        none: UCX picks its transports itself)."""
        ucx = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UCX_")}
        return {"version": version(), "backend": BACKEND, "ucx_env": ucx or "none (UCX's own choice of transports)"}

    # -- memory
    def register(self, tensors: list[Any]) -> Any:
        return self.agent.register_memory(tensors)

    def deregister(self, reg: Any) -> None:
        self.agent.deregister_memory(reg)

    def peer_info(self, reg: Any, first: bool) -> bytes:
        """Agent metadata of ``reg``'s regions; ``first``: with the connection details."""
        return self.agent.get_partial_agent_metadata(reg, first, [BACKEND])

    def load_peer(self, info: bytes) -> Any:
        return self.agent.add_remote_agent(info)

    def probe(self, peer: Any, addr: int) -> None:
        """Nothing to do: NIXL connects on the first request, which is bounded."""

    # -- descriptor lists and requests
    def prep(self, peer: Any, descs: list[tuple[int, int]]) -> Any:
        side = "NIXL_INIT_AGENT" if peer is None else peer
        return self.agent.prep_xfer_dlist(side, [(a, n, 0) for a, n in descs], "DRAM")

    def release(self, prepared: Any) -> None:
        self.agent.release_dlist_handle(prepared)

    def move(self, op: str, local: Any, local_idx: list[int], remote: Any, remote_idx: list[int]) -> int:
        """One request, polled until done within the group's timeout; its handle released.
        Returns 1 (the request)."""
        try:
            handle = self.agent.make_prepped_xfer(op, local, local_idx, remote, remote_idx, skip_desc_merge=True)
        except Exception as exc:  # noqa: BLE001 - NIXL's own errors
            raise KvbenchError(f"NIXL could not prepare the request: {distributed.short_error(exc)}") from None
        deadline = time.monotonic() + distributed.timeout_s()
        failed: BaseException | None = None
        try:
            state = self.agent.transfer(handle)
            while state != "DONE":
                if state == "ERR":
                    raise KvbenchError("NIXL reported the transfer failed")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not done after {distributed.timeout_s():g} s")
                state = self.agent.check_xfer_state(handle)
        except Exception as exc:  # noqa: BLE001 - NIXL's errors and the two above
            failed = exc
        try:
            self.agent.release_xfer_handle(handle)
        except Exception as exc:  # noqa: BLE001 - NIXL raises when a request in flight cannot be cancelled
            failed = failed or exc
        if failed is not None:
            raise failed
        return 1
