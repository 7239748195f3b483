"""Drawing helpers every benchmark's plots use (matplotlib on the Agg canvas, never
pyplot): figures, error bars from a case's p10/p90, one colour per tier, per KV
format and per copy method across every panel and plot, log axes labelled with plain
numbers, grouped bars. A benchmark declares its plots (``kvbench.bench.Plot``) and
draws them with these; ``kvbench report`` titles them and writes them.

matplotlib is imported inside the functions, so importing this module is free."""

from __future__ import annotations

import io
from typing import Any, Sequence

from kvbench.units import is_num

#: one colour per tier (and recompute, the prefix benchmark's baseline) in every plot
TIER_COLOURS = {"hbm": "#2ca02c", "dram": "#1f77b4", "nvme": "#ff7f0e", "remote": "#9467bd",
                "recompute": "#7f7f7f"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def format_colour(name: str) -> str:
    """A KV format's colour: its place in the format registry, so fp16 is the same
    colour in every panel and every report."""
    from kvbench.spec import FORMATS

    names = list(FORMATS)
    base = name.split(" ")[0]
    i = names.index(base) if base in names else len(names) + sum(map(ord, base))
    return _PALETTE[i % len(_PALETTE)]


def tier_colour(name: str) -> str:
    """A tier's colour; 'dram_prefetch' or 'nvme->hbm' take the colour of the tier
    they read from."""
    for sep in ("->", "_"):
        name = name.split(sep)[0]
    return TIER_COLOURS.get(name, _PALETTE[sum(map(ord, name)) % len(_PALETTE)])


def key_colours(keys: Sequence[str]) -> dict[str, str]:
    """Colours for keys of no declared kind (copy methods, series), in first-seen order."""
    return {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(dict.fromkeys(keys))}


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(max(height, 2.5), 60)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def err(case: dict[str, Any], metric: str) -> tuple[float, float]:
    """(below, above) the median to p10 and p90, for error bars; (0, 0) when unsampled."""
    st = (case.get("stats") or {}).get(metric) or {}
    med = (case.get("metrics") or {}).get(metric)
    if st.get("n", 0) < 2 or not all(is_num(x) for x in (st.get("p10"), st.get("p90"), med)):
        return 0.0, 0.0
    return max(med - st["p10"], 0.0), max(st["p90"] - med, 0.0)


def log_axis(ax: Any, axis: str = "y", values: Sequence[float] = ()) -> None:
    """A log axis whose ticks read as plain numbers (1, 2, 5, 10, 20, 50, ...), so
    every decade and the steps inside it are labelled, not only 10^0 and 10^1; with
    ``values``, only when they span more than a factor of 20 (else stay linear)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in values if is_num(v) and v > 0]
    if values and (not vals or max(vals) / min(vals) <= 20):
        return
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:.3g}"))
    target.set_minor_formatter(NullFormatter())


def grouped_bars(ax: Any, groups: list[str], series: list[str], value: dict[tuple[str, str], float],
                 colour: dict[str, str], errs: dict[tuple[str, str], tuple[float, float]] | None = None,
                 hatch: dict[str, str] | None = None) -> None:
    """Vertical bars: a group per x position, a bar per series inside it (``hatch``:
    a pattern per series, e.g. to tell an unfused variant from its fused format)."""
    width = 0.8 / max(len(series), 1)
    for j, s in enumerate(series):
        keys = [(g, s) for g in groups if (g, s) in value]
        xs = [i + (j - (len(series) - 1) / 2) * width for i, g in enumerate(groups) if (g, s) in value]
        yerr = list(zip(*[errs.get(k, (0.0, 0.0)) for k in keys])) if errs and keys else None
        ax.bar(xs, [value[k] for k in keys], width=width, color=colour[s], label=s, yerr=yerr,
               hatch=(hatch or {}).get(s), edgecolor="white" if (hatch or {}).get(s) else None,
               error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
