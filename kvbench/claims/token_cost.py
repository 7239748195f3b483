"""Check ``token_cost``: device time per output token against per prompt token.

Measured only. Preferred, ``e2e`` (a whole model generating): per output token =
``tpot_s`` / batch (one decode step of the batch), per prompt token = ``ttft_s`` /
(batch x prompt tokens) (the prefill forward); DynamicCache's case first. Otherwise
``decode`` with ``prefix`` of the same result: per output token = a decode step's
``step_s`` / batch, which counts attention's KV reads alone (no weights, no MLP), so the
ratio is a lower bound; per prompt token = the prefix benchmark's ``recompute_s`` /
prefix tokens (QKV, attention, output projection and MLP of every layer).
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, NOT_MEASURED, NOT_SETTLED, REFUTED, Claim, Evaluation, Figure,
                                 Param, duration, measured, not_measured)
from kvbench.claims.evidence import Evidence, Result, cpu_caveat, measured_basis, metric, on_cpu
from kvbench.sizing.numbers import num

PARAMS = {
    "claimed_ratio": Param("number", help="how many times a prompt token's price an output token's is"),
    "tolerance": Param("fraction", 0.2, help="a measured ratio holds when at least this far below the claim"),
    "model": Param("text", "Llama-3.1-8B", help="the model of the commands shown when not measured"),
}


def _e2e(ev: Evidence) -> tuple[Result, dict, float, float, str] | None:
    """(result, case, s per output token, s per prompt token, shape) of the best e2e case."""
    rows = []
    for r, c in ev.cases("e2e"):
        cfg = c["config"]
        tpot, ttft = metric(c, "tpot_s"), metric(c, "ttft_s")
        batch, prompt = cfg.get("batch"), cfg.get("prompt_tokens")
        if None in (tpot, ttft) or not isinstance(batch, int) or not isinstance(prompt, int) or batch <= 0 \
                or prompt <= 0:
            continue
        rank = (on_cpu(r, c), bool(cfg.get("shrunk")), cfg.get("cache") != "dynamic")
        rows.append((rank, r, c, tpot / batch, ttft / (batch * prompt), f"batch {batch}, prompt {num(prompt)}"))
    return min(rows, key=lambda t: t[0])[1:] if rows else None


def _decode_prefix(ev: Evidence) -> tuple[Result, list[dict], float, float, str] | None:
    """(result, [decode case, prefix case], s per output token, s per prompt token, shape)."""
    place_rank = {"hbm": 0, "dram": 1}
    best = None
    for r, d in ev.cases("decode", fused=True):
        cfg, step = d["config"], metric(d, "step_s")
        if step is None or cfg.get("kind", "decode") != "decode" or not isinstance(cfg.get("batch"), int):
            continue
        prefixes = [(c, metric(c, "recompute_s")) for rr, c in ev.cases("prefix", source="recompute")
                    if rr.path == r.path and isinstance(c["config"].get("prefix_tokens"), int)]
        prefixes = [(c, s) for c, s in prefixes if s is not None]
        if not prefixes:
            continue
        ctx = cfg.get("context") or 0
        pc, rs = min(prefixes, key=lambda t: abs(t[0]["config"]["prefix_tokens"] - ctx))
        rank = (on_cpu(r, d), place_rank.get(cfg.get("placement"), 2), cfg.get("format") != "fp16", -ctx)
        row = (rank, r, [d, pc], step / cfg["batch"], rs / pc["config"]["prefix_tokens"],
               f"batch {cfg['batch']}, context {num(ctx)}; prefill of {num(pc['config']['prefix_tokens'])} tokens")
        if best is None or row[0] < best[0]:
            best = row
    return best[1:] if best else None


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    claimed, floor = p["claimed_ratio"], p["claimed_ratio"] * (1 - p["tolerance"])
    got = _e2e(ev)
    lower_bound = got is None
    if got is not None:
        r, case, out_s, in_s, shape = got
        cases = [case, case]
        hows = ["tpot_s / batch: one decode step of the whole model", "ttft_s / (batch x prompt tokens): the prefill"]
    else:
        got = _decode_prefix(ev)
        if got is None:
            cmd = f"kvbench run --model {p['model']} --bench e2e --format fp16 --cases '^dynamic$'"
            alt = f"or `kvbench run --model {p['model']} --bench decode,prefix --format fp16` (a lower bound)"
            fig = not_measured("device time per output token / per prompt token", cmd, alt, "on a GPU machine")
            return Evaluation(claim, (fig,), NOT_MEASURED, "needs e2e, or decode with prefix, results")
        r, cases, out_s, in_s, shape = got
        hows = ["step_s / batch: attention's KV reads only (no weights, no MLP), so a lower bound",
                "recompute_s / prefix tokens: QKV, attention, output projection and MLP of every layer"]
    ratio = out_s / in_s
    figures: tuple[Figure, ...] = (
        measured("device time per output token", f"{duration(out_s)} ({shape.split(';')[0]})",
                 measured_basis(r, [cases[0]], hows[0]), seconds=out_s),
        measured("device time per prompt token", duration(in_s), measured_basis(r, [cases[1]], hows[1]),
                 seconds=in_s),
        measured("output token / prompt token", f"{ratio:.3g}x (claimed {num(claimed)}x)"
                 + (", a lower bound" if lower_bound else ""), f"the two rows above; {shape}",
                 ratio=ratio, lower_bound=lower_bound),
    )
    said = f"an output token takes {ratio:.3g}x a prompt token's device time ({shape}) vs {num(claimed)}x claimed"
    if any(on_cpu(r, c) for c in cases):
        return Evaluation(claim, figures, NOT_SETTLED, f"{said}; {cpu_caveat(r)}")
    if not lower_bound and cases[0]["config"].get("shrunk"):
        return Evaluation(claim, figures, NOT_SETTLED, f"{said}; measured on a shrunk model")
    if ratio >= floor:
        return Evaluation(claim, figures, CONFIRMED, f"on {r.hardware}: {said}")
    if lower_bound:
        return Evaluation(claim, figures, NOT_SETTLED, f"on {r.hardware}: {said}; a lower bound below the claim "
                                                       "decides nothing (run e2e)")
    return Evaluation(claim, figures, REFUTED, f"on {r.hardware}: {said}")
