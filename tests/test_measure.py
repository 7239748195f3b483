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


# ----------------------------------------------------------------------------- interleave
from kvbench.measure import paired  # noqa: E402


class FakeClock:
    """A clock each sample advances, so budgets are exercised without real time."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def drifting_arm(clock, base, rng=None, noise=0.0, work=1.0):
    """An arm whose durations follow a machine state that drifts 3x over the run (shared
    by every arm through the clock), with optional independent noise."""
    def sample(k):
        out = []
        for _ in range(k):
            state = 1.0 + 2.0 * min(1.0, clock.t / 10.0)
            x = base * state * (1.0 + (rng.uniform(-noise, noise) if rng else 0.0))
            clock.t += x
            out.append(x)
        return out
    return paired.Arm(sample, work)


def test_interleave_alternates_order_and_cancels_drift():
    clock, calls = FakeClock(), []
    a, b = drifting_arm(clock, 0.1, work=2.0), drifting_arm(clock, 0.2)
    for name, arm in (("a", a), ("b", b)):
        inner = arm.sample
        arm.sample = lambda k, inner=inner, name=name: calls.append(name) or inner(k)
    res = paired.interleave({"a": a, "b": b}, {"r": ("a", "b")}, budget_s=100, clock=clock)
    # A B, then B A: neither arm always runs first
    assert calls[:4] == ["a", "b", "b", "a"]
    # rate ratio: (2 / 0.1) / (1 / 0.2) = 4, within the drift's per-pair residue
    assert res.converged and res.ratios["r"]["median"] == pytest.approx(4.0, rel=0.05)
    assert res.ratios["r"]["n"] == len(a.seconds) == len(b.seconds) >= paired.MIN_PAIRS


def test_interleave_stops_at_budget_and_record_flags_unstable():
    clock, rng = FakeClock(), random.Random(3)
    a = drifting_arm(clock, 0.1, rng, noise=0.9)
    b = drifting_arm(clock, 0.1, rng, noise=0.9)
    res = paired.interleave({"a": a, "b": b}, {"r": ("a", "b")}, budget_s=1.0, clock=clock)
    assert not res.converged and res.ratios["r"]["n"] == paired.MIN_PAIRS  # budget gone at once
    case = {"metrics": {}, "units": {}, "stats": {}, "samples": {}, "notes": [], "config": {}}
    paired.record(case, res, percent=("r",))
    assert case["flags"] == ["unstable"] and case["config"]["sampling"]["converged"] is False
    assert case["metrics"]["r"] == pytest.approx(100 * res.ratios["r"]["median"])
    assert case["paired"]["r"]["ci_low"] <= case["metrics"]["r"] <= case["paired"]["r"]["ci_high"]
    assert any(n.startswith("unstable:") for n in case["notes"])


def test_interleave_ratio_from_a_function_of_the_pair():
    clock = FakeClock()
    arms = {"x": drifting_arm(clock, 0.3), "y": drifting_arm(clock, 0.1)}
    res = paired.interleave(arms, {"f": lambda s: s["y"] / s["x"]}, budget_s=100, clock=clock)
    assert res.ratios["f"]["median"] == pytest.approx(1 / 3, rel=0.05)


def test_paired_ratio_above_100_percent_is_flagged_above_ceiling():
    from kvbench.results import make_case

    ctx = type("Ctx", (), {"environment": {}, "done": []})()
    case = make_case("transfer", "c", {"kind": "paged"}, samples={"gbps": [1.2] * 9})
    case["paired"] = {"pct_of_ceiling": {"median": 120.0, "ci_low": 112.0, "ci_high": 125.0}}
    measure.check_limits(ctx, case, "nvme->dram")
    assert case["flags"] == ["above_ceiling"]
    inside = make_case("transfer", "d", {"kind": "paged"}, samples={"gbps": [1.0] * 9})
    inside["paired"] = {"pct_of_ceiling": {"median": 103.0, "ci_low": 96.0, "ci_high": 108.0}}
    measure.check_limits(ctx, inside, "nvme->dram")  # above 100%, inside its own noise
    assert "flags" not in inside
