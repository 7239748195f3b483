"""Measured mode's remote tier: the GB/s of pages fetched from another rank's host memory
(``remote`` results: ``kvbench run --bench remote --ranks 2`` or torchrun), the figure a
pooled-DRAM placement (reused KV held in DRAM on other hosts) loads at. Pure Python.

Which case: a ``paged`` case (not the page-size sweep) with the batching a pooled store
would move a prefix with over its transport (``PREFERRED``: coalesced over
torch.distributed, one request of page descriptors over NIXL), else any batching; the
best GB/s per direction (``remote->dram``, ``dram->remote``). A case measured with every rank on one host
(``config.loopback``) measured the gloo/TCP stack and memory copies on shared cores,
not a NIC: its source says so, and so does a note of the sizing."""

from __future__ import annotations

from typing import Any

from kvbench.sizing.measured_common import Doc, case_ref, metric, ok_cases

#: per transport, the batching a pooled store would use: torch.distributed gathers on the
#: peer and sends large messages; NIXL and Mooncake post one request of page descriptors
#: (as vLLM's NIXL connector and Mooncake's batch transfers do)
PREFERRED = {"torch": "coalesced", "nixl": "grouped", "mooncake": "grouped"}
#: what a loopback figure is, said wherever one is used
LOOPBACK = "loopback: all ranks on one host, not a NIC figure"


def remote_bandwidths(docs: list[Doc]) -> dict[str, tuple[float, str]]:
    """Best paged ``remote`` GB/s per direction: {"remote->dram": (gbps, source)}, coalesced
    cases first; the source names the file and case, the batching and the link."""
    by_dir: dict[str, list[tuple[bool, float, str, dict[str, Any]]]] = {}
    for path, c in ok_cases(docs, "remote"):
        cfg = c.get("config", {})
        gbps, direction = metric(c, "gbps"), cfg.get("direction")
        if cfg.get("kind", "paged") != "paged" or gbps is None or not isinstance(direction, str):
            continue
        preferred = PREFERRED.get(cfg.get("transport", "torch"), "coalesced")
        by_dir.setdefault(direction, []).append((cfg.get("batching") == preferred, gbps, case_ref(path, c), cfg))
    out = {}
    for direction, rows in by_dir.items():
        _, gbps, ref, cfg = max(rows, key=lambda r: (r[0], r[1]))
        link = LOOPBACK if cfg.get("loopback") else (cfg.get("link") or "link not recorded")
        out[direction] = (gbps, f"{ref} (best paged, {cfg.get('transport', 'torch')} {cfg.get('batching')}; {link})")
    return out


def remote_notes(bw: dict[str, tuple[float, str]]) -> list[str]:
    """The sizing's notes on the remote figures it used: a loopback one is not a NIC's."""
    return [f"{d} {g:.3g} GB/s was measured over {LOOPBACK}: it prices the software path "
            "(the transport's stack, copies on shared cores); a pooled-DRAM hit over a real NIC is bounded by that "
            "link instead (rerun across hosts: README, Beyond one machine)"
            for d, (g, src) in bw.items() if d == "remote->dram" and LOOPBACK in src]
