"""How the prefix benchmark's results are shown: the report's highlights (load time,
speed-up over recompute and break-even GB/s at the longest prefix) and one plot."""

from __future__ import annotations

from typing import Any

from kvbench.bench import Highlights
from kvbench.bench.prefix.common import BENCH_KEY


def _tokens(c: dict[str, Any]) -> Any:  # prefix length; older files said "tokens"
    return c["config"].get("prefix_tokens", c["config"].get("tokens"))


def _curves(ax, by_src: dict[str, list[dict[str, Any]]], metric: str) -> list[float]:
    """A line per source (the tier's colour, the same in every panel) of one metric
    against prefix tokens; the values drawn."""
    from kvbench import plotkit

    drawn = []
    for src, cs in by_src.items():
        pts = sorted((_tokens(c), c["metrics"][metric]) for c in cs
                     if isinstance(c["metrics"].get(metric), (int, float)))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=src,
                    color=plotkit.tier_colour(src))
            drawn += [p[1] for p in pts]
    return drawn


def plot_load_vs_recompute(doc: dict[str, Any]):
    """Load and recompute seconds against prefix tokens (log-log), and each load's
    speed-up over recompute (paired in the case), coloured by tier."""
    from kvbench import plotkit
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, BENCH_KEY) if isinstance(_tokens(c), int)
             and isinstance(c["metrics"].get("seconds"), (int, float))]
    if not cases:
        return None
    by_src: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_src.setdefault(str(c["config"].get("source", "?")), []).append(c)
    speed = any(isinstance(c["metrics"].get("speedup_vs_recompute"), (int, float)) for c in cases)
    fig = plotkit.new_figure(11 if speed else 7, 4.5)
    axes = fig.subplots(1, 2 if speed else 1, squeeze=False)[0]
    _curves(axes[0], by_src, "seconds")
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title("load vs recompute time", fontsize=10, loc="left")
    plotkit.log_axis(axes[0], "y")
    if speed:
        drawn = _curves(axes[1], {s: cs for s, cs in by_src.items() if s != "recompute"}, "speedup_vs_recompute")
        axes[1].axhline(1, color="black", lw=1)
        plotkit.log_axis(axes[1], "y", drawn + [1.0])
        axes[1].set_ylabel("speed-up of load over recompute (x, paired)")
        axes[1].set_title("recompute_s / load_s", fontsize=10, loc="left")
    xt = sorted({_tokens(c) for c in cases})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xt, [f"{x:,}" for x in xt])
        ax.minorticks_off()
        ax.set_xlabel("prefix tokens")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig, "prefix: load (dram, nvme) vs recompute seconds" + (", and the load's speed-up" if speed else "")


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per source at the longest prefix: load time, speed-up over recompute, break-even GB/s."""
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, BENCH_KEY) if c["config"].get("source") != "recompute"
             and isinstance(_tokens(c), int)]
    if not cases:
        return None
    longest = max(_tokens(c) for c in cases)
    rows = [[c["config"].get("source"), c["metrics"].get("seconds"), c["metrics"].get("recompute_s"),
             c["metrics"].get("speedup_vs_recompute"), c["metrics"].get("gbps"), c["metrics"].get("break_even_gbps")]
            for c in cases if _tokens(c) == longest]
    return Highlights(f"prefix: load vs recompute at {longest:,} tokens",
                      [("source", ""), ("load time", "s"), ("recompute time", "s"), ("speed-up vs recompute", "x"),
                       ("load rate", "GB/s"), ("break-even rate", "GB/s")], rows)
