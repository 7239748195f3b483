"""``kvbench size --model M [--format F]`` and ``--compare-models A,B,...``: a scenario
re-sized for another model shape and KV format, and tier totals side by side.

Everything else the scenario assumes (demand, placement, fleet, weights, datalake) is
kept; the KV bytes per token come from the model's components at the scenario's context
(tokens/request), exactly as for the scenario's own model. A re-sized scenario is no
longer the one its published figures describe, so they are not compared. Pure Python.
"""

from __future__ import annotations

import dataclasses

from kvbench.errors import KvbenchError
from kvbench.sizing.model import Sizing, compute
from kvbench.sizing.fields import to_number
from kvbench.sizing.numbers import num, plain, tib_str
from kvbench.sizing.scenario import TIER_LABELS, TIERS, Scenario
from kvbench.spec import load_model, resolve_format


def retarget(scn: Scenario, model: str | None = None, fmt: str | None = None) -> Scenario:
    """``scn`` for ``model`` (a configs/models name) in ``fmt`` (a kvbench format or
    "shipped"); None keeps the scenario's. One-line KvbenchError when the model cannot be
    stored in the format, or the scenario derives weights from a parameter count the
    model's file does not give."""
    spec = load_model(model) if model else scn.model
    name = fmt or scn.kv_format
    try:
        spec.check_format(resolve_format(name))
    except KvbenchError as exc:
        raise KvbenchError(f"--format {name} for {spec.name}: {exc}") from None
    w = scn.weights
    if (w.bytes_per_param is not None and w.params is None
            and to_number(spec.extra.get("params_total")) is None):
        raise KvbenchError(
            f"--model {spec.name}: scenario {scn.name} derives weights from the model's parameter "
            f"count (kvbench.params_total), which configs/models/{spec.name}.yaml does not give; "
            "use a scenario with given weights (total or per GPU) or model.weights.params")
    if spec.name == scn.model_name and name == scn.kv_format:
        return scn
    return dataclasses.replace(scn, model_name=spec.name, kv_format=name, published_tib={})


def parse_models(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise KvbenchError("--compare-models is empty: give model names separated by commas")
    return names


def compare(scn: Scenario, models: list[str], fmt: str | None = None) -> list[Sizing]:
    """One sizing per model, each ``retarget``-ed (same format for all: ``fmt`` or the
    scenario's)."""
    return [compute(retarget(scn, m, fmt)) for m in models]


def compare_table(sizings: list[Sizing]):
    """Tier totals (TiB, 2^40 B, and plain units) and the KV figures behind them, one
    column per model."""
    from rich.table import Table

    first = sizings[0].scenario
    t = Table(title=f"kvbench size: {first.name} re-sized per model (demand, placement, fleet and "
                    "weights as the scenario gives them)")
    t.add_column("")
    for sz in sizings:
        t.add_column(f"{sz.scenario.model_name}\n{sz.scenario.kv_format}", justify="right")
    tpr = sizings[0].q("tokens_per_request")
    t.add_row(f"KV B/token at {num(tpr)} tok/request", *[num(round(s.q("kv_bytes_per_token"), 2)) for s in sizings])
    t.add_row("KV B/sequence constant", *[num(s.q("kv_bytes_per_sequence_constant", 0.0)) for s in sizings])
    t.add_row("live KV", *[f"{tib_str(s.q('live_kv_bytes'))} TiB" for s in sizings])
    t.add_row("KV reuse cache", *[f"{tib_str(s.q('reuse_kv_bytes'))} TiB" for s in sizings])
    t.add_section()
    slip = any(s.has_source_slip for s in sizings)
    for tier in TIERS:
        label = TIER_LABELS[tier] + (" (corrected)" if slip else "")
        t.add_row(label, *[f"{tib_str(s.corrected_totals_bytes[tier])} TiB = "
                           f"{plain(s.corrected_totals_bytes[tier])}" for s in sizings])
    if slip:
        t.add_section()
        for tier in TIERS:
            t.add_row(TIER_LABELS[tier] + " (as the source computed)",
                      *[f"{tib_str(s.totals_bytes[tier])} TiB" for s in sizings])
    return t


def compare_json(sizings: list[Sizing]) -> dict:
    return {"scenario": sizings[0].scenario.name,
            "models": [{"model": s.scenario.model_name, "kv_format": s.scenario.kv_format,
                        "kv_bytes_per_token": s.q("kv_bytes_per_token"),
                        "kv_bytes_per_sequence_constant": s.q("kv_bytes_per_sequence_constant", 0.0),
                        "totals_tib": s.totals_tib, "corrected_totals_tib": s.corrected_totals_tib}
                       for s in sizings]}
