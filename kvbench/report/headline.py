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
