"""How the decode benchmark's results are shown: the report's highlights (tokens/s
per placement and format, with the speed-up over fp16 and % of roofline) and a plot
of the same (a second panel of % of roofline when the run measured rooflines)."""

from __future__ import annotations

from typing import Any

from kvbench.bench import Highlights
from kvbench.units import is_num

BENCH_KEY = "decode"


def _cases(doc: dict[str, Any]) -> list[dict[str, Any]]:
    from kvbench.results import find_cases

    return [c for c in find_cases(doc, BENCH_KEY, kind="decode") if is_num(c["metrics"].get("tok_s"))]


def _paired(c: dict[str, Any], metric: str) -> Any:
    p = (c.get("paired") or {}).get(metric)
    return p["median"] if p else c["metrics"].get(metric)


def _fmt(c: dict[str, Any]) -> str:
    cfg = c["config"]
    return str(cfg.get("format", "?")) + ("" if cfg.get("fused", True) else " unfused")


def _shape(c: dict[str, Any]) -> str:
    return f"{c['config'].get('batch')}x{c['config'].get('context')}"


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per placement, at its first shape: tokens/s per format, the speed-up over fp16
    and % of roofline (the other shapes are in the decode table)."""
    cases = _cases(doc)
    if not cases:
        return None
    first: dict[str, str] = {}
    for c in cases:
        first.setdefault(str(c["config"].get("placement")), _shape(c))
    rows = [[c["config"].get("placement"), _fmt(c), _shape(c), c["metrics"]["tok_s"], _paired(c, "speedup_vs_fp16"),
             _paired(c, "pct_of_roofline"), c["config"].get("device")]
            for c in cases if _shape(c) == first[str(c["config"].get("placement"))]]
    return Highlights("decode: tokens/s per placement and format (one shape per placement)",
                      [("placement", ""), ("format", ""), ("batch x context", ""), ("tokens/s", "tokens/s"),
                       ("speed-up vs fp16", "x"), ("% of roofline", "%"), ("device", "")], rows)


def plot_tok_s(doc: dict[str, Any]):
    """Tokens/s per placement (and shape, where a placement ran several) and format:
    colour = format (the same in every plot), hatched = unfused; below it % of
    roofline, when the run measured rooflines (GPU runs)."""
    from kvbench import plotkit

    cases = _cases(doc)
    if not cases:
        return None
    shapes = {str(c["config"].get("placement")): set() for c in cases}
    for c in cases:
        shapes[str(c["config"].get("placement"))].add(_shape(c))
    many = any(len(v) > 1 for v in shapes.values())
    key = {id(c): (str(c["config"].get("placement", "?")) + (f"\n{_shape(c)}" if many else ""), _fmt(c))
           for c in cases}
    groups = list(dict.fromkeys(k[0] for k in key.values()))
    series = list(dict.fromkeys(k[1] for k in key.values()))
    colour = {s: plotkit.format_colour(s) for s in series}
    hatch = {s: "//" for s in series if s.endswith(" unfused")}
    tok = {key[id(c)]: c["metrics"]["tok_s"] for c in cases}
    roof = {key[id(c)]: _paired(c, "pct_of_roofline") for c in cases if is_num(_paired(c, "pct_of_roofline"))}
    fig = plotkit.new_figure(max(7, 0.35 * len(groups) * max(2, len(series))), 8 if roof else 4.5)
    axes = fig.subplots(2 if roof else 1, 1, squeeze=False)[:, 0]
    plotkit.grouped_bars(axes[0], groups, series, tok, colour,
                         {key[id(c)]: plotkit.err(c, "tok_s") for c in cases}, hatch)
    plotkit.log_axis(axes[0], "y", list(tok.values()))
    axes[0].set_ylabel("tokens/s (batch / step time), median with p10-p90")
    one = "" if many else " (batch x context %s)" % next(iter(next(iter(shapes.values()))))
    axes[0].set_title(f"tokens/s per placement{' and shape' if many else ''} and format{one}", fontsize=10, loc="left")
    axes[0].legend(fontsize=7, ncols=min(4, len(series)))
    caption = "decode: tokens/s per placement and format"
    if roof:
        plotkit.grouped_bars(axes[1], groups, series, roof, colour, hatch=hatch)
        axes[1].axhline(100, color="black", lw=1)
        axes[1].set_ylabel("% of roofline (paired, same run)")
        axes[1].set_title("KV-read bandwidth as % of the placement's roofline", fontsize=10, loc="left")
        caption += ", and % of roofline"
    return fig, caption
