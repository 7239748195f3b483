"""kvbench.measure: the paired ratio and its confidence interval on synthetic samples."""

import random

import pytest

from kvbench import measure


def test_median_ci_order_statistics():
    xs = list(range(1, 21))  # n = 20: the 95% interval is x(6)..x(15)
    assert measure.median_ci(xs) == (6, 15)
    assert measure.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few: the range
    with pytest.raises(ValueError):
        measure.median_ci([])


def test_median_ci_covers_the_true_median_about_95_percent():
    rng = random.Random(1)
    hits = 0
    for _ in range(400):
        lo, hi = measure.median_ci([rng.gauss(10.0, 1.0) for _ in range(30)])
        hits += lo <= 10.0 <= hi
    assert 0.92 <= hits / 400 <= 0.995


def test_paired_ratio_cancels_a_shared_drift():
    """Both series drift 2x over the run (a machine warming up): unpaired medians would
    mix states, per-pair ratios stay at the true 0.8."""
    a = [0.8 * (1 + i / 10) for i in range(11)]
    b = [1.0 * (1 + i / 10) for i in range(11)]
    r = measure.paired_ratio(a, b)
    assert r["median"] == pytest.approx(0.8) and r["halfwidth"] == pytest.approx(0.0, abs=1e-12)
    assert r["n"] == 11 and r["ci_low"] <= r["median"] <= r["ci_high"]
    with pytest.raises(ValueError):
        measure.paired_ratio([1.0], [1.0, 2.0])


def test_paired_ratio_interval_narrows_with_samples():
    rng = random.Random(2)
    def widths(n):
        a = [rng.gauss(9.0, 0.5) for _ in range(n)]
        b = [rng.gauss(10.0, 0.5) for _ in range(n)]
        return measure.paired_ratio(a, b)["halfwidth"]
    assert widths(200) < widths(10)
