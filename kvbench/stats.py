"""Statistics of paired samples: a distribution-free confidence interval of the median
and the per-pair ratio of two interleaved series. No torch."""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """Median, p10, p90, mean, stdev, coefficient of variation, min, max and n."""
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if n == 0:
        return {"n": 0}

    def pct(p: float) -> float:
        # linear interpolation between closest ranks (numpy's default)
        k = (n - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    mean = statistics.fmean(xs)
    stdev = statistics.stdev(xs) if n > 1 else 0.0
    return {
        "n": n,
        "median": statistics.median(xs),
        "p10": pct(0.10),
        "p90": pct(0.90),
        "mean": mean,
        "stdev": stdev,
        "cv": (stdev / mean) if mean else 0.0,
        "min": xs[0],
        "max": xs[-1],
    }


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics
    x_(l) and x_(n+1-l) with the largest l such that P(Binomial(n, 1/2) < l) <= (1 -
    level) / 2. With too few samples for that level, the whole range."""
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
    if len(a) != len(b) or not a:
        raise ValueError("paired_ratio needs the same, non-zero number of samples of each")
    ratios = [x / y for x, y in zip(a, b)]
    st = summarize(ratios)
    lo, hi = median_ci(ratios, level)
    med = st["median"]
    return {"ratios": ratios, "median": med, "p10": st["p10"], "p90": st["p90"], "n": len(ratios),
            "ci_low": lo, "ci_high": hi, "ci_level": level,
            "halfwidth": max(med - lo, hi - med) / med if med else float("inf")}
