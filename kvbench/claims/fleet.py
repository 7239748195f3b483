"""Check ``fleet_totals``: a published fleet's tier totals against kvbench's reproduction of
the model behind them (kvbench.sizing: the scenario, its published rows, the lint that
finds the source's unit slip) and the corrected totals in bytes. Arithmetic only.

A total can be read two ways: the bytes its listed rows hold (``corrected``, decimal
PB / EB = 10^15 / 10^18 B), or the rows' count of TiB with a decimal prefix put on it,
TiB / 10^3 called "PB" and TiB / 10^6 called "EB", as the source writes its figures.
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, PARTLY, REFUTED, Claim, Evaluation, Figure, Param, arithmetic,
                                 decimal_size, within)
from kvbench.claims.evidence import Evidence
from kvbench.sizing.lint import lint
from kvbench.sizing.model import compute, published_comparison
from kvbench.sizing.numbers import num, plain
from kvbench.sizing.scenario import TIER_LABELS, load_scenario

PARAMS = {
    "scenario": Param("text", help="the scenario that reproduces the published model (never --scenario's)"),
    "claimed": Param("sizes", help="tier -> the claimed total, e.g. hbm: 200 PB"),
    "tolerance": Param("fraction", 0.10, help="a '~' figure holds within this relative distance"),
}

#: a TiB count read as TB: the source's reading of its own figures
TB_PER_TIB_COUNT = 10**12


def _reproduction(sz, name: str) -> list[Figure]:
    rows = published_comparison(sz)
    matched = sum(r.matches for r in rows)
    findings = lint(sz)
    slips = [f.check.removeprefix("unattributed_") for f in findings if f.check.startswith("unattributed_")]
    others = [f.check for f in findings if not f.check.startswith("unattributed_")]
    return [
        arithmetic("published rows reproduced", f"{matched} of {len(rows)}",
                   f"kvbench size --scenario {name}: each published row and total within 0.1%, or equal "
                   "in whole TiB", matched=matched, rows=len(rows)),
        arithmetic("the source's unit slip", "tier totals = listed rows x 2^40/10^12" if slips else "none found",
                   f"kvbench's lint finds it in {', '.join(slips) or 'no tier'}: each such total is its rows "
                   "(TiB) converted to TB and printed as TiB", tiers=slips),
        arithmetic("other contradictions the lint finds", str(len(others)), ", ".join(others) or "none",
                   checks=others),
    ]


def _tier_figure(sz, tier: str, claimed_text: str, tol: float) -> tuple[Figure, bool, bool]:
    claimed = decimal_size(claimed_text)
    rows_tib = sz.corrected_totals_tib[tier]
    held = sz.corrected_totals_bytes[tier]  # the bytes the listed rows hold
    as_source = rows_tib * TB_PER_TIB_COUNT  # the same count of TiB read as decimal units
    fig = arithmetic(
        f"{TIER_LABELS[tier]} total", f"{plain(held)} (claimed {claimed_text}; {plain(as_source)} in the "
                                      "source's units)",
        f"listed rows {num(round(rows_tib))} TiB = {plain(held)} (corrected, 1 TiB = 2^40 B); the same "
        f"count of TiB with a decimal prefix (TiB/10^3 'PB', TiB/10^6 'EB') = {plain(as_source)}; the "
        f"source's own total {num(round(sz.totals_tib[tier]))} TiB",
        tier=tier, claimed_bytes=claimed, corrected_bytes=held, source_units_bytes=as_source,
        source_total_tib=sz.totals_tib[tier])
    return fig, within(held, claimed, tol), within(as_source, claimed, tol)


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    scn = load_scenario(p["scenario"])  # the source's own model: --scenario does not apply
    sz = compute(scn)
    figures = _reproduction(sz, scn.name)
    in_bytes, in_source_units, corrected = [], [], []
    for tier, text in p["claimed"].items():
        fig, bytes_ok, source_ok = _tier_figure(sz, tier, text, p["tolerance"])
        figures.append(fig)
        corrected.append(f"{TIER_LABELS[tier]} {plain(sz.corrected_totals_bytes[tier])}")
        if bytes_ok:
            in_bytes.append(tier)
        elif source_ok:
            in_source_units.append(tier)
    reproduced = figures[0].data["matched"] == figures[0].data["rows"]
    neither = [t for t in p["claimed"] if t not in in_bytes and t not in in_source_units]
    if not reproduced:
        verdict, reason = REFUTED, (f"kvbench does not reproduce the model behind the figures "
                                    f"({figures[0].value} published rows)")
    elif len(in_bytes) == len(p["claimed"]):
        verdict, reason = CONFIRMED, f"reproduced; in bytes: {', '.join(corrected)}"
    else:
        verdict = PARTLY
        reason = (f"the model reproduces ({figures[0].value} published rows), but in bytes the fleet's "
                  f"tiers hold {', '.join(corrected)}")
        if in_source_units:
            reason += (f"; the claimed {', '.join(TIER_LABELS[t] for t in in_source_units)} figures are the "
                       "rows' TiB counts with a decimal prefix (the source's unit slip)")
        if neither:
            reason += f"; {', '.join(TIER_LABELS[t] for t in neither)}: matches neither reading"
    return Evaluation(claim, tuple(figures), verdict, reason,
                      notes=(f"tolerance: {p['tolerance']:.0%} ('~')",))
