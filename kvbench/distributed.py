"""torch.distributed for kvbench: one process group per run, joined from the variables
torchrun sets (``kvbench run --ranks N`` sets the same ones: kvbench.launch), every wait
bounded by one timeout, each rank's identity, and what links the ranks.

Environment (torchrun's worker contract, torch.distributed's ``env://`` rendezvous):
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``; with ``TORCHELASTIC_USE_AGENT_STORE=True`` every rank is a client of a
store its launcher hosts (torchrun's agent, or kvbench.launch).

Backend: gloo, whose point-to-point ops move host (CPU) tensors on any machine. NCCL for
CUDA tensors is not used yet. The group's timeout bounds gloo's waits (a dead peer ends
a wait at once with a connection error; a hung one after the timeout). Once a wait
fails the group is marked failed (``failure()``) and every later remote operation of
the run is refused with that reason instead of waiting again."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError

#: seconds any collective or point-to-point wait may take (``kvbench run --dist-timeout``)
DIST_TIMEOUT_S = 60.0
#: the one backend used: gloo (host tensors)
BACKEND = "gloo"
#: what torchrun sets for every worker; all of them mean "this process is one rank"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: why the remote tier cannot run without a group
NO_GROUP = ("the remote tier needs a torch.distributed process group of >= 2 ranks: launch with "
            "`kvbench run --bench remote --ranks 2` or torchrun")

_state: dict[str, Any] = {"timeout_s": DIST_TIMEOUT_S, "failure": "", "failed_ranks": set(), "no_peers": ""}


def launched() -> bool:
    """Whether this process was started as one rank of a group (torchrun's variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise KvbenchError(f"${name}={text!r} is not an integer (set by torchrun or kvbench run --ranks)") from None


def short_error(exc: BaseException) -> str:
    """One line of a torch.distributed / gloo error: without gloo's source location
    ('[.../pair.cc:537] ') and its advice to read the other rank's log."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(" This is typically caused")[0].strip()


def init_group(timeout_s: float = DIST_TIMEOUT_S) -> None:
    """Join the process group torchrun's variables describe (gloo, ``env://``), every
    later wait bounded by ``timeout_s``. A one-line KvbenchError when it cannot."""
    import torch.distributed as dist

    if not dist.is_available():
        raise KvbenchError("this torch is built without torch.distributed")
    missing = [v for v in LAUNCH_VARS if v not in os.environ]
    if missing:
        raise KvbenchError(f"a rank needs ${', $'.join(missing)} (set by torchrun or kvbench run --ranks)")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank < world:
        raise KvbenchError(f"$RANK={rank} is outside a world of $WORLD_SIZE={world}")
    if not timeout_s > 0:
        raise KvbenchError(f"--dist-timeout {timeout_s:g}: must be a positive number of seconds")
    _state.update(timeout_s=float(timeout_s), failure="", failed_ranks=set(), no_peers="")
    if dist.is_initialized():
        return
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(BACKEND, init_method="env://", rank=rank, world_size=world,
                                timeout=dt.timedelta(seconds=timeout_s))
    except Exception as exc:  # noqa: BLE001 - store and rendezvous errors vary by version
        raise KvbenchError(f"rank {rank}: could not join the {world}-rank group at {where} within "
                           f"{timeout_s:g} s: {short_error(exc)}") from None


def close_group() -> None:
    """Leave the process group (a no-op when none was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer that died first leaves nothing to tidy
            pass


def group_status() -> tuple[bool, str]:
    """(True, 'rank R of W, gloo') when a group of >= 2 ranks is usable, else (False, why)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return False, "torch is not installed"
    if not dist.is_available():
        return False, "this torch is built without torch.distributed"
    if not dist.is_initialized():
        return False, NO_GROUP
    world = dist.get_world_size()
    if world < 2:
        return False, f"{NO_GROUP} (this group has {world} rank)"
    if _state["failure"]:
        return False, f"the process group failed earlier in this run: {_state['failure']}"
    if _state["no_peers"]:
        return False, _state["no_peers"]
    return True, f"rank {dist.get_rank()} of {world}, {dist.get_backend()}"


def no_peers(why: str) -> None:
    """Say that no rank of this group serves pages (a fleet run: every rank runs its own
    benchmarks); the remote tier is then unavailable, with ``why``."""
    _state["no_peers"] = why


def timeout_s() -> float:
    """The bound on every wait of this run's group, seconds."""
    return _state["timeout_s"]


def timeout() -> dt.timedelta:
    return dt.timedelta(seconds=_state["timeout_s"])


def mark_failed(why: str, peer: int | None = None) -> None:
    """Record that a wait on rank ``peer`` failed: later remote operations are refused
    with ``why``."""
    if not _state["failure"]:
        _state["failure"] = why
    if peer is not None:
        _state["failed_ranks"].add(peer)


def failed_ranks() -> set[int]:
    """The ranks a wait failed on in this run."""
    return set(_state["failed_ranks"])


def failure() -> str:
    """Why the group failed earlier in this run ('' while it has not)."""
    return _state["failure"]


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ------------------------------------------------------------------ identities and the link
def identity() -> dict[str, Any]:
    """This rank: rank, local rank, host, pid, backend, CUDA device (None without one)."""
    from kvbench.tiers.hbm import cuda_status

    ok, gpu = cuda_status()
    return {"rank": rank(), "world_size": world_size(), "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "hostname": socket.gethostname(), "pid": os.getpid(), "backend": BACKEND,
            "gpu": gpu if ok else None, "master": f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"}


def gather_identities() -> list[dict[str, Any]]:
    """Every rank's ``identity()``, in rank order (a collective: every rank calls it)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, identity())
    except Exception as exc:  # noqa: BLE001 - gloo's errors are RuntimeErrors of many kinds
        mark_failed(short_error(exc))
        raise KvbenchError(f"rank {rank()}: gathering every rank's identity failed within "
                           f"{timeout_s():g} s: {short_error(exc)}") from None
    return out


def nic_speeds(root: str | Path = "/sys/class/net") -> list[dict[str, Any]]:
    """Network interfaces other than loopback whose link speed sysfs reports:
    ``{iface, speed_mbps, gbps, virtual}`` (GB/s = Mb/s / 8000; a down link's speed is
    unreadable or -1 and is left out; ``virtual``: no device behind it, as a veth pair,
    a bridge or a tunnel, whose speed is a nominal figure that bounds nothing)."""
    out = []
    base = Path(root)
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name == "lo":
            continue
        try:
            speed = int((d / "speed").read_text().strip())
        except (OSError, ValueError):
            continue
        if speed > 0:
            out.append({"iface": d.name, "speed_mbps": speed, "gbps": speed / 8000,
                        "virtual": not (d / "device").exists()})
    return out


def link_nic(link: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The NIC a result's figures across hosts are held to, from its link block: the
    interface gloo was told to use (``GLOO_SOCKET_IFNAME``) when it is listed, else the
    fastest one here; (None, why) when there is none, or it is virtual (its speed is
    nominal: it bounds nothing)."""
    nics = link.get("nics") or []
    named = [n for n in nics if n["iface"] == link.get("socket_ifname")]
    pick = named[0] if named else max(nics, key=lambda n: n["speed_mbps"], default=None)
    if pick is None:
        return None, "no NIC speed is readable here (/sys/class/net/*/speed)"
    if pick.get("virtual"):
        return None, (f"the link's interface {pick['iface']} is virtual (no device behind it): its "
                      f"{pick['speed_mbps']:,} Mb/s is nominal and bounds nothing, so no % of a NIC is given")
    return pick, ""


def link_block(identities: list[dict[str, Any]]) -> dict[str, Any]:
    """What a result records about the group: every rank's identity, whether all ranks
    share one host (loopback: the figures measure the gloo/TCP stack and memory copies,
    not a NIC), this host's NICs and the one gloo was told to use, the backend, timeout
    and launcher."""
    hosts = sorted({i["hostname"] for i in identities})
    loopback = len(hosts) == 1
    block = {"backend": BACKEND, "world_size": len(identities), "timeout_s": timeout_s(),
             "launcher": launcher(), "loopback": loopback, "hosts": hosts, "link": "",
             "nics": nic_speeds(), "socket_ifname": os.environ.get("GLOO_SOCKET_IFNAME"), "ranks": identities}
    if loopback:
        block["link"] = f"loopback: all {len(identities)} ranks on host {hosts[0]} (no NIC in the path)"
        return block
    nic, why = link_nic(block)
    named = "gloo's interface (GLOO_SOCKET_IFNAME)" if block["socket_ifname"] and nic and \
        nic["iface"] == block["socket_ifname"] else "fastest NIC here"
    block["link"] = (f"network: {len(hosts)} hosts; {named} {nic['iface']} at {nic['speed_mbps']:,} Mb/s" if nic
                     else f"network: {len(hosts)} hosts; {why}")
    return block


def launcher() -> str:
    """Who started the ranks: kvbench run --ranks, torchrun, or another launcher."""
    if os.environ.get("KVBENCH_LAUNCHER"):
        return os.environ["KVBENCH_LAUNCHER"]
    return "torchrun" if os.environ.get("TORCHELASTIC_RUN_ID") else "another launcher (torchrun's variables)"
