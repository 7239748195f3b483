"""What ``kvbench claims`` shows: per claim, a table of kvbench's figures (what, value,
how obtained, on what basis) under the claim's words, then its verdict; a summary of the
verdicts; and the same as one JSON document. Units: GB = 1e9 B, TB = 1e12 B, PB = 1e15 B,
EB = 1e18 B; TiB = 2^40 B and GiB = 2^30 B where a figure says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kvbench.claims.core import VERDICTS, Evaluation
from kvbench.claims.evidence import Evidence

JSON_SCHEMA = "kvbench.claims.report/1"
UNITS_NOTE = ("GB = 1e9 B, TB = 1e12 B, PB = 1e15 B, EB = 1e18 B; TiB = 2^40 B, GiB = 2^30 B; "
              "counts: k = 1e3, M = 1e6, G = 1e9")
VERDICT_STYLE = {"confirmed": "green", "refuted": "red", "partly": "yellow", "not settled": "magenta",
                 "not measured": "cyan"}
HOW_STYLE = {"arithmetic": "", "measured": "bold", "not measured": "dim"}


def console():
    from rich.console import Console

    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=max(c.width, 140))
    return c


def claim_table(e: Evaluation):
    from rich.markup import escape
    from rich.table import Table

    c = e.claim
    t = Table(title=f"{c.id}: \u201c{escape(c.quote)}\u201d", title_justify="left",
              caption=f"source: {escape(c.source)}", caption_justify="left")
    for col in ("figure", "kvbench", "how obtained", "basis"):
        t.add_column(col, overflow="fold")
    for f in e.figures:
        t.add_row(escape(f.what), escape(f.value), f.how, escape(f.basis), style=HOW_STYLE.get(f.how) or None)
    return t


def verdict_text(e: Evaluation) -> str:
    from rich.markup import escape

    style = VERDICT_STYLE[e.verdict]
    return f"  verdict: [{style}]{e.verdict}[/] - {escape(e.reason)}"


def summary_table(evals: list[Evaluation], ev: Evidence):
    from rich.markup import escape
    from rich.table import Table

    given = ", ".join(r.name for r in ev.results) or "none (arithmetic only)"
    t = Table(title="Claims: verdicts", title_justify="left", caption=f"results: {escape(given)}",
              caption_justify="left")
    for col in ("claim", "verdict", "figures", "why"):
        t.add_column(col, overflow="fold")
    for e in evals:
        hows = [f.how for f in e.figures]
        counts = ", ".join(f"{hows.count(h)} {h}" for h in dict.fromkeys(hows))
        t.add_row(e.claim.id, f"[{VERDICT_STYLE[e.verdict]}]{e.verdict}[/]", counts, escape(e.reason))
    return t


def print_report(c, evals: list[Evaluation], ev: Evidence) -> None:
    for e in evals:
        c.print(claim_table(e))
        c.print(verdict_text(e))
        for n in e.notes:
            c.print(f"  note: {n}", markup=False)
        c.print()
    c.print(summary_table(evals, ev))
    c.print(UNITS_NOTE, markup=False)
    c.print("verdicts: " + "; ".join(f"{k}: {v}" for k, v in VERDICTS.items()), markup=False)


def to_json(evals: list[Evaluation], ev: Evidence) -> dict[str, Any]:
    return {
        "schema": JSON_SCHEMA,
        "units": UNITS_NOTE,
        "verdicts": dict(VERDICTS),
        "results": [{"path": r.path, "hardware": r.hardware} for r in ev.results],
        "scenario_override": ev.scenario,
        "claims": [{**dataclasses.asdict(e.claim),
                    "figures": [dataclasses.asdict(f) for f in e.figures],
                    "verdict": e.verdict, "reason": e.reason, "notes": list(e.notes)} for e in evals],
    }
