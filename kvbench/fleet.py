"""Fleet runs: the same launch (``kvbench run --ranks N --fleet ...``, or torchrun with
``--fleet``) runs the ordinary local benchmarks on every rank at once, each rank on its
own GPU (``LOCAL_RANK``) or host, and rank 0 writes one fleet result: every rank's cases
and environment, and per case the spread of its headline figure over the ranks.

Every rank: join the group, gather identities (bounded by the group's timeout), run the
selected benchmarks into a private temporary file (removed after), then wait for the
others through the rendezvous store, bounded by ``fleet_wait_s`` (ranks run the same
suite, so one that takes more than twice as long as this one, plus the timeout, is
reported as not finishing; a gloo wait could not outlast the group's timeout). Each rank
hands its result over through the same store (``payload_key``) before it says it is done,
so rank 0 writes what the ranks that finished sent even when another never finishes. A
rank whose run failed sends its one-line reason instead; one that died (``kvbench run
--ranks N`` sees it and says so in the store: ``report_dead``) or did not finish in time
is listed with why; rank 0 writes the result with what it got and exits 1. No torch
import at module level.

The fleet result is an ordinary result document (kvbench.results.validate): ``run``
and ``method`` are rank 0's (a new run id), ``environment`` rank 0's with the group's
``distributed`` block, each case renamed ``rank<r>/<name>`` with ``config.rank`` and
``config.host``; ``fleet`` holds ``ranks`` ([{rank, hostname, gpu, status, error, run,
environment}]), ``shared_hosts`` and ``spread`` ([{bench, name, metric, unit, values:
{rank: value}, min, median, max, spread_pct}], spread_pct = (max - min) / median x 100).
``kvbench compare FLEET.json`` shows the ranks side by side (kvbench.report.fleet)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from kvbench import distributed
from kvbench.errors import KvbenchError

#: the least a finished rank waits for the others, seconds (beyond the group's timeout)
MIN_WAIT_S = 60.0
#: how often a finished rank looks whether the others have finished, seconds
POLL_S = 0.2


class FleetFailure(KvbenchError):
    """A rank did not finish or could not hand its result over: exit 1."""

    exit_code = 1


def fleet_wait_s(timeout_s: float, elapsed_s: float) -> float:
    """How long a rank that finished after ``elapsed_s`` waits for the others."""
    return timeout_s + max(MIN_WAIT_S, 2.0 * elapsed_s)


def _pin_gpu() -> None:
    """Each rank on its own GPU: the current CUDA device is LOCAL_RANK (modulo the
    devices there are), torchrun's convention; nothing without CUDA."""
    from kvbench.timing import cuda_available

    if cuda_available():
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))


def _run_own(run_local: Callable[[dict[str, Any], Path, dict[str, Any]], int],
             block: dict[str, Any]) -> dict[str, Any]:
    """This rank's benchmarks into a private temporary file: {rank, code, doc} or
    {rank, code, error}. The file and its folder are removed."""
    from kvbench.owned_dirs import make_owned_dir

    here = distributed.rank()
    # owned (pid and process identity inside): a killed rank's folder is removed later
    # by kvbench.owned_dirs.remove_stale_dirs (the launcher calls it at once)
    folder = make_owned_dir(f"kvbench-fleet-rank{here}-", tempfile.gettempdir())
    sink: dict[str, Any] = {"progress": here == 0}
    try:
        code = run_local(block, folder / "result.json", sink)
        out: dict[str, Any] = {"rank": here, "code": code}
        if sink.get("doc") is not None:
            out["doc"] = sink["doc"]
        else:
            out["error"] = f"rank {here} ended with status {code} before it had a result"
        return out
    except KvbenchError as exc:
        return {"rank": here, "code": exc.exit_code, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - said to rank 0 in one line, never lost
        return {"rank": here, "code": 1, "error": f"rank {here}: {type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _store() -> Any:
    """A client of the launch's rendezvous store (torchrun's agent, kvbench.launch, or
    rank 0 under plain env://): MASTER_ADDR:MASTER_PORT."""
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=dt.timedelta(seconds=distributed.timeout_s()), wait_for_workers=False)


def payload_key(rank: int, restart: str | None = None) -> str:
    """The store key of rank ``rank``'s hand-over (JSON: {rank, code, doc | error})."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") if restart is None else restart
    return f"kvbench/fleet/{restart}/payload/{rank}"


def report_dead(store: Any, rank: int, why: str) -> None:
    """Hand over, for a rank that died before it did, the one line saying so (the
    launcher calls this; a rank that handed its result over first keeps it)."""
    import json

    key = payload_key(rank, "0")
    if not store.check([key]):
        store.set(key, json.dumps({"rank": rank, "code": 1, "error": why}))


def _hand_over(payload: dict[str, Any], wait_s: float) -> list[dict[str, Any]] | None:
    """Put this rank's payload in the rendezvous store; on rank 0, wait at most ``wait_s``
    for every rank's and return them all (a rank that never handed one over: a payload
    with the reason). Through the store, not the group: a gloo wait ends at the group's
    timeout, ranks may finish minutes apart, and one may be dead."""
    import json

    store, here, world = _store(), distributed.rank(), distributed.world_size()
    store.set(payload_key(here), json.dumps(payload, default=str))
    if here != 0:
        return None
    deadline = time.monotonic() + wait_s
    keys = [payload_key(r) for r in range(world)]
    # polled with check(): a store.wait() that timed out leaves its reply pending on the
    # connection, and the next one reads it (seen with torch 2.13)
    while not store.check(keys) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    out = []
    for r, key in enumerate(keys):
        if store.check([key]):
            out.append(json.loads(store.get(key)))
        else:
            out.append({"rank": r, "code": 1, "error": f"rank {r} of the fleet did not finish within {wait_s:g} s "
                                                       "of rank 0 (it hung or died)"})
    return out


def run_fleet(timeout_s: float, run_local: Callable[[dict[str, Any], Path, dict[str, Any]], int],
              output: Path | None) -> int:
    """This rank's part of a fleet run. ``run_local(block, path, sink)`` runs the local
    benchmarks writing ``path`` and puts the document in ``sink["doc"]`` (it shows a
    progress bar where ``sink["progress"]``). Rank 0 writes the fleet result to
    ``output`` (None: the default name) and prints the spread; returns the exit status."""
    _pin_gpu()
    distributed.init_group(timeout_s)
    try:
        block = distributed.link_block(distributed.gather_identities())
        distributed.no_peers("a fleet run: every rank runs its own benchmarks and none serves a remote tier "
                             "(run --bench remote without --fleet)")
        t0 = time.monotonic()
        payload = _run_own(run_local, block)
        if payload["code"] in (130, 143):  # interrupted: the launcher signalled every rank
            return payload["code"]
        got = _hand_over(payload, fleet_wait_s(timeout_s, time.monotonic() - t0))
        if got is None:
            return 0 if "doc" in payload else 1
        return _write(got, block, output)
    finally:
        distributed.close_group()


def _write(payloads: list[dict[str, Any]], block: dict[str, Any], output: Path | None) -> int:
    from kvbench.report.fleet import print_fleet
    from kvbench.results import check_output, write_atomic
    from kvbench.runner import default_output

    doc = fleet_doc(payloads, block)
    path = output or default_output(doc["environment"])
    if output is None:
        check_output(path, "--output", must_exist=False)
    write_atomic(path, doc)
    for r in doc["fleet"]["ranks"]:
        if r["error"]:
            print(f"kvbench: {r['error']}", file=sys.stderr)
    print_fleet(doc, path)
    bad = any(r["status"] != "ok" for r in doc["fleet"]["ranks"])
    return 1 if bad or any(c["status"] == "error" for c in doc["cases"]) else 0


def fleet_doc(payloads: list[dict[str, Any]], block: dict[str, Any]) -> dict[str, Any]:
    """The one fleet result from every rank's payload (module docstring)."""
    docs = {p["rank"]: p["doc"] for p in payloads if p.get("doc")}
    if not docs:
        raise FleetFailure("no rank of the fleet produced a result: "
                           + "; ".join(p.get("error", "") for p in payloads))
    base = docs.get(0) or docs[min(docs)]
    hosts = {i["rank"]: i for i in block["ranks"]}
    ranks, cases = [], []
    for p in sorted(payloads, key=lambda p: p["rank"]):
        r, d = p["rank"], p.get("doc")
        ident = hosts.get(r, {})
        ranks.append({"rank": r, "hostname": ident.get("hostname"), "gpu": ident.get("gpu"),
                      "status": "ok" if d and d["run"].get("status") == "complete" else "failed",
                      "error": p.get("error", ""), "run": d["run"] if d else None,
                      "environment": d["environment"] if d else None})
        for c in (d or {}).get("cases", []):
            cases.append(dict(c, name=f"rank{r}/{c['name']}",
                              config=dict(c.get("config") or {}, rank=r, host=ident.get("hostname"))))
    run = dict(base["run"], id=uuid.uuid4().hex[:12],
               status="complete" if all(x["status"] == "ok" for x in ranks) else "failed")
    per_host: dict[str, int] = {}
    for x in ranks:
        per_host[str(x["hostname"])] = per_host.get(str(x["hostname"]), 0) + 1
    shared = {h: n for h, n in per_host.items() if n > 1}
    return {"schema": base["schema"], "run": run,
            "environment": dict(base["environment"], distributed=block), "method": base["method"],
            "cases": cases,
            "fleet": {"ranks": ranks, "shared_hosts": shared, "spread": spread(docs),
                      "note": ("ranks on one host share its cores, memory and disk: their figures contend "
                               "with each other" if shared else "one rank per host")}}


def spread(docs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (bench, case) ok on >= 2 ranks: its headline figure on each rank and their
    spread (min, median, max, (max - min) / median in %)."""
    from kvbench.bench import registry

    heads = {k: b.headline for k, b in registry().items()}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r, d in sorted(docs.items()):
        for c in d["cases"]:
            metric = heads.get(c["bench"], "")
            v = (c.get("metrics") or {}).get(metric) if metric else None
            if c["status"] != "ok" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            row = seen.setdefault((c["bench"], c["name"]), {
                "bench": c["bench"], "name": c["name"], "metric": metric,
                "unit": (c.get("units") or {}).get(metric, ""), "values": {}})
            row["values"][str(r)] = float(v)
    out = []
    for row in seen.values():
        vals = list(row["values"].values())
        if len(vals) < 2:
            continue
        med = statistics.median(vals)
        row.update(min=min(vals), median=med, max=max(vals),
                   spread_pct=100.0 * (max(vals) - min(vals)) / med if med else None)
        out.append(row)
    return out
