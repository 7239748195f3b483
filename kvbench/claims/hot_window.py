"""Check ``hot_window``: a window of each sequence's most recent tokens kept in HBM.

Arithmetic (kvbench.sizing): for a scenario, the HBM left per GPU after overheads and
weights, against the KV of every active sequence's window (the whole window in HBM, as
the claim has it), per window size; the largest window that fits. Measured: decode
tokens/s of the ``hot_window`` placement against all pages in HBM (``hbm``), same format
and context, from ``decode`` results (GPU only: both placements need CUDA).
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, NOT_MEASURED, NOT_SETTLED, PARTLY, REFUTED, Claim, Evaluation, Figure, Param,
                                 arithmetic, measured, not_measured)
from kvbench.claims.evidence import Evidence, measured_basis, metric
from kvbench.sizing.model import compute, hbm_left_per_gpu
from kvbench.sizing.numbers import num, plain
from kvbench.sizing.scenario import load_scenario
from kvbench.spec import FORMATS

PARAMS = {
    "scenario": Param("text", help="the scenario whose fleet, model and demand are sized (--scenario replaces it)"),
    "windows_tokens": Param("numbers", help="window sizes to check, tokens"),
    "min_rate_vs_hbm": Param("fraction", help="the hot-window placement works when it keeps at least this "
                                              "fraction of the all-HBM decode rate"),
    "decode_format": Param("text", "fp16", help="the decode command's format when the scenario's is 'shipped'"),
}


def _command(scn, fallback_format: str, window: int) -> str:
    """The decode run comparing the two placements for the scenario's model and format."""
    fmt = scn.kv_format if scn.kv_format in FORMATS else fallback_format
    return (f"kvbench run --model {scn.model_name} --bench decode --format {fmt} --set "
            f"decode.hbm.shapes=8x8192 --set decode.hot_window={window} --cases '^(hbm|hot_window)/{fmt}/8x8192$'")


def _fit_figures(sz, windows: list[int]) -> tuple[list[Figure], list[bool]]:
    scn = sz.scenario
    fl = scn.fleet
    left = hbm_left_per_gpu(sz)
    weights_gpu = sz.q("weights_bytes") / fl.gpus
    seqs = sz.q("active_sequences") / fl.gpus
    bpt, const = sz.q("kv_bytes_per_token"), sz.q("kv_bytes_per_sequence_constant", 0.0)
    figures = [arithmetic(
        "HBM left per GPU after overheads and weights", plain(left),
        f"scenario {scn.name}: HBM/GPU {plain(fl.hbm_per_gpu_bytes)} - overhead {plain(fl.overhead_per_gpu_bytes)}"
        f" - weights {plain(weights_gpu)} (fleet weights / {num(fl.gpus)} GPUs)", bytes=left,
        hbm_bytes=fl.hbm_per_gpu_bytes, overhead_bytes=fl.overhead_per_gpu_bytes, weights_bytes=weights_gpu)]
    fits = []
    for w in windows:
        need = seqs * sz.sequence_kv_bytes(w)
        fits.append(need <= left)
        figures.append(arithmetic(
            f"KV of a {num(w)}-token window, every active sequence, per GPU",
            f"{plain(need)}: {'fits' if fits[-1] else 'does not fit'}",
            f"active sequences / GPUs x (window x KV B/token{' + per-sequence constant' if const else ''}) = "
            f"{num(round(seqs, 2))} x ({num(w)} x {num(round(bpt, 2))} B{f' + {num(const)} B' if const else ''})"
            f" ({scn.model_name}, {scn.kv_format}; the whole window in HBM, where the scenario puts "
            f"{scn.placement.live_hbm_fraction:.0%} of live KV)", bytes=need, fits=fits[-1], window_tokens=w))
    largest = (left / seqs - const) / bpt if left > 0 and seqs > 0 else 0.0
    figures.append(arithmetic(
        "largest window that fits", f"{num(int(largest))} tokens" if largest >= 1 else "none",
        "(HBM left per GPU / sequences per GPU - per-sequence constant) / KV B/token"
        + ("" if left > 0 else ": weights and overheads alone fill HBM"), tokens=max(largest, 0.0)))
    return figures, fits


def _decode_pairs(ev: Evidence) -> list[tuple[float, Figure]]:
    """(hot-window rate / all-HBM rate, its figure) per hot_window case with an hbm twin."""
    out = []
    for r, hot in ev.cases("decode", placement="hot_window"):
        cfg = hot["config"]
        twins = [(r2, c) for r2, c in ev.cases("decode", placement="hbm", format=cfg.get("format"),
                                               context=cfg.get("context"), fused=True)
                 if metric(c, "tok_s") and r2.path == r.path]
        hot_rate = metric(hot, "tok_s")
        if not twins or hot_rate is None:
            continue
        r2, hbm = min(twins, key=lambda t: abs(t[1]["config"].get("batch", 0) - cfg.get("batch", 0)))
        ratio = hot_rate / metric(hbm, "tok_s")
        batches = "" if hbm["config"].get("batch") == cfg.get("batch") else \
            f"; batches differ ({cfg.get('batch')} vs {hbm['config'].get('batch')})"
        window = cfg.get("hot_window_tokens", "?")
        out.append((ratio, measured(
            f"decode tok/s, last {window} tokens in HBM vs all in HBM ({cfg.get('format')}, context "
            f"{num(cfg.get('context', 0))})",
            f"{hot_rate:,.4g} vs {metric(hbm, 'tok_s'):,.4g} tok/s = {ratio:.3g}x",
            measured_basis(r, [hot, hbm], f"tok_s of each case{batches}"), ratio=ratio)))
    return out


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    windows = [int(w) for w in p["windows_tokens"]]
    sz = compute(load_scenario(ev.scenario or p["scenario"]))
    figures, fits = _fit_figures(sz, windows)
    pairs = _decode_pairs(ev)
    if pairs:
        figures += [f for _, f in pairs]
    else:
        why = ev.skip_reason("decode", "hot_window")
        figures.append(not_measured("decode tok/s, hot window vs all in HBM",
                                    _command(sz.scenario, p["decode_format"], max(windows)), why,
                                    "on a GPU machine"))
    name = sz.scenario.name
    d = figures[0].data
    if d["weights_bytes"] + d["overhead_bytes"] >= d["hbm_bytes"]:
        needs = [f.data["bytes"] for f in figures[1:1 + len(windows)]]
        return Evaluation(claim, tuple(figures), NOT_SETTLED,
                          f"scenario {name} cannot hold its own weights: {plain(d['weights_bytes'])} of weights "
                          f"and {plain(d['overhead_bytes'])} of overheads per GPU against {plain(d['hbm_bytes'])} "
                          f"of HBM, before any KV; the windows themselves need {plain(min(needs))}-"
                          f"{plain(max(needs))} per GPU ({100 * max(needs) / d['hbm_bytes']:.2g}% of HBM at "
                          "most), so the scenario cannot decide (try --scenario llama-3.1-70b-fp8-chat)")
    if not any(fits):
        return Evaluation(claim, tuple(figures), REFUTED,
                          f"by scenario {name}'s own figures no window of {num(min(windows))} tokens fits: of "
                          f"{plain(d['hbm_bytes'])} of HBM per GPU, weights take {plain(d['weights_bytes'])} and "
                          f"overheads {plain(d['overhead_bytes'])}, leaving {figures[0].value}")
    if not all(fits):
        largest = max(w for w, ok in zip(windows, fits) if ok)
        return Evaluation(claim, tuple(figures), PARTLY,
                          f"in scenario {name} a {num(largest)}-token window fits beside the weights, "
                          f"{num(max(windows))} tokens do not")
    if not pairs:
        return Evaluation(claim, tuple(figures), NOT_MEASURED,
                          f"every window fits beside the weights in scenario {name}; the decode rate it "
                          "gives is not measured here")
    worst = min(r for r, _ in pairs)
    ok = worst >= p["min_rate_vs_hbm"]
    return Evaluation(claim, tuple(figures), CONFIRMED if ok else PARTLY,
                      f"every window fits in scenario {name}; the hot-window placement decodes at "
                      f"{worst:.3g}x the all-HBM rate at worst ({'at least' if ok else 'below'} "
                      f"{p['min_rate_vs_hbm']:.3g}x)")
