"""Output of a sizing: rich tables, a JSON document, and a PNG plot.

Units everywhere: TiB = 2**40 bytes (the source's unit), PB = 1e15 and EB = 1e18 bytes
("plain" column), GB = 1e9 bytes for prices and bandwidths.
"""

from __future__ import annotations

import io
import dataclasses
import math
from pathlib import Path
from typing import Any

from kvbench.results import write_bytes_atomic
from kvbench.sizing.lint import Finding
from kvbench.sizing.measured import Measured
from kvbench.sizing.model import Sizing, published_comparison
from kvbench.sizing.numbers import num, plain, seconds, sig3, tib, tib_str, usd
from kvbench.sizing.scenario import TIER_LABELS, TIERS
from kvbench.sizing.sweep import SWEEP_KEYS, Sweep

#: /2: tiers by kvbench's names (nvme, remote; were ssd, datalake), line ids reuse_nvme and
#: unattributed_nvme (were reuse_ssd, unattributed_ssd)
JSON_SCHEMA = "kvbench.sizing/2"
UNITS_NOTE = ("TiB = 2^40 B (the source's unit; its 'PiB' column is TiB / 1000); "
              "PB = 10^15 B, EB = 10^18 B; prices per GB, GB = 10^9 B")


# ------------------------------------------------------------------------ terminal
def console():
    from rich.console import Console

    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=max(c.width, 140))
    return c


def _title(sz: Sizing, extra: str = "") -> str:
    scn = sz.scenario
    q = sz.quantities["kv_bytes_per_token"]
    return (f"kvbench size: {scn.name} - {scn.model_name}, {scn.kv_format} "
            f"({num(round(q.value, 2))} B/token, {q.source}){extra}")


def breakdown_table(sz: Sizing, measured: Sizing | None = None):
    """Line items and totals per tier; vs published when the scenario lists figures."""
    from rich.table import Table

    pub = {r.key: r for r in published_comparison(sz)} if measured is None else {}
    t = Table(title=_title(measured or sz))
    t.add_column("tier")
    t.add_column("component")
    if measured is not None:
        t.add_column("assumed TiB", justify="right")
    t.add_column("TiB" if measured is None else "measured TiB", justify="right")
    t.add_column("plain", justify="right")
    if pub:
        t.add_column("published TiB", justify="right")
        t.add_column("vs published", justify="right")
    show = measured or sz
    if show.costs_usd:
        t.add_column("cost", justify="right")

    def row(tier_label, label, key, a_bytes, m_bytes, cost=None, bold=False):
        cells = [tier_label, label]
        if measured is not None:
            cells.append(tib_str(a_bytes))
        cells += [tib_str(m_bytes), plain(m_bytes)]
        if pub:
            r = pub.get(key)
            if r is None:
                cells += ["", ""]
            else:
                mark = "ok" if r.matches else "DIFF"
                delta = f"{r.delta:+.3%}" if math.isfinite(r.delta) else "n/a"
                cells += [num(r.published_tib), f"{delta} {mark}"]
        if show.costs_usd:
            cells.append(usd(cost) if cost is not None else "")
        t.add_row(*cells, style="bold" if bold else None)

    for tier in TIERS:
        for it in sz.tier_items(tier):
            m_bytes = measured.item(it.id).bytes if measured else it.bytes
            if it.id.startswith("unattributed") and it.bytes == 0:
                continue
            row(TIER_LABELS[tier], it.label, it.id, it.bytes, m_bytes)
        m_total = (measured or sz).totals_bytes[tier]
        row(TIER_LABELS[tier], "total", f"total_{tier}", sz.totals_bytes[tier], m_total,
            cost=show.costs_usd.get(tier), bold=True)
        t.add_section()
    return t


def units_note(sz: Sizing) -> str:
    note = UNITS_NOTE
    if sz.scenario.published_tib:
        note += ("\n'ok' vs published: within 0.1% of the published figure, or equal at its "
                 "printed precision (whole TiB)")
    return note


def explain_tables(sz: Sizing):
    from rich.table import Table

    q = Table(title="Inputs and derived quantities")
    for col in ("quantity", "value", "source", "formula"):
        q.add_column(col, overflow="fold")
    for x in sz.quantities.values():
        value = f"{num(round(tib(x.value), 2))} TiB" if x.unit == "B" and x.value > 2**40 else \
            f"{num(round(x.value, 2))} {x.unit}"
        q.add_row(x.label, value, x.source, x.formula)
    f = Table(title="Line item formulas")
    for col in ("line", "TiB", "formula", "provenance"):
        f.add_column(col, overflow="fold")
    for it in sz.items:
        if it.id.startswith("unattributed") and it.bytes == 0:
            continue
        f.add_row(f"{TIER_LABELS[it.tier]}: {it.label}", tib_str(it.bytes), it.formula, it.provenance)
    for tier in TIERS:
        parts = " + ".join(tib_str(it.bytes) for it in sz.tier_items(tier))
        f.add_row(f"{TIER_LABELS[tier]}: total", tib_str(sz.totals_bytes[tier]), f"sum of rows = {parts}", "")
    return q, f


def print_lint(c, findings: list[Finding], heading: str = "Lint") -> None:
    from rich.markup import escape

    if not findings:
        c.print(f"[bold]{heading}:[/] no assumptions contradict each other")
        return
    c.print(f"[bold]{heading}: {len(findings)} warning(s)[/] (assumptions that disagree; not errors)")
    for f in findings:
        c.print(f"  [yellow]warning[/] {escape('[' + f.check + ']')} {escape(f.message)}")
        c.print(f"      {f.arithmetic}", markup=False)


def print_measured(c, m: Measured) -> None:
    from rich.table import Table

    t = Table(title="Measured replacements (assumption -> measurement)")
    for col in ("quantity", "assumption", "measured", "from", "note"):
        t.add_column(col, overflow="fold")
    for r in m.replacements:
        t.add_row(r.quantity, r.assumption, r.measured, r.source, r.note)
    c.print(t)
    if m.capacity:
        ct = Table(title="Decode capacity per placement (sequences per GPU at the scenario's speed)")
        for col in ("placement", "basis", "KV read GB/s", "sequences/GPU", "GPUs needed", "x fleet", "from", "note"):
            ct.add_column(col, overflow="fold")
        for r in m.capacity:
            bound = "<= " if r.upper_bound else ""
            ct.add_row(r.placement + (" *" if r.selected else "") + (" (used)" if r.used else ""),
                       r.basis + (" (implied GB/s)" if r.basis == "e2e" else ""), sig3(r.kv_read_gbps),
                       bound + num(round(r.seqs_per_gpu, 1)), num(math.ceil(r.gpus_needed)),
                       f"{r.fleet_ratio:.3g}", r.source, r.note)
        c.print(ct)
        c.print("* the placement matching the scenario's live-KV split; (used): the row the sizing takes. "
                "basis decode: the decode benchmark's KV-read GB/s; e2e: end-to-end output tokens/s "
                "(its GB/s implied from the KV bytes at its context)")
    if m.reuse:
        scn = m.sizing.scenario
        rt = Table(title=f"Reuse hit: a {num(m.reuse_prefix_tokens)}-token prefix "
                         f"({plain(m.sizing.sequence_kv_bytes(m.reuse_prefix_tokens))}) vs TTFT "
                         f"{seconds(scn.demand.ttft_s)}")
        for col in ("path", "time", "within TTFT", "from", "note"):
            rt.add_column(col, overflow="fold")
        for r in m.reuse:
            rt.add_row(r.path, (">= " if r.lower_bound else "") + seconds(r.seconds), "yes" if r.within_ttft else "no", r.source, r.note)
        c.print(rt)
    if m.reuse_verdict:
        c.print(f"[bold]Reuse cache:[/] {m.reuse_verdict}")
    for n in m.notes:
        c.print(f"note: {n}", markup=False)
    if m.missing:
        c.print("[bold]Not measured in these results[/] (assumption kept):")
        for x in m.missing:
            c.print(f"  - {x.quantity}: {x.how}", markup=False)


def sweep_table(sw: Sweep):
    from rich.table import Table

    scn = sw.sizings[0].scenario
    note = SWEEP_KEYS[sw.key]
    if sw.key == "input_tokens":
        s = scn.demand.sweep_scaling
        note += (f"; rag_tokens: {s.rag_tokens}, output_tokens: {s.output_tokens}, "
                 f"peak_day_tokens: {s.peak_day_tokens}")
    t = Table(title=f"Sweep of {sw.key}: tier totals (TiB)", caption=f"{note}. {UNITS_NOTE}")
    t.add_column(sw.key, justify="right")
    if sw.key == "input_tokens":
        t.add_column("tokens/req", justify="right")
    for tier in TIERS:
        t.add_column(f"{TIER_LABELS[tier]} TiB", justify="right")
    t.add_column("all tiers (plain)", justify="right")
    for v, sz in zip(sw.values, sw.sizings):
        cells = [num(v) if sw.numeric else str(v)]
        if sw.key == "input_tokens":
            cells.append(num(round(sz.q("tokens_per_request"), 1)))
        cells += [tib_str(sz.totals_bytes[t_]) for t_ in TIERS]
        cells.append(plain(sum(sz.totals_bytes.values())))
        t.add_row(*cells)
    return t


# ------------------------------------------------------------------------ JSON
def _sizing_dict(sz: Sizing) -> dict[str, Any]:
    pub = {r.key: r for r in published_comparison(sz)}

    def pubinfo(key: str) -> dict[str, Any]:
        r = pub.get(key)
        if r is None:
            return {}
        return {"published_tib": r.published_tib,
                "delta": r.delta if math.isfinite(r.delta) else None, "matches_published": r.matches}

    return {
        "quantities": {k: dataclasses.asdict(q) for k, q in sz.quantities.items()},
        "line_items": [
            {"id": it.id, "tier": it.tier, "label": it.label, "bytes": it.bytes, "tib": it.tib,
             "formula": it.formula, "provenance": it.provenance, **pubinfo(it.id)}
            for it in sz.items
        ],
        "totals": {t: {"bytes": b, "tib": tib(b), **pubinfo(f"total_{t}")}
                   for t, b in sz.totals_bytes.items()},
        "costs_usd": dict(sz.costs_usd),
    }


def to_json(sz: Sizing, findings: list[Finding], measured: Measured | None = None,
            sweep: Sweep | None = None) -> dict[str, Any]:
    scn = sz.scenario
    inputs = dataclasses.asdict(scn)
    inputs.pop("published_tib")
    doc: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "units": UNITS_NOTE,
        "scenario": {"name": scn.name, "path": scn.path, "source": scn.source,
                     "published_tib": dict(scn.published_tib), "inputs": inputs},
        "sizing": _sizing_dict(sz),
        "lint": [f.as_dict() for f in findings],
        "measured": None,
        "sweep": None,
    }
    if measured is not None:
        doc["measured"] = {
            "sizing": _sizing_dict(measured.sizing),
            "replacements": [dataclasses.asdict(r) for r in measured.replacements],
            "capacity": [dataclasses.asdict(r) for r in measured.capacity],
            "reuse": {"prefix_tokens": measured.reuse_prefix_tokens,
                      "paths": [dataclasses.asdict(r) for r in measured.reuse],
                      "verdict": measured.reuse_verdict},
            "missing": [dataclasses.asdict(x) for x in measured.missing],
            "notes": list(measured.notes),
        }
    if sweep is not None:
        doc["sweep"] = {
            "key": sweep.key,
            "changes": SWEEP_KEYS[sweep.key],
            "scaling": dataclasses.asdict(scn.demand.sweep_scaling),
            "rows": [{"value": v, "tokens_per_request": s.q("tokens_per_request"),
                      "peak_day_tokens": s.q("peak_day_tokens"),
                      "kv_bytes_per_token": s.q("kv_bytes_per_token"),
                      "totals_tib": s.totals_tib}
                     for v, s in zip(sweep.values, sweep.sizings)],
        }
    return doc


# ------------------------------------------------------------------------ plot
def plot(path: str | Path, sz: Sizing, sweep: Sweep | None = None) -> Path:
    """PNG of tier totals (TiB, log scale) vs the swept value, or a bar per tier without a
    sweep. Written through a temp file and a rename, so no half-written PNG is left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if sweep is not None:
        xs = list(range(len(sweep.values))) if not sweep.numeric else list(sweep.values)
        for tier in TIERS:
            ys = [max(s.totals_tib[tier], 1e-3) for s in sweep.sizings]
            ax.plot(xs, ys, marker="o", label=TIER_LABELS[tier])
        if not sweep.numeric:
            ax.set_xticks(xs, [str(v) for v in sweep.values])
        elif max(sweep.values) / min(sweep.values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{sweep.key} ({SWEEP_KEYS[sweep.key].split(' (')[0]})")
        ax.legend()
        ax.set_title(f"{sz.scenario.name}: tier totals vs {sweep.key}")
    else:
        labels = [TIER_LABELS[t] for t in TIERS]
        ax.bar(labels, [max(sz.totals_tib[t], 1e-3) for t in TIERS])
        ax.set_title(f"{sz.scenario.name}: tier totals")
    ax.set_yscale("log")
    ax.set_ylabel("TiB (2^40 bytes), log scale")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
