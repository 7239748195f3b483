"""``kvbench report``: one result file as terminal tables, PNG plots and an HTML page.

Reads only what a result file (schema ``kvbench.result/1``, docs/results.md) holds; it
computes nothing but formatting, ratios and geometric means of figures already there.
The page opens with a headline section (counts, flags and each benchmark's
highlights), then the plots, then the environment and a table per benchmark.
torch is never imported; rich and matplotlib only where they draw.

Units: GB = 1e9 bytes, GiB = 2^30 bytes; bandwidth GB/s; times seconds.
"""

from __future__ import annotations

from typing import Any

from kvbench.report.cases import (STATUS_ORDER, benches_of, case_group, columns_of, figure_text,
                                  flags_text, select_benches, spread, status_counts, unit_of)
from kvbench.report.headline import (counts_line, draw_plots, flag_lines, highlight_tables, nvme_backing_line,
                                     status_warning)
from kvbench.report.machine import run_label, run_lines
from kvbench.report.numbers import UNITS_LINE, is_num
from kvbench.report.page import Page, Table, check_outputs, make_console, render_console, write_outputs
from kvbench.results import load


def _notes_common(cases: list[dict[str, Any]]) -> list[str]:
    """Notes every case of a group carries (method labels), tracebacks left out."""
    if not cases:
        return []
    common = [n for n in cases[0].get("notes") or [] if "\n" not in n]
    for c in cases[1:]:
        have = set(c.get("notes") or [])
        common = [n for n in common if n in have]
    return common


def _extra_columns(bench: str, metric: str, cases: list[dict[str, Any]]) -> list[str]:
    """The benchmark's declared columns that these cases have (an unknown benchmark:
    up to six of its cases' numeric metrics), then every paired ratio."""
    declared = columns_of(bench)
    if declared is None:
        extras: list[str] = []
        for c in cases:
            extras += [m for m, v in c["metrics"].items() if is_num(v) and m != metric and m not in extras]
        extras = extras[:6]
    else:
        extras = [m for m in declared if m != metric and any(is_num(c["metrics"].get(m)) for c in cases)]
    extras += [m for m in dict.fromkeys(m for c in cases for m in c.get("paired") or {})
               if m != metric and m not in extras]
    return extras


def _group_table(bench: str, kind: str, metric: str, cases: list[dict[str, Any]]) -> Table:
    unit = unit_of(cases[0], metric) if metric else ""
    extras = _extra_columns(bench, metric, cases)
    flagged = any(c.get("flags") for c in cases)
    head = f"{metric} ({unit})" if unit else metric or "metric"
    cols = ["case", *(["flags"] if flagged else []), head, "p10-p90", "cv", "n"]
    for m in extras:
        u = next((unit_of(c, m) for c in cases if unit_of(c, m)), "")
        cols.append(f"{m} ({u})" if u else m)
    sampled = any(((c.get("stats") or {}).get(metric) or {}).get("n", 0) > 1 for c in cases)
    title = (f"{bench}" + (f" / {kind}" if kind else "") + f": {len(cases)} ok case(s)"
             + (", median of samples" if sampled else "") + f"; {UNITS_LINE}")
    t = Table(title, cols, numeric=set(range(2 if flagged else 1, len(cols))))
    for c in cases:
        p, cv, n = spread(c, metric)
        row = [c["name"], *([flags_text(c)] if flagged else []), figure_text(c, metric), p, cv, n]
        t.add(row + [figure_text(c, m) for m in extras], "flagged" if c.get("flags") else "")
    t.notes = _notes_common(cases)
    levels = sorted({p.get("ci_level") for c in cases for p in (c.get("paired") or {}).values()
                     if is_num(p.get("ci_level"))})
    if levels:
        t.notes.append(f"paired ratios: median [{'/'.join(f'{x:.0%}' for x in levels)} confidence "
                       "interval of the median] of per-pair ratios of alternately measured figures")
    return t


def bench_tables(doc: dict[str, Any], bench: str) -> list[Table]:
    """Tables of one bench: one per (kind, headline metric) group of ok cases, then
    one of skipped and failed cases with their reasons."""
    cases = [c for c in doc["cases"] if c["bench"] == bench]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cases:
        if c["status"] == "ok":
            groups.setdefault(case_group(c), []).append(c)
    tables = [_group_table(bench, kind, metric, cs) for (kind, metric), cs in groups.items()]
    bad = sorted((c for c in cases if c["status"] != "ok"), key=lambda c: STATUS_ORDER[c["status"]])
    if bad:
        t = Table(f"{bench}: {len(bad)} case(s) skipped or failed", ["case", "status", "reason"])
        for c in bad:
            t.add([c["name"], c["status"] + (f" ({flags_text(c)})" if c.get("flags") else ""),
                   c.get("reason") or ""], c["status"])
        tables.append(t)
    return tables


def build_report(doc: dict[str, Any], path: str, benches: list[str] | None = None,
                 plots: bool = False) -> Page:
    """The report of one result document as a Page (headline, tables; plots when asked)."""
    chosen = select_benches(benches_of(doc), benches, path)
    run = doc["run"]
    page = Page(f"kvbench report: {path} ({run_label(doc)}, run {run['id']})")
    page.headline.append(("heading", "Headline"))
    cases = [c for c in doc["cases"] if c["bench"] in chosen]
    page.headline.append(("lines", [f"{run_label(doc)}, {run['mode']} run, "
                                    f"{'quick' if run.get('quick') else 'full'}: {counts_line(cases)}",
                                    *flag_lines(cases)]))
    warnings = [w for w in (status_warning(run), nvme_backing_line(doc.get("environment") or {})) if w]
    if warnings:
        page.headline.append(("warnings", warnings))
    page.headline += [("table", t) for t in highlight_tables(doc, chosen)]
    page.heading("Environment")
    page.lines(run_lines(doc))
    if not doc["cases"]:
        page.lines(["no cases in this result"])
    for b in chosen:
        n = status_counts([c for c in doc["cases"] if c["bench"] == b])
        page.heading(f"{b}: {n['ok']} ok, {n['skipped']} skipped, {n['error']} errors")
        for t in bench_tables(doc, b):
            page.table(t)
    if plots:
        page.plots = draw_plots(doc, chosen)
    return page


def report(path: str, *, plot_dir: str | None = None, html_path: str | None = None,
           benches: list[str] | None = None, console: Any = None) -> Page:
    """Load a result file, print its report, write plots / HTML if asked."""
    check_outputs(plot_dir, html_path)
    doc = load(path)
    page = build_report(doc, str(path), benches, plots=plot_dir is not None or html_path is not None)
    console = console or make_console()
    render_console(page, console)
    write_outputs(page, plot_dir, html_path, console)
    return page
