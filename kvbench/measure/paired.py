"""Paired, interleaved sampling: every ratio a case reports (a % of its ceiling, a % of
fio, a speed-up over a baseline) is taken from samples of the two measured alternately
inside the case, A B B A A B ..., the ratio per pair, so that a machine's slow drifts
(a virtual disk's bursts, clocks, a neighbour) cancel instead of landing in one figure.

Sampling is adaptive: rounds continue until every ratio's 95% confidence interval of
the median is within ``target`` (default +-5%) of the median, or the case's time budget
is spent; a case that did not get there is flagged ``unstable``. No torch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kvbench.measure.limits import flag
from kvbench.stats import paired_ratio, summarize

#: the confidence interval's half-width, relative to the median, a ratio must reach
TARGET_HALFWIDTH = 0.05
#: fewest pairs before convergence is judged (with 6, the 95% interval of the median is
#: the pairs' whole range; from 9 on it is narrower)
MIN_PAIRS = 6


@dataclass
class Arm:
    """One thing timed in a case: ``sample(k)`` runs it k times (its own untimed setup,
    such as dropping the page cache, included) and returns k durations in seconds.
    ``work`` is what one run moves or produces (bytes, tokens): rate = work / seconds."""
    sample: Callable[[int], list[float]]
    work: float = 1.0
    seconds: list[float] = field(default_factory=list)


@dataclass
class Interleaved:
    """The outcome: every arm's samples (seconds), each ratio's paired statistics, and
    whether every ratio reached the target before the budget was spent."""
    arms: dict[str, Arm]
    ratios: dict[str, dict[str, Any]]
    converged: bool
    rounds: int
    elapsed_s: float
    budget_s: float
    target: float

    def release(self) -> None:
        """Drop the arms' samplers (and what they hold: buffers, graphs); keep samples."""
        for a in self.arms.values():
            a.sample = None

    def describe(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "elapsed_s": self.elapsed_s, "budget_s": self.budget_s,
                "target_halfwidth": self.target, "converged": self.converged,
                "order": "A B B A A B ... (each round reverses the arms' order)"}


def rate_ratio(num: Arm, den: Arm) -> list[float]:
    """Per pair: num's rate over den's rate (work / seconds each)."""
    return [(num.work / a) / (den.work / b) for a, b in zip(num.seconds, den.seconds)]


def per_pair(arms: dict[str, Arm], spec: Any) -> list[float]:
    """A ratio's value for every pair so far. ``spec``: (numerator arm, denominator
    arm), a ratio of their rates; or a function of one pair's seconds per arm
    ({arm: seconds} -> value), for figures such as a roofline; or (numerator,
    denominator, function), a function with the arms it relates named."""
    if isinstance(spec, tuple) and len(spec) == 2:
        return rate_ratio(arms[spec[0]], arms[spec[1]])
    fn = spec[2] if isinstance(spec, tuple) else spec
    n = min(len(a.seconds) for a in arms.values())
    return [fn({k: a.seconds[i] for k, a in arms.items()}) for i in range(n)]


def _ratio_stats(arms: dict[str, Arm], ratios: dict[str, Any]) -> dict[str, dict]:
    out = {}
    for name, spec in ratios.items():
        vals = per_pair(arms, spec)
        # paired_ratio(a, b) = a / b per pair; here a = the ratio, b = 1
        st = paired_ratio(vals, [1.0] * len(vals))
        num, den = spec[:2] if isinstance(spec, tuple) else (getattr(spec, "__name__", "f"), "")
        st.update(numerator=num, denominator=den)
        out[name] = st
    return out


def interleave(arms: dict[str, Arm], ratios: dict[str, Any], *, budget_s: float,
               min_pairs: int = MIN_PAIRS, max_pairs: int = 400, block: int = 1,
               target: float = TARGET_HALFWIDTH, warmup: int = 0,
               clock: Callable[[], float] = time.perf_counter) -> Interleaved:
    """Sample ``arms`` in alternating order, ``block`` samples per arm per round, until
    every ratio in ``ratios`` (name -> (numerator arm, denominator arm), a ratio of
    rates, or a function of one pair's seconds per arm) has a confidence-interval half-width within ``target`` of its median (after
    at least ``min_pairs`` pairs), or ``budget_s`` is spent (never fewer than
    ``min_pairs`` pairs), or ``max_pairs``. ``warmup`` untimed rounds come first."""
    names = list(arms)
    for _ in range(warmup):
        for n in names:
            arms[n].sample(1)
    t0, rounds = clock(), 0
    stats: dict[str, dict] = {}
    converged = False
    while True:
        order = names if rounds % 2 == 0 else names[::-1]
        for n in order:
            got = arms[n].sample(block)
            if len(got) != block:
                raise AssertionError(f"arm {n} returned {len(got)} samples, asked {block}")
            arms[n].seconds.extend(got)
        rounds += 1
        pairs = rounds * block
        if pairs < min_pairs:
            continue
        stats = _ratio_stats(arms, ratios)
        converged = all(s["halfwidth"] <= target for s in stats.values())
        if converged or pairs >= max_pairs or clock() - t0 >= budget_s:
            break
    return Interleaved(arms, stats, converged, rounds, clock() - t0, budget_s, target)


def record(case: dict[str, Any], result: Interleaved, *, percent: tuple[str, ...] = (),
           units: dict[str, str] | None = None) -> None:
    """Write the paired ratios into a case: metric = the median ratio (x100 for names in
    ``percent``), its p10-p90 and interval under ``paired``, and the ``unstable`` flag
    when sampling did not converge."""
    scale = {n: (100.0 if n in percent else 1.0) for n in result.ratios}
    paired = case.setdefault("paired", {})
    for name, st in result.ratios.items():
        k = scale[name]
        case["metrics"][name] = k * st["median"]
        case["units"][name] = ((units or {}).get(name) or case["units"].get(name)
                               or ("%" if k == 100.0 else "x"))
        paired[name] = {"median": k * st["median"], "p10": k * st["p10"], "p90": k * st["p90"],
                        "ci_low": k * st["ci_low"], "ci_high": k * st["ci_high"],
                        "ci_level": st["ci_level"], "halfwidth": st["halfwidth"], "n": st["n"],
                        "numerator": st["numerator"], "denominator": st["denominator"]}
        case["stats"][name] = summarize([k * r for r in st["ratios"]])
        case["samples"][name] = [k * r for r in st["ratios"]]
    case["config"]["sampling"] = result.describe()
    if not result.converged:
        worst = max(result.ratios.items(), key=lambda kv: kv[1]["halfwidth"])
        flag(case, "unstable",
             f"{worst[0]}'s 95% interval is +-{worst[1]['halfwidth']:.0%} of its median after "
             f"{worst[1]['n']} pairs ({result.elapsed_s:.1f} s of a {result.budget_s:g} s budget); "
             f"the target is +-{result.target:.0%}")


def best_of(candidates: dict[str, Arm], looks: int = 2) -> str:
    """The candidate arm with the highest rate (work / seconds), each judged by the
    fastest of ``looks`` untimed runs (the first may pay first-touch costs)."""
    rate = {k: a.work / min(a.sample(looks)) for k, a in candidates.items()}
    return max(rate, key=rate.__getitem__)


def host_arm(fn: Callable[[], Any], work: float, setup: Callable[[], Any] | None = None) -> Arm:
    """An arm timed on the host clock (``setup`` untimed before each run)."""
    from kvbench.timing import time_host

    return Arm(lambda k: time_host(fn, warmup=0, samples=k, setup=setup), work)


def cuda_arm(fn: Callable[[], Any], work: float, stream: Any = None,
             info: dict[str, Any] | None = None, ahead: bool = True) -> Arm:
    """An arm timed with CUDA events on ``stream``. ``ahead``: enqueued behind a GPU
    sleep, so the timed region holds device work only (``kvbench.timing.time_cuda``);
    the sleep's length carries from one round to the next. Without it, the host's
    launch gaps are part of the time. ``info`` gathers every round's figures
    (``kvbench.timing.ahead_note`` reads it)."""
    from kvbench.timing import time_cuda

    state: dict[str, Any] = {}
    enqueues: list[float] = []

    def sample(k: int) -> list[float]:
        got: dict[str, Any] = {}
        out = time_cuda(fn, warmup=0, samples=k, stream=stream, ahead=ahead, info=got, state=state)
        if info is not None and got:
            enqueues.extend([got["enqueue_s"]] * k)
            info.update(enqueue_s=sorted(enqueues)[len(enqueues) // 2], sleep_s=got["sleep_s"],
                        hidden_samples=info.get("hidden_samples", 0) + got["hidden_samples"],
                        samples=info.get("samples", 0) + got["samples"],
                        host_bound=bool(info.get("host_bound")) or got["host_bound"])
        return out
    return Arm(sample, work)


def min_pairs_for(samples: int) -> int:
    """Pairs a case takes at least: --samples, and never fewer than MIN_PAIRS."""
    return max(MIN_PAIRS, samples)
