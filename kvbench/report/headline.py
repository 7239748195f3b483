"""The headline section a report opens with: counts and flags of the whole run, then
each benchmark's highlights (``Benchmark.highlights``), and the plots each benchmark
declares (``Benchmark.plots``), titled with the run they come from."""

from __future__ import annotations

from typing import Any

from kvbench.report.cases import benchmarks, flag_counts, status_counts
from kvbench.report.machine import run_label
from kvbench.report.numbers import fmt_num, is_num
from kvbench.report.page import Table

#: what each flag means, for the headline's counts line
FLAG_WORDS = {"unstable": "a paired ratio's 95% interval was still wider than +-5% of its median "
                           "when the case's time budget ran out",
              "above_ceiling": "a figure above its own ceiling beyond the pair's noise: the ceiling "
                               "did not bound it"}


def counts_line(cases: list[dict[str, Any]]) -> str:
    """'83 ok, 17 skipped, 0 errors; flagged: 12 above_ceiling, 53 unstable'."""
    n = status_counts(cases)
    line = f"{n['ok']} ok, {n['skipped']} skipped, {n['error']} errors"
    flags = flag_counts(cases)
    if flags:
        line += "; flagged: " + ", ".join(f"{k} {f}" for f, k in flags.items())
    return line


def status_warning(run: dict[str, Any]) -> str | None:
    """The headline warning of a run that did not complete. One still "running" in
    its file is abandoned (killed outright: no writer sets that status last); whether
    its writer (``run.writer``) still runs is checked when it ran on this host."""
    from kvbench.owner import owner_alive

    status = run.get("status")
    if status == "complete":
        return None
    if status != "running":
        return f"run status is {status!r}: only the cases that finished are in the file"
    w = run.get("writer") or {}
    alive = owner_alive(w) if w else None
    state = {True: "still running: this may be a live run", False: "no longer running",
             None: "could not be checked: " + ("another host" if w.get("host") else "not recorded")}[alive]
    who = f"written by pid {w.get('pid')} on {w.get('host')}" if w else "writer not recorded"
    return (f"run abandoned: status running, last checkpoint {run.get('checkpoint_utc') or 'not recorded'}, "
            f"{who} ({state}); only the cases that finished are in the file")


def nvme_backing_line(env: dict[str, Any]) -> str | None:
    """'nvme tier: DIR is RAM-backed (tmpfs): ...' when the nvme folder is not on a
    disk (environment.nvme.backing, kvbench.mounts.fs_backing); None on a disk."""
    nv = env.get("nvme") or {}
    backing = nv.get("backing")
    if not nv or backing in (None, "disk"):
        return None
    fs = nv.get("fs_type") or "unknown filesystem"
    what = {"ram": f"RAM-backed ({fs}): its figures measure memory, not a disk",
            "overlay": f"an overlay ({fs}): it may not be a disk",
            "network": f"a network filesystem ({fs}): its figures measure the network, not a local disk",
            }.get(backing, f"of unknown backing ({fs}): it may not be a disk")
    return f"nvme tier: {nv.get('dir')} is {what}"


def flag_lines(cases: list[dict[str, Any]]) -> list[str]:
    """What each flag present means, a line each."""
    return [f"{f}: {FLAG_WORDS.get(f, 'flagged by its benchmark (see the case notes)')}"
            for f in flag_counts(cases)]


def _cell(v: Any, unit: str) -> str:
    if is_num(v):
        text = fmt_num(v, unit)
        return f"{text}{unit}" if unit in ("%", "x") else text
    return "" if v is None else str(v)


def highlight_tables(doc: dict[str, Any], benches: list[str]) -> list[Table]:
    """A small table per benchmark that declares highlights and has something to show."""
    out = []
    for key in benches:
        b = benchmarks().get(key)
        got = b.highlights(doc) if b is not None and b.highlights is not None else None
        if not got or not got.rows:
            continue
        cols = [f"{name} ({unit})" if unit and unit not in ("%", "x") and unit not in name else name
                for name, unit in got.columns]
        t = Table(got.title, cols, numeric={i for i, (_n, u) in enumerate(got.columns) if u})
        for row in got.rows:
            t.add([_cell(v, unit) for v, (_n, unit) in zip(row, got.columns)])
        out.append(t)
    return out


def draw_plots(doc: dict[str, Any], benches: list[str]) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG) of every plot the chosen benchmarks declare and can
    draw from this document, each titled with the machine and run."""
    from kvbench.plotkit import png_bytes

    run = doc["run"]
    out = []
    for key in benches:
        b = benchmarks().get(key)
        for plot in (b.plots if b is not None else ()):
            got = plot.draw(doc)
            if got is None:
                continue
            fig, caption = got
            fig.suptitle(f"{caption}\n{run_label(doc)}, run {run['id']} ({run['mode']})", fontsize=10)
            out.append((plot.file, caption, png_bytes(fig)))
    return out
