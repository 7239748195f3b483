"""Check ``kv_ratio``: one model's KV cache as a fraction of another's at a context length,
from the model shapes (kvbench.spec: every component, exact at that context). Arithmetic
only: ``kvbench info --model M --context N`` prints the same bytes.
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, PARTLY, REFUTED, Claim, Evaluation, Figure, Param, arithmetic,
                                 pct, within)
from kvbench.claims.evidence import Evidence
from kvbench.sizing.numbers import num, plain
from kvbench.spec import load_model, resolve_format

PARAMS = {
    "base": Param("text", help="the model the fractions are of (a configs/models name)"),
    "claimed_fractions": Param("fractions", help="model -> the fraction of the base's KV cache claimed"),
    "context_tokens": Param("number", help="tokens of the one sequence compared"),
    "format": Param("text", "shipped", help="the KV format the claim is judged in ('shipped': as each "
                                            "model ships each component)"),
    "also_formats": Param("names", [], help="formats shown beside it, not judged"),
    "tolerance": Param("fraction", 0.10, help="a claimed fraction holds within this relative distance"),
}


def _ratio_figure(base, model, tokens: int, fmt: str, claimed: float) -> tuple[Figure, float]:
    f = resolve_format(fmt)
    base_b, b = base.kv_bytes_for_sequence(tokens, f), model.kv_bytes_for_sequence(tokens, f)
    ratio = b / base_b
    fig = arithmetic(
        f"{model.name} / {base.name} KV at {num(tokens)} tokens ({fmt})",
        f"{pct(ratio, 4)} (claimed {pct(claimed)})",
        f"bytes of one {num(tokens)}-token sequence, every component (kvbench info --model M "
        f"--context {tokens}): {num(b)} B ({plain(b)}) / {num(base_b)} B ({plain(base_b)})",
        ratio=ratio, claimed=claimed, bytes=b, base_bytes=base_b, format=fmt, tokens=tokens)
    return fig, ratio


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    base, tokens, tol = load_model(p["base"]), int(p["context_tokens"]), p["tolerance"]
    figures: list[Figure] = []
    judged: list[tuple[str, float, float]] = []
    others: list[str] = []
    for fmt in [p["format"], *p["also_formats"]]:
        for name, claimed in p["claimed_fractions"].items():
            model = load_model(name)
            fig, ratio = _ratio_figure(base, model, tokens, fmt, claimed)
            figures.append(fig)
            if fmt == p["format"]:
                judged.append((model.name, ratio, claimed))
            else:
                others.append(f"{model.name} {pct(ratio)}")
    held = [j for j in judged if within(j[1], j[2], tol)]
    said = "; ".join(f"{n}: {pct(r)} vs {pct(c)} claimed" for n, r, c in judged)
    verdict = CONFIRMED if len(held) == len(judged) else REFUTED if not held else PARTLY
    reason = (f"{p['format']}, {num(tokens)} tokens: {said} "
              f"({len(held)} of {len(judged)} within {pct(tol)} of the claimed fraction)")
    if others:
        reason += f"; in {', '.join(p['also_formats'])} (not judged): {', '.join(others)}"
    return Evaluation(claim, tuple(figures), verdict, reason)
