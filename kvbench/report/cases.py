"""What a result file's cases are judged by: each benchmark's headline metric and
its further columns (declared by the benchmark, ``kvbench.bench.Benchmark``), units,
spreads, paired ratios with their intervals, flags."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from kvbench.report.numbers import fmt_num, is_num, short_unit

STATUS_ORDER = {"ok": 0, "skipped": 1, "error": 2}


@lru_cache(maxsize=1)
def benchmarks() -> dict[str, Any]:
    """The registry's benchmarks (their modules import torch only inside functions, so
    reading a result stays light)."""
    from kvbench.bench import registry

    return registry()


def headline_of(bench: str) -> tuple[str, str]:
    """(metric, unit) a benchmark is judged by; ('', '') for one not in the registry."""
    b = benchmarks().get(bench)
    return (b.headline, b.headline_unit) if b else ("", "")


def columns_of(bench: str) -> tuple[str, ...] | None:
    """Further metrics the benchmark declares worth a column; None for one the
    registry does not know (its cases' own numeric metrics are shown then)."""
    b = benchmarks().get(bench)
    return tuple(b.columns) if b else None


def headline_metric(case: dict[str, Any]) -> str:
    """The figure a case is judged by: its bench's headline when the case has it,
    else its first sampled metric, else its first numeric metric ('' if none)."""
    metrics = case.get("metrics") or {}
    head = headline_of(case.get("bench", ""))[0]
    if head and is_num(metrics.get(head)):
        return head
    for k in case.get("samples") or {}:
        if is_num(metrics.get(k)):
            return k
    for k, v in metrics.items():
        if is_num(v):
            return k
    return ""


def unit_of(case: dict[str, Any], metric: str) -> str:
    u = (case.get("units") or {}).get(metric)
    head, head_unit = headline_of(case.get("bench", ""))
    if u is None and metric == head:
        u = head_unit
    return short_unit(u or "")


def paired_text(case: dict[str, Any], metric: str) -> str:
    """'88% [85-92]': a paired ratio's median and its confidence interval of the
    median (``case["paired"][metric]``, written by kvbench.measure.paired.record; in %
    or x); '' when the case has no paired figure of that name."""
    p = (case.get("paired") or {}).get(metric) or {}
    if not all(is_num(p.get(k)) for k in ("median", "ci_low", "ci_high")):
        return ""
    unit = unit_of(case, metric)
    sign = unit if unit in ("%", "x") else ""
    return f"{p['median']:.3g}{sign} [{p['ci_low']:.3g}-{p['ci_high']:.3g}]"


def figure_text(case: dict[str, Any], metric: str) -> str:
    """A metric as a cell: its paired median and interval when paired, else the figure."""
    return paired_text(case, metric) or fmt_num((case.get("metrics") or {}).get(metric), unit_of(case, metric))


def flags_text(case: dict[str, Any]) -> str:
    """A case's flags ('unstable', 'above_ceiling', ...), comma-separated."""
    return ", ".join(str(f) for f in case.get("flags") or [])


def spread(case: dict[str, Any], metric: str) -> tuple[str, str, str]:
    """(p10-p90, cv, n) of a metric's samples; blanks when it was not sampled."""
    st = (case.get("stats") or {}).get(metric) or {}
    n = st.get("n") or 0
    if n < 2 or not all(is_num(st.get(k)) for k in ("p10", "p90", "cv")):
        return "", "", str(n) if n else ""
    unit = unit_of(case, metric)
    return f"{fmt_num(st['p10'], unit)}-{fmt_num(st['p90'], unit)}", f"{st['cv']:.1%}", str(n)


def case_group(case: dict[str, Any]) -> tuple[str, str]:
    """(kind, headline metric): cases of one bench that share a table."""
    return str((case.get("config") or {}).get("kind") or ""), headline_metric(case)


def status_counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(1 for c in cases if c["status"] == s) for s in STATUS_ORDER}


def flag_counts(cases: list[dict[str, Any]]) -> dict[str, int]:
    """How many cases carry each flag."""
    out: dict[str, int] = {}
    for c in cases:
        for f in c.get("flags") or []:
            out[str(f)] = out.get(str(f), 0) + 1
    return out


def benches_of(doc: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for b in list((doc.get("run") or {}).get("benches") or []) + [c["bench"] for c in doc["cases"]]:
        if b not in seen and any(c["bench"] == b for c in doc["cases"]):
            seen.append(b)
    return seen


def select_benches(available: list[str], wanted: list[str] | None, origin: str) -> list[str]:
    """Bench keys by exact key or unique prefix among those the file(s) hold."""
    from kvbench.bench import match_keys

    return match_keys(available, wanted, "bench", f" in {origin}") if wanted else available
