"""Sweeps: size a scenario once per value of one input and collect the tier totals.

``--sweep KEY=V1,V2,...``. Keys and what they change:

  input_tokens   demand.input_tokens_per_request; RAG tokens, output tokens and a given
                 peak-day count follow demand.sweep_scaling (see scenario.SweepScaling)
  rag_tokens     demand.rag_tokens_per_request; a given peak-day count per sweep_scaling
  output_tokens  demand.output_tokens_per_request; a given peak-day count per sweep_scaling
  peak_qps       demand.peak_qps (derived counts follow; given counts stay)
  format         kv.format (KV bytes/token follow)
  hot_window     placement.hot_window_tokens
  gpus           fleet.gpus

Every point is a full ``compute``, so each derived figure follows, the source's arithmetic
included (unattributed.rule: source_unit_slip recomputes the unit slip from each point's
rows). ``rules_in_force`` says, per key, what follows and by which rule (``--explain``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvbench.errors import KvbenchError
from kvbench.sizing.model import Sizing, compute
from kvbench.sizing.numbers import num
from kvbench.sizing.scenario import SCALING_RULES, Scenario
from kvbench.spec import resolve_format

SWEEP_KEYS = {
    "input_tokens": "demand.input_tokens_per_request (RAG, output, peak-day tokens per demand.sweep_scaling)",
    "rag_tokens": "demand.rag_tokens_per_request (peak-day tokens per demand.sweep_scaling)",
    "output_tokens": "demand.output_tokens_per_request (peak-day tokens per demand.sweep_scaling)",
    "peak_qps": "demand.peak_qps",
    "format": "kv.format",
    "hot_window": "placement.hot_window_tokens",
    "gpus": "fleet.gpus",
}
#: sweeps that change tokens/request, so a given peak-day count follows sweep_scaling
_TOKEN_KEYS = ("input_tokens", "rag_tokens", "output_tokens")


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple
    sizings: tuple[Sizing, ...]

    @property
    def numeric(self) -> bool:
        return self.key != "format"


@dataclass(frozen=True)
class SweepRule:
    """What one sweep key sets and what follows it, with the rule in force."""

    key: str
    sets: str
    follows: tuple[str, ...]


def parse_sweep(text: str) -> tuple[str, list]:
    """'input_tokens=2000,5000' -> ('input_tokens', [2000.0, 5000.0])."""
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not rest.strip():
        raise KvbenchError(f"--sweep {text!r}: expected KEY=V1,V2,... (keys: {', '.join(SWEEP_KEYS)})")
    if key not in SWEEP_KEYS:
        raise KvbenchError(f"--sweep: unknown key {key!r}; known: {', '.join(SWEEP_KEYS)}")
    raw = [v.strip() for v in rest.split(",") if v.strip()]
    if key == "format":  # a kvbench format or "shipped" (checked against the model when sized)
        for v in raw:
            resolve_format(v)
        return key, raw
    values = []
    for v in raw:
        try:
            x = float(v.replace("_", ""))
        except ValueError:
            raise KvbenchError(f"--sweep {key}: {v!r} is not a number") from None
        if not x > 0:
            raise KvbenchError(f"--sweep {key}: values must be > 0 (got {v})")
        values.append(x)
    return key, values


def _token_demand(scn: Scenario, key: str, value: float):
    """Demand with one token count changed and its followers per demand.sweep_scaling."""
    d, s = scn.demand, scn.demand.sweep_scaling
    inp, rag, out = d.input_tokens_per_request, d.rag_tokens_per_request, d.output_tokens_per_request
    if key == "input_tokens":
        factor = value / inp
        inp = value
        rag = rag * (factor if s.rag_tokens == "ratio" else 1)
        out = out * (factor if s.output_tokens == "ratio" else 1)
    elif key == "rag_tokens":
        rag = value
    else:
        out = value
    day = d.peak_day_tokens
    if day is not None and s.peak_day_tokens == "per_request":
        day = day * (inp + rag + out) / d.tokens_per_request
    return dataclasses.replace(d, input_tokens_per_request=inp, rag_tokens_per_request=rag,
                               output_tokens_per_request=out, peak_day_tokens=day)


def apply(scn: Scenario, key: str, value) -> Scenario:
    """The scenario with one input changed (and its documented followers)."""
    rep = dataclasses.replace
    if key in _TOKEN_KEYS:
        return rep(scn, demand=_token_demand(scn, key, value))
    if key == "peak_qps":
        return rep(scn, demand=rep(scn.demand, peak_qps=value))
    if key == "format":
        return rep(scn, kv_format=value)
    if key == "hot_window":
        return rep(scn, placement=rep(scn.placement, hot_window_tokens=value))
    if key == "gpus":
        return rep(scn, fleet=rep(scn.fleet, gpus=value))
    raise KvbenchError(f"--sweep: unknown key {key!r}")


def run_sweep(scn: Scenario, key: str, values: list, *, kv_bytes_per_token_scale: float = 1.0) -> Sweep:
    """Size ``scn`` at each value. ``kv_bytes_per_token_scale`` (measured / arithmetic
    bytes per token, from measured mode) is applied to every point."""
    sizings = []
    for v in values:
        s = apply(scn, key, v)
        if kv_bytes_per_token_scale != 1.0:
            bpt = s.model.kv_bytes_per_token_at(s.demand.tokens_per_request, s.fmt) * kv_bytes_per_token_scale
            sizings.append(compute(s, kv_bytes_per_token=bpt, kv_source="measured, scaled"))
        else:
            sizings.append(compute(s))
    return Sweep(key, tuple(values), tuple(sizings))


# ------------------------------------------------------------------------ rules in force
def _rule(name: str, rule: str) -> str:
    others = "|".join(r for r in SCALING_RULES[name] if r != rule)
    return f"{rule} (demand.sweep_scaling.{name}; other: {others})"


def _follower(label: str, name: str, count: float, ratio: str, rule: str) -> str:
    """'RAG tokens: stay 4,000: fixed (demand.sweep_scaling.rag_tokens; also: ratio)'."""
    how = f"stay {num(count)}" if rule == "fixed" else f"keep {ratio}"
    return f"{label}: {how}: {_rule(name, rule)}"


def _peak_day_follows(scn: Scenario) -> str:
    d = scn.demand
    if d.peak_day_tokens is None:
        return "peak-day tokens: derived (QPS x tokens/request x 86,400 s), follow"
    rule = d.sweep_scaling.peak_day_tokens
    how = (f"given {num(d.peak_day_tokens)} x new / {num(d.tokens_per_request)} tokens per request"
           if rule == "per_request" else f"stay {num(d.peak_day_tokens)}")
    return f"peak-day tokens: {how}: {_rule('peak_day_tokens', rule)}"


def _given_or_follows(label: str, given: float | None, how: str) -> str:
    return f"{label}: given, stay {num(given)}" if given is not None else f"{label}: derived ({how}), follow"


def rules_in_force(scn: Scenario) -> list[SweepRule]:
    """For each sweep key: what it sets and what follows, by the scenario's rules."""
    d, s, p = scn.demand, scn.demand.sweep_scaling, scn.placement
    rag = _follower("RAG tokens", "rag_tokens", d.rag_tokens_per_request,
                    f"RAG:input {d.rag_tokens_per_request / d.input_tokens_per_request:.3g}:1", s.rag_tokens)
    out = _follower("output tokens", "output_tokens", d.output_tokens_per_request,
                    f"input:output {d.input_tokens_per_request / d.output_tokens_per_request:.3g}:1",
                    s.output_tokens)
    live = f"live KV: min(hot window {num(p.hot_window_tokens)}, tokens/request) per active sequence"
    slip = ("tier totals: as the source computed (listed rows x 2^40/10^12, recomputed at each "
            "point) and corrected (rows only)" if scn.unattributed_rule == "source_unit_slip" else
            "tier totals: sum of rows (unattributed amounts, if any, stay as given)")
    decode = _given_or_follows("active decode sequences", d.active_decode_sequences, "QPS x output / decode tok/s")
    prefill = _given_or_follows("active prefill sequences", d.active_prefill_sequences, "QPS x TTFT")
    weights = ("weights: fleet total given, stay" if scn.weights.total_bytes is not None
               else "weights: per GPU or per replica, follow GPUs")
    return [
        SweepRule("input_tokens", "demand.input_tokens_per_request", (rag, out, _peak_day_follows(scn), live, slip)),
        SweepRule("rag_tokens", "demand.rag_tokens_per_request", (_peak_day_follows(scn), live, slip)),
        SweepRule("output_tokens", "demand.output_tokens_per_request",
                  (_peak_day_follows(scn), decode, live, slip)),
        SweepRule("peak_qps", "demand.peak_qps", (
            "peak-day tokens: " + ("derived, follow" if d.peak_day_tokens is None else
                                   f"given, stay {num(d.peak_day_tokens)}"), prefill, decode, slip)),
        SweepRule("format", "kv.format", ("KV bytes/token, live KV and reuse cache follow", slip)),
        SweepRule("hot_window", "placement.hot_window_tokens", (live, slip)),
        SweepRule("gpus", "fleet.gpus", ("GPU overheads follow; fleet.nodes stays", weights, slip)),
    ]
