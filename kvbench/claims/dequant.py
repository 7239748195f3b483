"""Check ``dequant_share``: what dequantizing a low-bit KV cache costs in a decode step.

Measured only, from ``decode`` results on a GPU: the ``hbm`` placement's unfused cases
(``.../unfused``: pages dequantized to bf16 by their own kernel, then attention) record
``dequant_share``, the dequantization's share of the step (per pair of the dequantization
alone and the unfused step); the fused cases of a quantized format record
``pct_of_roofline``, their KV-read rate as a share of a paired device copy's, so the
fused kernel's time over the bytes floor (KV bytes / the copy's rate) is
100 / pct_of_roofline - 1. A decode step here is attention only (no weights, no MLP).
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, NOT_MEASURED, NOT_SETTLED, PARTLY, REFUTED, Claim, Evaluation,
                                 Figure, Param, measured, not_measured, pct)
from kvbench.claims.evidence import Evidence, cpu_caveat, measured_basis, metric, on_cpu
from kvbench.spec import FORMATS

PARAMS = {
    "claimed_share": Param("fraction", help="the share of the time the claim says dequantization can take"),
    "refute_below": Param("fraction", help="a largest measured share below this refutes the claim"),
    "formats": Param("names", help="the quantized formats the command shown measures"),
}


def _command(formats: list[str]) -> str:
    return f"kvbench run --bench decode --format {','.join(['fp16', *formats])} --cases '^hbm/'"


def _shape(cfg: dict) -> str:
    return f"batch {cfg.get('batch')} x context {cfg.get('context')}"


def _by_format(ev: Evidence, fused: bool, key: str) -> dict[str, list[tuple[float, object, dict]]]:
    """format -> [(metric, result, case)] of hbm decode cases of quantized formats."""
    out: dict[str, list] = {}
    for r, c in ev.cases("decode", placement="hbm", fused=fused):
        fmt = c["config"].get("format")
        v = metric(c, key)
        if v is not None and fmt in FORMATS and FORMATS[fmt].quantized:
            out.setdefault(fmt, []).append((v, r, c))
    return out


def _share_figures(ev: Evidence) -> tuple[list[Figure], list[tuple[float, str, object, dict]]]:
    figures, best = [], []
    for fmt, rows in _by_format(ev, False, "dequant_share").items():
        share, r, c = max(rows, key=lambda t: t[0])
        best.append((share, fmt, r, c))
        figures.append(measured(
            f"unfused dequantize, share of a decode step ({fmt})",
            f"{pct(share)} at most (of {len(rows)} case{'s' * (len(rows) > 1)}; {_shape(c['config'])})",
            measured_basis(r, [c], "dequant_share: per pair, the dequantization alone / the unfused step"),
            share=share, format=fmt))
    return figures, best


def _overhead_figures(ev: Evidence) -> list[Figure]:
    figures = []
    for fmt, rows in _by_format(ev, True, "pct_of_roofline").items():
        over = sorted((100.0 / v - 1.0, r, c) for v, r, c in rows)
        lo, hi = over[0], over[-1]
        span = f"{lo[0]:+.1%}" if len(over) == 1 else f"{lo[0]:+.1%} to {hi[0]:+.1%} over {len(over)} cases"
        figures.append(measured(
            f"fused kernel's step time over the bytes floor ({fmt})", span,
            measured_basis(lo[1], [c for _, _, c in over],
                           "100 / pct_of_roofline - 1; floor: KV bytes / a paired device copy's rate"),
            overhead_min=lo[0], overhead_max=hi[0], format=fmt))
    return figures


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    figures, best = _share_figures(ev)
    figures += _overhead_figures(ev)
    if not best:
        figures.append(not_measured("unfused dequantize's share of a decode step; fused kernel over the bytes floor",
                                    _command(p["formats"]), ev.skip_reason("decode", "hbm"), "on a GPU machine"))
        return Evaluation(claim, tuple(figures), NOT_MEASURED,
                          "needs the decode benchmark's unfused hbm cases, which run on a GPU")
    share, fmt, r, c = max(best, key=lambda t: t[0])
    said = (f"an unfused dequantize takes at most {pct(share)} of a decode attention step ({fmt}, "
            f"{_shape(c['config'])}) vs {pct(p['claimed_share'])} claimed")
    if any(on_cpu(rr, cc) for _, _, rr, cc in best):
        return Evaluation(claim, tuple(figures), NOT_SETTLED, f"{said}; {cpu_caveat(r)}")
    scope = "; kvbench times the KV cache's dequantization, in attention only (no weights or MLP in the step)"
    if share >= p["claimed_share"]:
        verdict = CONFIRMED
    elif share < p["refute_below"]:
        verdict = REFUTED
    else:
        verdict = PARTLY
    return Evaluation(claim, tuple(figures), verdict, f"on {r.hardware}: {said}{scope}")
