"""How the transfer benchmark's results are shown: the report's highlights (the best
paged GB/s per direction with its share of the ceiling, of fio and of the physical
link) and two plots (GB/s per direction and method against the same-run ceilings;
the page-size sweep)."""

from __future__ import annotations

from typing import Any

from kvbench.bench import Highlights
from kvbench.units import is_num

BENCH_KEY = "transfer"


def _paged(doc: dict[str, Any], kind: str = "paged") -> list[dict[str, Any]]:
    from kvbench.results import find_cases

    return [c for c in find_cases(doc, BENCH_KEY, kind=kind) if is_num(c["metrics"].get("gbps"))]


def _short(c: dict[str, Any]) -> str:
    """A case's name without its direction prefix."""
    d = str(c["config"].get("direction", ""))
    return c["name"][len(d) + 1:] if c["name"].startswith(d + "/") else c["name"]


def _rank(c: dict[str, Any]) -> tuple[bool, bool, float]:
    """Headline order: a figure its ceiling did not bound only when nothing else ran,
    then converged before unstable, then GB/s."""
    flags = c.get("flags") or []
    return "above_ceiling" not in flags, "unstable" not in flags, c["metrics"]["gbps"]


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per direction (and cache state: a warm file read copies out of the page cache,
    a cold one reads the disk): the fastest paged case, its GB/s and its paired shares."""
    best: dict[str, dict[str, Any]] = {}
    for c in _paged(doc):
        d = str(c["config"].get("direction", "?"))
        if c["config"].get("cache_state"):
            d += f" ({c['config']['cache_state']})"
        if d not in best or _rank(c) > _rank(best[d]):
            best[d] = c
    if not best:
        return None

    def pct(c: dict[str, Any], metric: str) -> Any:
        p = (c.get("paired") or {}).get(metric)
        return p["median"] if p else c["metrics"].get(metric)
    rows = [[d, _short(c), c["metrics"]["gbps"],
             pct(c, "pct_of_ceiling"), pct(c, "pct_of_fio"), c["metrics"].get("pct_of_physical_limit"),
             ", ".join(c.get("flags") or [])] for d, c in best.items()]
    return Highlights("transfer: the fastest paged copy per direction, converged and bounded ones first "
                      "(paired % of its same-run ceiling)",
                      [("direction", ""), ("case", ""), ("GB/s", "GB/s"), ("% of ceiling", "%"),
                       ("% of fio", "%"), ("% of link limit", "%"), ("flags", "")], rows)


def _bars_panel(ax, d: str, cases: list[dict[str, Any]], colour: dict[str, str], legend: dict[str, Any]) -> None:
    """One direction: a bar per case (colour = method), its ceiling as a tick, the
    physical link limit as a dashed line."""
    from matplotlib.lines import Line2D

    from kvbench import plotkit

    y = list(range(len(cases)))
    errs = list(zip(*[plotkit.err(c, "gbps") for c in cases]))
    ax.barh(y, [c["metrics"]["gbps"] for c in cases], xerr=errs,
            color=[colour[str(c["config"].get("method", "?"))] for c in cases],
            error_kw={"elinewidth": 0.8, "capsize": 2})
    ticks = [(i, c["metrics"]["ceiling_gbps"]) for i, c in enumerate(cases) if is_num(c["metrics"].get("ceiling_gbps"))]
    if ticks:
        ax.scatter([v for _, v in ticks], [i for i, _ in ticks], marker="|", s=140, color="black", zorder=3)
        legend["ceiling"] = Line2D([], [], color="black", marker="|", ls="", markersize=10,
                                   label="the case's ceiling (same run)")
    for lim in sorted({c["metrics"].get("physical_limit_gbps") for c in cases if is_num(c["metrics"].get("physical_limit_gbps"))}):
        ax.axvline(lim, color="tab:red", ls="--", lw=1)
        legend["limit"] = Line2D([], [], color="tab:red", ls="--", label="physical link limit (NVML)")
    ax.set_yticks(y, [_short(c) for c in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_title(d, fontsize=10, loc="left")
    ax.set_xlabel("GB/s (GB = 1e9 B), median with p10-p90", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def plot_bandwidth(doc: dict[str, Any]):
    """Paged-copy GB/s, a panel per direction, a bar per case coloured by method,
    each case's same-run ceiling as a tick."""
    from matplotlib.patches import Patch

    from kvbench import plotkit

    cases = _paged(doc)
    if not cases:
        return None
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_dir.setdefault(str(c["config"].get("direction", "?")), []).append(c)
    colour = plotkit.key_colours([str(c["config"].get("method", "?")) for c in cases])
    sizes = [len(v) for v in by_dir.values()]
    fig = plotkit.new_figure(10, 0.22 * sum(sizes) + 1.3 * len(sizes) + 0.8)
    axes = fig.subplots(len(by_dir), 1, squeeze=False, height_ratios=[s + 3 for s in sizes])[:, 0]
    legend: dict[str, Any] = {}
    for ax, (d, cs) in zip(axes, by_dir.items()):
        _bars_panel(ax, d, cs, colour, legend)
    axes[0].legend(handles=[Patch(color=v, label=k) for k, v in colour.items()] + list(legend.values()),
                   fontsize=7, loc="best")
    return fig, "transfer: paged KV GB/s per direction and method, with each case's same-run ceiling"


def _series(cfg: dict[str, Any]) -> str:
    parts = []
    for k in ("direction", "layout", "format", "method", "queue_depth", "threads", "cache_state"):
        v = cfg.get(k)
        if v not in (None, ""):
            parts.append(f"qd{v}" if k == "queue_depth" else f"t{v}" if k == "threads" else str(v))
    return "/".join(parts)


def plot_sweep(doc: dict[str, Any]):
    """GB/s against tokens per page (log x), a line per direction/method/layout/format."""
    from kvbench import plotkit

    cases = [c for c in _paged(doc, "sweep") if is_num(c["config"].get("tokens_per_page"))]
    if not cases:
        return None
    series: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        series.setdefault(_series(c["config"]), []).append(c)
    fig = plotkit.new_figure(8, 5)
    ax = fig.subplots()
    colour = plotkit.key_colours(list(series))
    xs_all: set[int] = set()
    for label, cs in series.items():
        cs = sorted(cs, key=lambda c: c["config"]["tokens_per_page"])
        xs = [c["config"]["tokens_per_page"] for c in cs]
        xs_all.update(xs)
        ax.errorbar(xs, [c["metrics"]["gbps"] for c in cs], yerr=list(zip(*[plotkit.err(c, "gbps") for c in cs])),
                    marker="o", capsize=3, label=label, color=colour[label])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
    ax.minorticks_off()
    ax.set_xlabel("tokens per page (log scale)")
    ax.set_ylabel("GB/s (GB = 1e9 B), median with p10-p90")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig, "transfer: GB/s vs tokens per page"
