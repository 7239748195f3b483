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
from kvbench.sizing.numbers import SOURCE_EB_TIB, num, plain, seconds, sig3, tib, tib_str, usd
from kvbench.sizing.scenario import TIER_LABELS, TIERS
from kvbench.sizing.sweep import SWEEP_KEYS, Sweep, rules_in_force

#: /2: tiers by kvbench's names (nvme, remote; were ssd, datalake), line ids reuse_nvme and
#: unattributed_nvme (were reuse_ssd, unattributed_ssd)
JSON_SCHEMA = "kvbench.sizing/2"
UNITS_NOTE = ("TiB = 2^40 B (the source's unit; its 'PiB' column is TiB / 1000); "
              "PB = 10^15 B, EB = 10^18 B; prices per GB, GB = 10^9 B")
SLIP_NOTE = ("'as the source computed': the source's arithmetic, listed rows x 2^40/10^12 (its TiB rows "
             "in TB, printed as TiB); 'corrected': the rows alone, the bytes they hold")


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

    def row(tier_label, label, key, a_bytes, m_bytes, cost=None, bold=False, storage=True):
        cells = [tier_label, label]
        if measured is not None:
            cells.append(tib_str(a_bytes))
        cells += [tib_str(m_bytes), plain(m_bytes) if storage else ""]
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
            row(TIER_LABELS[tier], it.label, it.id, it.bytes, m_bytes, storage=not it.source_only)
        slip = _tier_has_slip(sz, tier)
        row(TIER_LABELS[tier], "total, as the source computed" if slip else "total", f"total_{tier}",
            sz.totals_bytes[tier], show.totals_bytes[tier], cost=show.costs_usd.get(tier), bold=True)
        if slip:
            row(TIER_LABELS[tier], "total, corrected (no unit slip)", None, sz.corrected_totals_bytes[tier],
                show.corrected_totals_bytes[tier], cost=show.corrected_costs_usd.get(tier), bold=True)
        t.add_section()
    return t


def _tier_has_slip(sz: Sizing, tier: str) -> bool:
    return any(it.source_only and it.bytes for it in sz.tier_items(tier))


def units_note(sz: Sizing) -> str:
    note = UNITS_NOTE
    if sz.scenario.published_tib:
        note += ("\n'ok' vs published: within 0.1% of the published figure, or equal at its "
                 "printed precision (whole TiB)")
    if sz.has_source_slip:
        note += "\n" + SLIP_NOTE
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
        if not _tier_has_slip(sz, tier):
            f.add_row(f"{TIER_LABELS[tier]}: total", tib_str(sz.totals_bytes[tier]), f"sum of rows = {parts}", "")
            continue
        rows = " + ".join(tib_str(it.bytes) for it in sz.tier_items(tier) if not it.source_only)
        f.add_row(f"{TIER_LABELS[tier]}: total, as the source computed", tib_str(sz.totals_bytes[tier]),
                  f"sum of rows, its unit slip included = {parts} (= rows x 2^40/10^12)",
                  sz.scenario.unattributed_provenance)
        f.add_row(f"{TIER_LABELS[tier]}: total, corrected", tib_str(sz.corrected_totals_bytes[tier]),
                  f"sum of rows without the unit slip = {rows} "
                  f"({plain(sz.corrected_totals_bytes[tier])})", "")
    return q, f, sweep_rules_table(sz.scenario)


def sweep_rules_table(scn):
    """What each --sweep key sets and what follows it, by the scenario's rules in force."""
    from rich.table import Table

    prov = scn.demand.sweep_scaling.provenance
    t = Table(title="Sweep rules in force (--sweep KEY=V1,V2,...)",
              caption=f"demand.sweep_scaling provenance: {prov}" if prov else
              "demand.sweep_scaling: no provenance given (kvbench defaults)")
    for col in ("key", "sets", "what follows (rule in force)"):
        t.add_column(col, overflow="fold")
    for r in rules_in_force(scn):
        t.add_row(r.key, r.sets, "\n".join(r.follows))
    return t


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


def _sweep_arithmetics(sw: Sweep) -> list[tuple[str, str]]:
    """(label, Sizing attribute) of the totals a sweep shows: the source's and the corrected
    ones where a point carries the source's unit slip, else the one sum of rows."""
    if any(s.has_source_slip for s in sw.sizings):
        return [("as the source computed", "totals_bytes"), ("corrected", "corrected_totals_bytes")]
    return [("", "totals_bytes")]


def _sweep_note(sw: Sweep) -> str:
    scn = sw.sizings[0].scenario
    note = SWEEP_KEYS[sw.key]
    if sw.key in ("input_tokens", "rag_tokens", "output_tokens"):
        s = scn.demand.sweep_scaling
        note += (f"; rag_tokens: {s.rag_tokens}, output_tokens: {s.output_tokens}, "
                 f"peak_day_tokens: {s.peak_day_tokens} (--explain: sweep rules)")
    return note


def sweep_table(sw: Sweep):
    """Tier totals (TiB) per swept value; two rows per value (as the source computed,
    corrected) where the scenario reproduces the source's unit slip."""
    from rich.table import Table

    arithmetics = _sweep_arithmetics(sw)
    both = len(arithmetics) > 1
    caption = f"{_sweep_note(sw)}. {UNITS_NOTE}" + (f". {SLIP_NOTE}" if both else "")
    t = Table(title=f"Sweep of {sw.key}: tier totals (TiB)", caption=caption)
    t.add_column(sw.key, justify="right")
    if sw.key in ("input_tokens", "rag_tokens", "output_tokens"):
        t.add_column("tokens/req", justify="right")
    if both:
        t.add_column("totals")
    for tier in TIERS:
        t.add_column(f"{TIER_LABELS[tier]} TiB", justify="right")
    t.add_column("all tiers (plain)", justify="right")
    for v, sz in zip(sw.values, sw.sizings):
        for label, attr in arithmetics:
            totals = getattr(sz, attr)
            cells = [num(v) if sw.numeric else str(v)]
            if sw.key in ("input_tokens", "rag_tokens", "output_tokens"):
                cells.append(num(round(sz.q("tokens_per_request"), 1)))
            cells += [label] if both else []
            cells += [tib_str(totals[t_]) for t_ in TIERS]
            cells.append(plain(sum(totals.values())))
            t.add_row(*cells)
        if both:
            t.add_section()
    return t


def sweep_change_table(sw: Sweep):
    """Each point's change in tier totals from the first; None for a one-point sweep. Where
    the scenario reproduces the source, in 10^6 TiB (the source's "EB", as in its Exhibit
    12), as the source computed it and corrected; otherwise in TiB."""
    from rich.table import Table

    if len(sw.sizings) < 2:
        return None
    arithmetics = _sweep_arithmetics(sw)
    both = len(arithmetics) > 1
    first = sw.sizings[0]
    start = num(sw.values[0]) if sw.numeric else sw.values[0]
    if both:
        unit, caption = "10^6 TiB: the source's 'EB'", ("the source's 'EB' is its TiB / 10^6 (its 'PiB' is "
                                                       f"TiB / 1000). {SLIP_NOTE}; ")
    else:
        unit, caption = "TiB", ""
    t = Table(title=f"Sweep of {sw.key}: change from {sw.key}={start} ({unit})",
              caption=caption + "'plain': the change in bytes of the corrected totals, EB = 10^18 B")
    t.add_column(sw.key, justify="right")
    if both:
        t.add_column("totals")
    for tier in TIERS:
        t.add_column(f"{TIER_LABELS[tier]}", justify="right")
    t.add_column("all tiers (plain)", justify="right")
    for v, sz in zip(sw.values[1:], sw.sizings[1:]):
        for label, attr in arithmetics:
            now, then = getattr(sz, attr), getattr(first, attr)
            cells = [num(v) if sw.numeric else str(v)] + ([label] if both else [])
            for tier in TIERS:
                change = now[tier] - then[tier]
                cells.append(f"{tib(change) / SOURCE_EB_TIB:+,.3f}" if both else
                             ("+" if change >= 0 else "-") + tib_str(abs(change)))
            if attr == "corrected_totals_bytes" or not both:  # bytes: the corrected totals
                change = sum(sz.corrected_totals_bytes.values()) - sum(first.corrected_totals_bytes.values())
                cells.append(("+" if change >= 0 else "-") + plain(abs(change)))
            else:
                cells.append("")
            t.add_row(*cells)
        if both:
            t.add_section()
    return t


# ------------------------------------------------------------------------ JSON
#: what "totals" (bytes, tib) hold; "corrected_*" is always the sum of rows without a unit slip
_TOTALS_ARITHMETIC = {
    True: "as the source computed: listed rows x 2^40/10^12 (unattributed.rule: source_unit_slip)",
    False: "sum of rows (equal to corrected)",
}


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
             "formula": it.formula, "provenance": it.provenance, "source_only": it.source_only,
             **pubinfo(it.id)}
            for it in sz.items
        ],
        "totals": {t: {"bytes": b, "tib": tib(b), "corrected_bytes": sz.corrected_totals_bytes[t],
                       "corrected_tib": sz.corrected_totals_tib[t], **pubinfo(f"total_{t}")}
                   for t, b in sz.totals_bytes.items()},
        "totals_arithmetic": _TOTALS_ARITHMETIC[sz.has_source_slip],
        "costs_usd": dict(sz.costs_usd),
        "corrected_costs_usd": sz.corrected_costs_usd,
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
            "rules": [dataclasses.asdict(r) for r in rules_in_force(scn)],
            "totals_arithmetic": _TOTALS_ARITHMETIC[any(s.has_source_slip for s in sweep.sizings)],
            "rows": [{"value": v, "tokens_per_request": s.q("tokens_per_request"),
                      "rag_tokens_per_request": s.scenario.demand.rag_tokens_per_request,
                      "output_tokens_per_request": s.scenario.demand.output_tokens_per_request,
                      "peak_day_tokens": s.q("peak_day_tokens"),
                      "kv_bytes_per_token": s.q("kv_bytes_per_token"),
                      "totals_tib": s.totals_tib, "corrected_totals_tib": s.corrected_totals_tib}
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
        slip = any(s.has_source_slip for s in sweep.sizings)
        for tier in TIERS:
            ys = [max(s.corrected_totals_tib[tier], 1e-3) for s in sweep.sizings]
            line, = ax.plot(xs, ys, marker="o", label=TIER_LABELS[tier] + (", corrected" if slip else ""))
            if slip and any(s.totals_bytes[tier] != s.corrected_totals_bytes[tier] for s in sweep.sizings):
                ax.plot(xs, [max(s.totals_tib[tier], 1e-3) for s in sweep.sizings], linestyle="--",
                        color=line.get_color(), label=TIER_LABELS[tier] + ", as the source computed")
        if not sweep.numeric:
            ax.set_xticks(xs, [str(v) for v in sweep.values])
        elif max(sweep.values) / min(sweep.values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(f"{sweep.key} ({SWEEP_KEYS[sweep.key].split(' (')[0]})")
        ax.legend(fontsize="small")
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
