"""What every benchmark's figures pass through: GB/s arithmetic, the physical limits a
correct figure cannot exceed, the same-run ceiling a case is compared with, and honest
page-cache residency labels. Benchmarks import this, never each other. No torch.

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
    if direction in ("dram->hbm", "hbm->dram", "nvme->hbm") and link:
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
    """Add % of ceiling (``ceiling`` with its samples as the case's ``ceiling_gbps``
    series, else the run's ceiling case for the direction) and % of the physical limit
    to a case with a ``gbps`` metric. A figure above the physical limit makes the case
    an error (a measurement bug); one above its ceiling beyond both figures' noise is
    flagged ``above_ceiling`` (the ceiling measured the wrong thing), never left as an
    ok figure over 100%."""
    value = case["metrics"]["gbps"]
    ceiling_stats = case["stats"].get("ceiling_gbps")
    if ceiling is None and case["config"].get("kind") != "ceiling":
        cc = ceiling_case_for(ctx, direction)
        if cc:
            ceiling, ceiling_stats = cc["metrics"]["gbps"], cc["stats"].get("gbps")
    if ceiling:
        case["metrics"]["ceiling_gbps"] = ceiling
        case["metrics"]["pct_of_ceiling"] = 100.0 * value / ceiling
        case["units"].update(ceiling_gbps="GB/s", pct_of_ceiling="%")
        if above_ceiling(case["stats"].get("gbps", {}), ceiling, ceiling_stats):
            flag(case, "above_ceiling",
                 f"{value / ceiling - 1:.0%} above its ceiling, beyond both figures' spread "
                 "(p10 of the case > p90 of the ceiling): the ceiling did not bound this path")
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


# ----------------------------------------------------------------------------- paired ratios
def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics
    x_(l) and x_(n+1-l) with the largest l such that P(Binomial(n, 1/2) < l) <= (1 -
    level) / 2. With too few samples for that level, the whole range."""
    import math

    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median_ci needs samples")
    tail = (1.0 - level) / 2
    cdf, l = 0.0, 0
    for k in range(n):  # cdf = P(X <= k - 1) before adding P(X = k)
        p = math.comb(n, k) / 2 ** n
        if cdf + p > tail:
            break
        cdf += p
        l = k + 1
    if l == 0:
        return s[0], s[-1]
    return s[l - 1], s[n - l]


def paired_ratio(a: list[float], b: list[float], level: float = 0.95) -> dict[str, Any]:
    """The ratio a/b taken per pair (samples measured alternately, A B A B ..., so slow
    drifts of the machine cancel), with its median, p10-p90 and a confidence interval
    of the median (``median_ci``). ``halfwidth`` is the interval's larger half relative
    to the median."""
    from kvbench.results import summarize

    if len(a) != len(b) or not a:
        raise ValueError("paired_ratio needs the same, non-zero number of samples of each")
    ratios = [x / y for x, y in zip(a, b)]
    st = summarize(ratios)
    lo, hi = median_ci(ratios, level)
    med = st["median"]
    return {"ratios": ratios, "median": med, "p10": st["p10"], "p90": st["p90"], "n": len(ratios),
            "ci_low": lo, "ci_high": hi, "ci_level": level,
            "halfwidth": max(med - lo, hi - med) / med if med else float("inf")}
