"""The summary ``kvbench run`` prints when it finishes (stdout): a table a person reads
at 80 columns (case names wrap; no column collapses), the reasons of skipped and
failed cases grouped under it, and the counts. Full names and figures are in the
result file; this is the glance."""

from __future__ import annotations

from typing import Any

from kvbench.report.cases import headline_of
from kvbench.report.headline import FLAG_WORDS, counts_line, nvme_backing_line
from kvbench.report.numbers import fmt_short, is_num, short_unit

#: a flag's marker after a case's status
MARKS = {"unstable": "*", "above_ceiling": "^"}
STATUS_STYLE = {"ok": "green", "skipped": "yellow", "error": "red"}


def _status(c: dict[str, Any]) -> str:
    marks = "".join(MARKS.get(f, "!") for f in c.get("flags") or [])
    return c["status"] + marks


def _median(c: dict[str, Any]) -> tuple[str, str]:
    """(headline median, its cv) as short text."""
    metric, unit = headline_of(c["bench"])
    val = c["metrics"].get(metric) if metric else None
    if not is_num(val):
        return "", ""
    unit = short_unit(c["units"].get(metric, unit))
    st = c["stats"].get(metric, {})
    cv = f"{st['cv']:.0%}" if st.get("n", 0) > 1 and is_num(st.get("cv")) else ""
    return f"{fmt_short(val)} {unit}".strip(), cv


def _pct(c: dict[str, Any]) -> str:
    """'85% [82-88]': % of the case's ceiling (or roofline), with the paired interval."""
    for metric in ("pct_of_ceiling", "pct_of_roofline"):
        pr = (c.get("paired") or {}).get(metric)
        if pr and all(is_num(pr.get(k)) for k in ("median", "ci_low", "ci_high")):
            return f"{pr['median']:.0f}% [{pr['ci_low']:.0f}-{pr['ci_high']:.0f}]"
        v = c["metrics"].get(metric)
        if is_num(v):
            return f"{v:.0f}%"
    return ""


def summary_table(doc: dict[str, Any]) -> Any:
    """The cases as a rich table: a heading row per benchmark, then its cases; the
    figure columns no case fills are left out."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows: list[tuple[str, list[Any]]] = []
    for c in doc["cases"]:
        med, cv = _median(c)
        rows.append((c["bench"], [Text(c["name"]), Text(_status(c), style=STATUS_STYLE.get(c["status"])),
                                  med, cv, _pct(c)]))
    cols = [("case", {"overflow": "fold", "ratio": 1, "min_width": 16}), ("status", {"no_wrap": True}),
            ("median", {"justify": "right", "no_wrap": True}), ("cv", {"justify": "right", "no_wrap": True}),
            ("% of ceiling or roofline [95% CI]", {"justify": "right", "no_wrap": True})]
    keep = [i for i in range(len(cols)) if i < 2 or any(r[i] for _b, r in rows)]
    run = doc["run"]
    t = Table(title=f"kvbench {run['mode']} run {run['id']} ({run['status']}); GB = 1e9 B",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i in keep:
        t.add_column(cols[i][0], **cols[i][1])
    bench = None
    for b, r in rows:
        if b != bench:
            bench = b
            t.add_row(Text(b, style="bold"))
        t.add_row(*[r[i] for i in keep])
    return t


def _reasons(doc: dict[str, Any]) -> list[str]:
    """Skipped and failed cases grouped by reason: 'skipped (3): reason: a, b, c'."""
    groups: dict[tuple[str, str], list[str]] = {}
    for c in doc["cases"]:
        if c["status"] != "ok":
            reason = (c.get("reason") or "").strip().splitlines()
            groups.setdefault((c["status"], reason[0] if reason else "no reason given"), []).append(
                f"{c['bench']}/{c['name']}")
    return [f"{status} ({len(names)}): {reason}: {', '.join(names)}" for (status, reason), names in groups.items()]


def print_summary(doc: dict[str, Any], console: Any) -> None:
    """The summary table, the marks' meaning, the PCIe limit, reasons and counts."""
    from rich.text import Text

    console.print(summary_table(doc))
    used = {f for c in doc["cases"] for f in c.get("flags") or []}
    for flag, mark in MARKS.items():
        if flag in used:
            console.print(Text(f"{mark} = {flag}: {FLAG_WORDS[flag]}"))
    for g in doc["environment"].get("gpus") or []:
        lim = g.get("pcie_limit_gbps_per_direction")
        if lim:
            console.print(Text(f"{g.get('name')}: PCIe Gen{g.get('pcie_gen_max')} x{g.get('pcie_width_max')} "
                               f"(now Gen{g.get('pcie_gen_current')} x{g.get('pcie_width_current')}), physical "
                               f"limit {lim:.1f} GB/s per direction, {2 * lim:.1f} GB/s both (NVML); "
                               "figures above it are errors"))
    line = nvme_backing_line(doc["environment"])
    if line:
        console.print(Text(line, style="yellow"))
    for line in _reasons(doc):
        console.print(Text(line, style="dim"))
    line = counts_line(doc["cases"])
    if "unstable" in used:
        line += "; --set <bench>.budget_s gives unstable cases more time"
    console.print(Text(line))
