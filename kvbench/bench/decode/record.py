"""From paired samples to a decode result case: verification against the fp32
reference, the case's figures (tokens/s, KV-read GB/s, the roofline and its share),
ratios to earlier cases of the run, and the notes on how the step was timed."""

from __future__ import annotations

from typing import Any, Callable

from kvbench.bench import RunContext
from kvbench.bench.decode.cache import Cache
from kvbench.bench.decode.common import BENCH_KEY, REL_TOL
from kvbench.results import make_case, summarize
from kvbench.units import GB


_STEP_UNITS = {"eager_step_s": "s", "launch_overhead_s": "s"}


def _verify(cache: Cache, out, pool, table) -> float:
    """Relative error of the kernel's output vs the fp32 torch reference (first two
    sequences), outside the timed region."""
    from kvbench.attention import decode_reference

    n = min(2, cache.B)
    ref = decode_reference(cache.q[:n], pool, table[:n].to(pool.device), cache.lens[:n].to(pool.device),
                           cache.spec, 0, cache.side.to(pool.device) if cache.side is not None else None)
    err = float((out[:n].float().cpu() - ref.cpu()).norm() / ref.norm().clamp_min(1e-30))
    if not err < REL_TOL:
        raise AssertionError(f"decode output differs from the reference: rel err {err:.2e}")
    return err


def _finish(ctx: RunContext, name: str, cfg: dict, cache: Cache, res: Any, notes: list[str],
            extra: dict | None = None, percent: tuple[str, ...] = (),
            units: dict[str, str] | None = None) -> dict:
    """The case: step samples of the ``step`` arm, its paired ratios, then ratios to
    earlier cases for what was not paired (``_relate``)."""
    from kvbench.measure import paired

    secs = res.arms["step"].seconds
    kvb = cache.kv_bytes_per_step
    case = make_case(
        BENCH_KEY, name, cfg,
        samples={"step_s": secs, "tok_s": [cache.B / s for s in secs],
                 "kv_read_gbps": [kvb / s / GB for s in secs]},
        units={"step_s": "s", "tok_s": "tokens/s", "kv_read_gbps": "GB/s",
               "roofline_gbps": "GB/s", "roofline_tok_s": "tokens/s", "pct_of_roofline": "%",
               "kv_bytes_per_step": "B", "rel_err": "relative Frobenius error vs fp32 reference",
               "dequant_s": "s", **_STEP_UNITS, **(units or {})},
        metrics={"kv_bytes_per_step": kvb, **(extra or {})}, notes=notes)
    # headline figures from the median step time, so tok_s x step_s = batch exactly
    med = case["metrics"]["step_s"]
    case["metrics"]["tok_s"] = cache.B / med
    case["metrics"]["kv_read_gbps"] = kvb / med / GB
    paired.record(case, res, percent=percent)
    if "pct_of_roofline" in res.ratios:
        _roofline_from_pairs(case)
    _relate(ctx, case)
    return case


def _relate(ctx: RunContext, case: dict) -> None:
    """Ratios to earlier cases of this run (same placement and shape) that the case did
    not measure paired itself: speed-up vs fused fp16 and the unfused/fused time ratio,
    from the two cases' medians, said so in the notes."""
    cfg = case["config"]
    have = case.get("paired", {})
    for c in ctx.done:
        if c["bench"] != BENCH_KEY or c["status"] != "ok" or c["config"].get("kind") != "decode":
            continue
        o = c["config"]
        same = all(o.get(k) == cfg.get(k) for k in ("placement", "batch", "context", "device"))
        if not same:
            continue
        got = None
        if o["format"] == "fp16" and o["fused"] and cfg["format"] != "fp16" and "speedup_vs_fp16" not in have:
            got = "speedup_vs_fp16", case["metrics"]["tok_s"] / c["metrics"]["tok_s"]
        if o["format"] == cfg["format"] and o["fused"] and not cfg["fused"] \
                and "unfused_over_fused_time" not in have:
            got = "unfused_over_fused_time", case["metrics"]["step_s"] / c["metrics"]["step_s"]
        if got:
            case["metrics"][got[0]] = got[1]
            case["units"][got[0]] = "x (not paired: medians of two cases of this run)"
            case["notes"].append(f"{got[0]}: not paired, the medians of this case and {c['name']}")


def _roofline_from_pairs(case: dict) -> None:
    """roofline_gbps (median over pairs of the KV-read rate the pair's copies allow) and
    roofline_tok_s; above_ceiling when the paired pct_of_roofline's interval is entirely
    above 100%."""
    from kvbench.measure import flag

    m, smp = case["metrics"], case["samples"]
    m["roofline_gbps"] = summarize([kv / (pct / 100.0) for kv, pct in
                                    zip(smp["kv_read_gbps"], smp["pct_of_roofline"])])["median"]
    m["roofline_tok_s"] = case["config"]["batch"] / (m["kv_bytes_per_step"] / (m["roofline_gbps"] * GB))
    pr = case["paired"]["pct_of_roofline"]
    if pr["ci_low"] > 100.0:
        flag(case, "above_ceiling", f"KV reads at {pr['median']:.0f}% of the paired roofline "
             f"({pr['ci_low']:.0f}-{pr['ci_high']:.0f}%): the copy did not bound the kernel")


def _tier_roofline(cache: Cache, cold_bytes: int, arms: dict[str, Any]) -> Callable[[dict[str, float]], float]:
    """Per pair: the roofline step time over the measured one. The roofline moves the
    tier's bytes at the tier's rate (the H2D copy's; for nvme the slower of it and the
    file's sequential read) overlapped with every KV byte at HBM's rate (``hbm_copy``;
    absent for zero-copy, whose kernel reads the host pages over the link directly)."""
    kvb = cache.kv_bytes_per_step
    work = {k: a.work for k, a in arms.items()}

    def pct_of_roofline(sec: dict[str, float]) -> float:
        tier = work["h2d"] / sec["h2d"]
        if "seq" in sec:
            tier = min(tier, work["seq"] / sec["seq"])
        t_roof = cold_bytes / tier
        if "hbm_copy" in sec:
            t_roof = max(t_roof, kvb / (work["hbm_copy"] / sec["hbm_copy"]))
        return t_roof / sec["step"]
    return pct_of_roofline


def _launch_overhead(res: Any) -> dict[str, float]:
    """eager_step_s and launch_overhead_s (median of per-pair eager minus graph)."""
    step, eager = res.arms["step"].seconds, res.arms["eager"].seconds
    return {"eager_step_s": summarize(eager)["median"],
            "launch_overhead_s": summarize([e - g for e, g in zip(eager, step)])["median"]}


def _step_note(note: str, info: dict[str, Any], graph: Any) -> str:
    from kvbench.timing import ahead_note

    return (f"{note}" + (f" ({ahead_note(info)})" if graph is not None and info else "")
            + "; eager_step_s: the same prepared launches issued from Python, launch gaps included, "
            "sampled alternately; launch_overhead_s: median of per-pair eager minus step")
