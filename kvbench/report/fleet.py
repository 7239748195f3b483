"""Fleet results (kvbench/fleet.py) shown to a person: the spread table (each case's
headline figure per rank, min / median / max and the spread), what ``kvbench run
--fleet`` prints at its end, and the per-rank documents ``kvbench compare FLEET.json``
puts side by side (rank 0 is A, the reference; rank 1 is B, ...)."""

from __future__ import annotations

import re
from typing import Any

from kvbench.report.numbers import fmt_num
from kvbench.report.page import Page, Table, render_console

RANK_PREFIX = re.compile(r"^rank(\d+)/")


def is_fleet(doc: dict[str, Any]) -> bool:
    return isinstance(doc.get("fleet"), dict) and isinstance(doc["fleet"].get("ranks"), list)


def rank_docs(doc: dict[str, Any], path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One ordinary result document per rank that produced one (its own run and
    environment, its cases under their own names), and a label per rank ('PATH#rank1')."""
    docs, labels = [], []
    for r in doc["fleet"]["ranks"]:
        if not r.get("run"):
            continue
        cases = [dict(c, name=RANK_PREFIX.sub("", c["name"])) for c in doc["cases"]
                 if (c.get("config") or {}).get("rank") == r["rank"]]
        docs.append({"schema": doc["schema"], "run": r["run"], "environment": r["environment"] or {},
                     "method": doc["method"], "cases": cases})
        labels.append(f"{path}#rank{r['rank']}")
    return docs, labels


def expand(docs: list[dict[str, Any]], paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """What compare compares: one fleet result alone becomes its ranks side by side;
    anything else is kept (two fleet results match by their rank<r>/ case names)."""
    if len(docs) == 1 and is_fleet(docs[0]):
        return rank_docs(docs[0], paths[0])
    return docs, paths


def spread_table(doc: dict[str, Any]) -> Table:
    """Each case's headline figure on every rank, and their spread."""
    ranks = [r["rank"] for r in doc["fleet"]["ranks"]]
    t = Table(f"Fleet: {len(ranks)} ranks; each case's headline figure per rank; spread = (max - min) / median",
              ["case", "metric", *[f"rank {r}" for r in ranks], "min", "median", "max", "spread"],
              numeric=set(range(2, 6 + len(ranks))))
    for row in doc["fleet"].get("spread") or []:
        unit = f" ({row['unit']})" if row.get("unit") else ""
        vals = [fmt_num(row["values"][str(r)]) if str(r) in row["values"] else "-" for r in ranks]
        pct = f"{row['spread_pct']:.0f}%" if isinstance(row.get("spread_pct"), (int, float)) else "-"
        t.add([f"{row['bench']}/{row['name']}", f"{row['metric']}{unit}", *vals,
               fmt_num(row["min"]), fmt_num(row["median"]), fmt_num(row["max"]), pct])
    t.notes.append(doc["fleet"].get("note", ""))
    return t


def fleet_lines(doc: dict[str, Any]) -> list[str]:
    out = []
    for r in doc["fleet"]["ranks"]:
        gpu = r.get("gpu") or "no GPU"
        out.append(f"rank {r['rank']}: {r.get('hostname')}, {gpu}: {r['status']}"
                   + (f" ({r['error']})" if r.get("error") else ""))
    return out


def print_fleet(doc: dict[str, Any], path: Any, console: Any = None) -> None:
    """What a fleet run prints at its end (stdout): the ranks, the spread, the file."""
    from kvbench.report.page import make_console

    console = console or make_console()  # a row per case, a column per rank: wide
    page = Page(f"kvbench fleet run {doc['run']['id']} ({doc['run']['status']})")
    page.lines(fleet_lines(doc))
    t = spread_table(doc)
    if t.rows:
        page.table(t)
    else:
        page.lines(["no case is ok on two ranks or more: no spread"])
    render_console(page, console)
    console.print(f"result: {path}", highlight=False, markup=False, soft_wrap=True)
