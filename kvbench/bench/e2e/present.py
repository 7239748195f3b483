"""How the e2e benchmark's results are shown: the report's highlights (per cache: time
per output token, its paired ratio to DynamicCache, the prediction beside it, fidelity),
a bar plot of time per output token and a plot of it against context length. No torch."""

from __future__ import annotations

import statistics
from typing import Any

from kvbench.bench import Highlights
from kvbench.bench.e2e.predict import NO_INPUTS, has_inputs, predict
from kvbench.bench.e2e.settings import BENCH_KEY
from kvbench.units import is_num

#: colours of transformers' own caches (kvbench's take their tier's colour)
KIND_COLOURS = {"dynamic": "#000000", "dynamic_offload": "#7f7f7f"}
#: a marker per KV format on the context plot, so formats on one tier tell apart
MARKERS = ("o", "s", "^", "v", "D", "P", "X")


def _cases(doc: dict) -> list[dict]:
    return [c for c in doc["cases"] if c["bench"] == BENCH_KEY]


def _colour(c: dict) -> str:
    from kvbench import plotkit

    cfg = c.get("config") or {}
    if cfg.get("tier"):
        return plotkit.tier_colour(str(cfg["tier"]))
    return KIND_COLOURS.get(str(cfg.get("cache")), "#bcbd22")


def _paired_cell(c: dict, metric: str) -> Any:
    """'1.82x [1.77-1.90]' (median, 95% interval, n pairs) of a paired ratio."""
    p = (c.get("paired") or {}).get(metric)
    if not p or not all(is_num(p.get(k)) for k in ("median", "ci_low", "ci_high")):
        return "reference" if (c.get("config") or {}).get("cache") == "dynamic" and c["status"] == "ok" else None
    return f"{p['median']:.3g}x [{p['ci_low']:.3g}-{p['ci_high']:.3g}], {p['n']} pairs"


def highlights(doc: dict) -> Highlights | None:
    """Per cache that ran (the skipped ones' reasons are in the e2e table): status, time
    per output token, its paired ratio to DynamicCache's,
    the prediction and measured/predicted (when the run has transfer/decode cases),
    first-token time, agreement, first divergence, KL, or why not (tokens/s is in the
    e2e table)."""
    cases = _cases(doc)
    if not cases:
        return None
    preds = predict(doc)
    show = has_inputs(doc)
    ran = [c for c in cases if c["status"] != "skipped"]  # the e2e table lists the skips' reasons
    if not ran:
        return None
    failed = any(c["status"] != "ok" for c in ran)
    rows = []
    for c in ran:
        m = c.get("metrics") or {}
        row = [c["name"], c["status"], m.get("tpot_s"), _paired_cell(c, "tpot_ratio_vs_dynamic")]
        if show:
            p = preds.get(c["name"], {})
            row += [p.get("predicted_tpot_s", p.get("reason")), p.get("measured_over_predicted")]
        row += [m.get("ttft_s"), m.get("token_agreement"), m.get("first_divergence"),
                m.get("logit_kl")] + ([c.get("reason") or ""] if failed else [])
        rows.append(row)
    cols = [("cache", ""), ("status", ""), ("time/output token", "s"), ("vs dynamic (paired, 95% CI)", "")]
    if show:
        cols += [("predicted time/output token", "s"), ("measured/predicted", "x")]
    cols += [("TTFT", "s"), ("token agreement", ""), ("first divergence", "step"), ("KL", "nats")]
    cols += [("reason", "")] if failed else []
    skipped = len(cases) - len(ran)
    title = "e2e: generation with each cache that ran (vs DynamicCache)"
    title += f"; {skipped} skipped (reasons in the e2e table)" if skipped else ""
    title += ("; predicted from this run's transfer/decode figures and weight bytes (docs/method.md)"
              if show else f"; prediction: {NO_INPUTS}")
    return Highlights(title, cols, rows)


def draw_tpot(doc: dict) -> tuple[Any, str] | None:
    """A bar per ok cache: time per output token (ms), median with p10-p90."""
    from kvbench import plotkit

    ok = [c for c in _cases(doc) if c["status"] == "ok" and is_num(c["metrics"].get("tpot_s"))]
    if not ok:
        return None
    fig = plotkit.new_figure(max(6.5, 1.0 + 0.9 * len(ok)), 3.5)
    ax = fig.add_subplot(1, 1, 1)
    names = [c["name"] for c in ok]
    plotkit.grouped_bars(ax, names, ["tpot"], {(n, "tpot"): c["metrics"]["tpot_s"] * 1e3
                                              for n, c in zip(names, ok)},
                         {"tpot": "#1f77b4"}, errs={(n, "tpot"): tuple(x * 1e3 for x in plotkit.err(c, "tpot_s"))
                                                    for n, c in zip(names, ok)})
    for patch, c in zip(ax.patches, ok):
        patch.set_color(_colour(c))
    ax.set_ylabel("time per output token (ms)")
    ax.tick_params(axis="x", labelrotation=30)
    cfg = ok[0]["config"]
    return fig, (f"time per output token per cache (median, p10-p90), batch {cfg.get('batch')}, "
                 f"{cfg.get('new_tokens')} new tokens")


def step_curve(case: dict) -> tuple[list[int], list[float]] | None:
    """(context tokens, median step seconds over the timed generations) per decode step,
    from ``samples.step_s`` (generation after generation) and
    ``config.step_context_tokens``; None when the case lacks them."""
    ctx = (case.get("config") or {}).get("step_context_tokens") or []
    steps = (case.get("samples") or {}).get("step_s") or []
    n = len(ctx)
    if not n or not steps or len(steps) % n:
        return None
    runs = [steps[i:i + n] for i in range(0, len(steps), n)]
    return list(ctx), [statistics.median(r[j] for r in runs) for j in range(n)]


def draw_tpot_context(doc: dict) -> tuple[Any, str] | None:
    """A line per ok cache: ms per output token (median over the timed generations, per
    step) against the context that step attends over; colour = tier (transformers'
    caches black/grey), marker = KV format; the prediction dotted where the run has it."""
    from kvbench import plotkit

    curves = [(c, step_curve(c)) for c in _cases(doc) if c["status"] == "ok"]
    curves = [(c, cv) for c, cv in curves if cv is not None]
    if not curves:
        return None
    preds = predict(doc)
    fmts = list(dict.fromkeys(str(c["config"].get("kv_format") or "") for c, _ in curves))
    fig = plotkit.new_figure(8.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for c, (xs, ys) in curves:
        colour = _colour(c)
        marker = MARKERS[fmts.index(str(c["config"].get("kv_format") or "")) % len(MARKERS)]
        ax.plot(xs, [y * 1e3 for y in ys], color=colour, marker=marker, markersize=3, linewidth=1.2,
                label=c["name"])
        p = preds.get(c["name"], {})
        if is_num(p.get("predicted_tpot_s")):
            ax.plot(xs, [(p["weight_s"] + p["kv_s_per_context_token"] * x) * 1e3 for x in xs], color=colour,
                    linestyle=":", linewidth=1.0, label=f"{c['name']} predicted")
    ax.set_xlabel("context tokens (prompt + tokens so far)")
    ax.set_ylabel("time per output token (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    cfg = curves[0][0]["config"]
    return fig, (f"time per output token against context (median per step), batch {cfg.get('batch')}"
                 + ("; dotted: predicted" if any(is_num(p.get("predicted_tpot_s")) for p in preds.values()) else ""))
