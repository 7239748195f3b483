"""Runs on several ranks: the local launcher behind ``kvbench run --ranks N``, and what
every rank of a launched run does (under torchrun or that launcher).

``spawn_local`` starts N copies of the same ``kvbench run`` command on this machine
with the variables torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT), the rendezvous store hosted
here as torchrun's agent hosts it (torch.distributed.TCPStore on a free port,
``TORCHELASTIC_USE_AGENT_STORE=True``). It waits for them; once one has ended, the
others get the group's timeout plus ``GRACE_S`` to end on their own, each with its own
message, before they are stopped. (torchrun's elastic agent stops the surviving ranks
the moment one fails, before they can say what they saw, and takes seconds longer to
start; across machines torchrun is the launcher.)

``run_ranks`` is every rank's part: join the group (bounded by the timeout), gather
every rank's identity; rank 0 runs the benchmarks and writes the one result, the
other ranks hold the remote tier's pages (kvbench.tiers.remote_server) until rank 0
tells them to stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from kvbench import distributed
from kvbench.errors import KvbenchError

#: seconds a rank may take beyond the group's timeout to end after another ended
GRACE_S = 10.0
#: most ranks ``--ranks`` starts on one machine (across machines: torchrun)
MAX_LOCAL_RANKS = 64


def check_launch(ranks: int | None, benches: list[Any], fleet: bool = False, dry_run: bool = False) -> None:
    """One-line errors before anything starts: a launch runs only benchmarks that use
    the group (``Benchmark.distributed``), with as many ranks as the launcher started;
    a fleet launch (``--fleet``) only the local ones, on every rank."""
    many = (ranks or 1) > 1 or (distributed.launched() and os.environ.get("WORLD_SIZE") != "1")
    if ranks is not None and ranks > MAX_LOCAL_RANKS:
        raise KvbenchError(f"--ranks {ranks}: at most {MAX_LOCAL_RANKS} ranks on one machine "
                           "(across machines launch with torchrun)")
    if distributed.launched() and ranks is not None and str(ranks) != os.environ.get("WORLD_SIZE"):
        raise KvbenchError(f"--ranks {ranks} under a launcher of $WORLD_SIZE={os.environ.get('WORLD_SIZE')} "
                           "ranks: leave --ranks out under torchrun")
    if fleet:
        _check_fleet(many, benches, dry_run)
        return
    local = [b.key for b in benches if not (b.distributed or b.also_distributed)]
    if many and local:
        keys = [b.key for b in benches if b.distributed or b.also_distributed]
        raise KvbenchError(f"a multi-rank run runs only the benchmarks that use the group "
                           f"({', '.join(keys) or 'none selected'}): {', '.join(local)} would leave the "
                           "other ranks idle; select --bench remote (or roundtrip), or add --fleet to run the local "
                           "benchmarks on every rank")


def _check_fleet(many: bool, benches: list[Any], dry_run: bool) -> None:
    if not many:
        raise KvbenchError("--fleet runs the local benchmarks on every rank of a launch: give --ranks N "
                           "(N >= 2) or launch with torchrun")
    if dry_run:
        raise KvbenchError("--fleet --dry-run: a fleet plans what each rank plans; leave out --ranks and "
                           "--fleet to see the plan")
    grouped = [b.key for b in benches if b.distributed]
    if grouped:
        raise KvbenchError(f"--fleet runs the local benchmarks on every rank: {', '.join(grouped)} needs the "
                           "other ranks to serve it (run it without --fleet)")


def rendezvous_store(timeout_s: float) -> Any:
    """A torch.distributed TCPStore on a free port of 127.0.0.1, hosted by this process
    (ranks join it with ``TORCHELASTIC_USE_AGENT_STORE=True``; its ``port`` is theirs)."""
    import datetime as dt

    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False,
                    timeout=dt.timedelta(seconds=timeout_s))


def _rank_env(rank: int, ranks: int, port: int, argv: list[str]) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
               LOCAL_WORLD_SIZE=str(ranks), GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               TORCHELASTIC_USE_AGENT_STORE="True", KVBENCH_LAUNCHER=f"kvbench run --ranks {ranks}",
               KVBENCH_LAUNCH_ARGV=json.dumps(argv))
    # as torchrun does for several workers on one machine: no oversubscribed OpenMP pools
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the launcher: its ranks are stopped as for Ctrl-C; exit 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


def _stop(procs: list[subprocess.Popen], sig: int | None = signal.SIGTERM, wait_s: float = 5.0) -> list[int]:
    """Signal the ranks still running (``sig``; None: the signal reached them already),
    then kill what is left after ``wait_s``; returns their ranks."""
    stopped = [r for r, p in enumerate(procs) if p.poll() is None]
    for r in stopped if sig is not None else ():
        procs[r].send_signal(sig)
    deadline = time.monotonic() + wait_s
    for r in stopped:
        try:
            procs[r].wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[r].kill()
            procs[r].wait()
    return stopped


def _supervise(procs: list[subprocess.Popen], timeout_s: float, store: Any = None) -> list[int]:
    """Wait for every rank; once one has ended (a fleet run: once rank 0 has), stop the
    others left after the timeout plus GRACE_S. Returns the ranks it had to stop.
    ``store``: a fleet run's rendezvous store, where a rank that failed is reported to
    rank 0 at once (``_fleet_rank_failed``) while the other ranks go on with their own
    benchmarks."""
    first_end, told = None, set()
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return []
        for r, c in enumerate(codes):
            if store is not None and c and r and r not in told:
                told.add(r)
                _fleet_rank_failed(store, r, procs[r])
        ended = codes[0] is not None or (store is None and any(c for c in codes if c))
        if first_end is None and ended:
            first_end = time.monotonic()
        if first_end is not None and time.monotonic() - first_end > timeout_s + GRACE_S:
            return _stop(procs)
        time.sleep(0.05)


def _fleet_rank_failed(store: Any, rank: int, proc: subprocess.Popen) -> None:
    """A fleet rank ended badly: tell rank 0 through the store (unless the rank handed
    its result over first), and remove what a killed rank left in the temporary folder."""
    import tempfile

    from kvbench.fleet import report_dead
    from kvbench.owned_dirs import remove_stale_dirs

    try:
        report_dead(store, rank, f"rank {rank} (pid {proc.pid}) {_ended(proc.returncode)}")
    except Exception:  # noqa: BLE001 - rank 0 then reports it as not finishing in time
        pass
    if proc.returncode < 0:
        remove_stale_dirs(tempfile.gettempdir())


def spawn_local(argv: list[str], ranks: int, timeout_s: float) -> int:
    """``kvbench <argv>`` on ``ranks`` local ranks. Exit status: rank 0's when it
    failed, else 1 when any rank failed, else 0; one line per rank that failed."""
    try:
        store = rendezvous_store(timeout_s)
    except Exception as exc:  # noqa: BLE001 - the store's errors vary by version
        raise KvbenchError(f"cannot host a rendezvous store on 127.0.0.1: {distributed.short_error(exc)}") from None
    cmd = [sys.executable, "-m", "kvbench", *argv]
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for r in range(ranks):
            try:
                procs.append(subprocess.Popen(cmd, env=_rank_env(r, ranks, store.port, argv)))
            except OSError as exc:
                _stop(procs)
                raise KvbenchError(f"cannot start rank {r} ({sys.executable}): {exc.strerror}") from None
        stopped = _supervise(procs, timeout_s, store if "--fleet" in argv else None)
    except KeyboardInterrupt as exc:  # Ctrl-C reached the ranks too (one process group)
        term = isinstance(exc, _Terminated)
        _stop(procs, signal.SIGTERM if term else None, wait_s=GRACE_S)
        print(f"kvbench: interrupted{' (SIGTERM)' if term else ''}; {len(procs)} ranks stopped", file=sys.stderr)
        return 143 if term else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        del store
    for r, p in enumerate(procs):
        if r in stopped:
            print(f"kvbench: rank {r} (pid {p.pid}) was still running {timeout_s + GRACE_S:g} s after "
                  f"another rank ended: stopped", file=sys.stderr)
        elif p.returncode:
            print(f"kvbench: rank {r} (pid {p.pid}) {_ended(p.returncode)}", file=sys.stderr)
    codes = [p.returncode for p in procs]
    if codes[0]:
        return codes[0] if codes[0] > 0 else 1
    return 1 if any(codes) else 0


def launch_argv() -> list[str] | None:
    """The command line ``kvbench run --ranks N`` was given (for the result's command)."""
    text = os.environ.get("KVBENCH_LAUNCH_ARGV")
    return json.loads(text) if text else None


def run_ranks(timeout_s: float, run_rank0: Callable[[dict[str, Any]], int]) -> int:
    """This rank's part of a launched run. Rank 0: ``run_rank0(block)``, ``block`` the
    group's description for the result (kvbench.distributed.link_block); then tell
    the other ranks to stop. Other ranks: serve the remote tier's pages until told to."""
    from kvbench.tiers.remote import stop_servers
    from kvbench.tiers.remote_server import serve

    distributed.init_group(timeout_s)
    try:
        block = distributed.link_block(distributed.gather_identities())
        if distributed.rank() != 0:
            serve(client=0)
            return 0
        code = 1
        try:
            code = run_rank0(block)
        finally:
            # interrupted (130 SIGINT, 143 SIGTERM): the launcher signalled every rank
            problems = [] if code in (130, 143) else stop_servers()
            for line in problems:
                print(f"kvbench: {line}", file=sys.stderr)
        return code or (1 if problems else 0)
    finally:
        distributed.close_group()
