"""GB/s arithmetic, the physical limits a correct figure cannot exceed, the ceiling a
case is compared with, flags, and honest page-cache residency labels. No torch.

GB = 1e9 bytes throughout."""

from __future__ import annotations

from typing import Any

from kvbench.units import GB

#: the benchmark whose ``kind: ceiling`` cases other benchmarks' cases are compared with
CEILING_BENCH = "transfer"
#: without the ceiling's own samples, a figure above its ceiling x this is beyond noise
CEILING_TOLERANCE = 1.05
#: the largest page-cache share (of a file's pages) a read may start with and be "cold"
COLD_RESIDENT_MAX = 0.01


def gbps(nbytes: int, seconds: list[float]) -> list[float]:
    """GB/s (1e9 B/s) of moving ``nbytes`` in each of ``seconds``."""
    return [nbytes / s / GB for s in seconds]


def pcie_limit(ctx: Any) -> float | None:
    """The first GPU's PCIe limit per direction (GB/s, from NVML), if known."""
    gpus = ctx.environment.get("gpus") or []
    return gpus[0].get("pcie_limit_gbps_per_direction") if gpus else None


def physical_limit(ctx: Any, direction: str) -> float | None:
    """GB/s no correct measurement of ``direction`` can exceed, where the machine tells
    us one (the PCIe link for host<->device; both directions at once: twice that)."""
    link = pcie_limit(ctx)
    if direction in ("dram->hbm", "hbm->dram", "nvme->hbm", "hbm->nvme", "remote->hbm", "hbm->remote") and link:
        return link
    if direction == "dram<->hbm" and link:
        return 2 * link
    return None


def ceiling_case_for(ctx: Any, direction: str) -> dict[str, Any] | None:
    """The same run's contiguous-copy ceiling case for ``direction``, if measured."""
    for c in ctx.done:
        if (c["bench"] == CEILING_BENCH and c["status"] == "ok"
                and c["config"].get("kind") == "ceiling" and c["config"]["direction"] == direction):
            return c
    return None


def ceiling_for(ctx: Any, direction: str) -> float | None:
    """The same run's contiguous-copy ceiling (GB/s) for ``direction``, if measured."""
    c = ceiling_case_for(ctx, direction)
    return c["metrics"]["gbps"] if c else None


def above_ceiling(value_stats: dict[str, float], ceiling: float,
                  ceiling_stats: dict[str, float] | None) -> bool:
    """True when a figure is above its ceiling by more than the noise of both: even its
    p10 exceeds the ceiling's p90 (or, without the ceiling's samples, its median x
    CEILING_TOLERANCE). Then the ceiling measured the wrong thing."""
    top = (ceiling_stats or {}).get("p90") if (ceiling_stats or {}).get("n", 0) > 1 else None
    top = top if top is not None else CEILING_TOLERANCE * ceiling
    low = value_stats.get("p10", value_stats.get("median")) if value_stats.get("n") else None
    return low is not None and low > top


def flag(case: dict[str, Any], name: str, why: str) -> None:
    """Mark a case (``flags`` in the result; counted by the summary) and say why."""
    flags = case.setdefault("flags", [])
    if name not in flags:
        flags.append(name)
    case["notes"].append(f"{name}: {why}")


def check_limits(ctx: Any, case: dict[str, Any], direction: str,
                 ceiling: float | None = None) -> dict[str, Any]:
    """Add % of ceiling and % of the physical limit to a case with a ``gbps`` metric.

    The ceiling, best first: the case's own paired ratio (``paired.pct_of_ceiling``,
    from samples of the path and its ceiling taken alternately in the case); else
    ``ceiling`` with the case's ``ceiling_gbps`` series; else the run's ceiling case
    for the direction. A figure above its ceiling beyond noise (the paired ratio's 95%
    interval entirely above 100%; unpaired: the case's p10 above the ceiling's p90) is
    flagged ``above_ceiling``: the ceiling measured the wrong thing. A figure above the
    physical limit makes the case an error (a measurement bug)."""
    value = case["metrics"]["gbps"]
    paired = case.get("paired", {}).get("pct_of_ceiling")
    if paired:
        if paired["ci_low"] > 100.0:
            flag(case, "above_ceiling",
                 f"{paired['median'] - 100:.0f}% above its ceiling, the paired ratio's 95% interval "
                 f"{paired['ci_low']:.0f}-{paired['ci_high']:.0f}% entirely above 100%: "
                 "the ceiling did not bound this path")
    else:
        _unpaired_ceiling(ctx, case, direction, ceiling)
    limit = physical_limit(ctx, direction)
    if limit:
        case["metrics"]["physical_limit_gbps"] = limit
        case["metrics"]["pct_of_physical_limit"] = 100.0 * value / limit
        case["units"].update(physical_limit_gbps="GB/s", pct_of_physical_limit="%")
        if value > limit:
            case["status"] = "error"
            case["reason"] = (f"measured {value:.1f} GB/s is above the physical limit "
                              f"{limit:.1f} GB/s: a measurement bug")
    return case


def _unpaired_ceiling(ctx: Any, case: dict[str, Any], direction: str, ceiling: float | None) -> None:
    value = case["metrics"]["gbps"]
    ceiling_stats = case["stats"].get("ceiling_gbps")
    if ceiling is None and case["config"].get("kind") != "ceiling":
        cc = ceiling_case_for(ctx, direction)
        if cc:
            ceiling, ceiling_stats = cc["metrics"]["gbps"], cc["stats"].get("gbps")
    if not ceiling:
        return
    case["metrics"]["ceiling_gbps"] = ceiling
    case["metrics"]["pct_of_ceiling"] = 100.0 * value / ceiling
    case["units"].update(ceiling_gbps="GB/s", pct_of_ceiling="%")
    case["notes"].append("% of ceiling: medians of two separately sampled figures (not paired)")
    if above_ceiling(case["stats"].get("gbps", {}), ceiling, ceiling_stats):
        flag(case, "above_ceiling",
             f"{value / ceiling - 1:.0%} above its ceiling, beyond both figures' spread "
             "(p10 of the case > p90 of the ceiling): the ceiling did not bound this path")


def label_cache(case: dict[str, Any], resident: list[float], want: str) -> None:
    """Record page-cache residency before each sample; a 'cold' case whose pages stayed
    resident is relabelled warm, never reported as cold."""
    worst = max(resident) if resident else 1.0
    case["metrics"]["resident_fraction_max"] = worst
    case["units"]["resident_fraction_max"] = "fraction of file pages in page cache before a sample"
    state = want
    if want == "cold" and worst > COLD_RESIDENT_MAX:
        state = "warm"
        case["notes"].append(f"asked cold, but up to {worst:.1%} of the file stayed in the page "
                             "cache after fdatasync + POSIX_FADV_DONTNEED: labelled warm")
    case["config"]["cache_state"] = state
    case["notes"].append(f"{state}: at most {worst:.1%} of the file resident before each sample")
