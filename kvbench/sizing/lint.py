"""Lint: assumptions of a scenario that contradict each other, with the arithmetic.

Findings are warnings, never errors: a published model may be internally inconsistent
and still be worth reproducing. Each finding names a check, says what disagrees, and
shows the numbers so the reader can judge.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.sizing.model import Sizing, hbm_left_per_gpu, hot_window_fit_tokens
from kvbench.sizing.numbers import TIB_OVER_TB, gib, num, tib
from kvbench.sizing.scenario import TIER_LABELS, UNATTRIBUTED_TIERS

#: Two figures "disagree" when they differ by more than this fraction.
TOLERANCE = 0.05
# TIB_OVER_TB (2^40/10^12, TiB -> TB): a total that is its TiB rows x this factor is the
# rows' size in TB printed as TiB, a unit slip (kvbench.sizing.numbers)
#: Typical GPUs per server node (HGX / DGX boards carry 8).
TYPICAL_GPUS_PER_NODE = 8
#: NVIDIA's inference context memory storage: about 16 TB of SSD per Rubin GPU as a KV
#: tier (shared/reference/tiered-memory-reference.md, "Other figures").
PUBLISHED_SSD_PER_GPU_BYTES = 16e12


@dataclass(frozen=True)
class Finding:
    check: str
    message: str
    arithmetic: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message, "arithmetic": self.arithmetic}


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > TOLERANCE * max(abs(a), abs(b))


def lint(sz: Sizing, measured: Sizing | None = None) -> list[Finding]:
    """Findings for the scenario behind ``sz`` (a computed Sizing). With ``measured`` (the
    sizing after measured replacements), the capacity checks (HBM, DRAM) use it, while the
    checks of the scenario's own figures (demand, context, unattributed totals) use ``sz``."""
    return _demand(sz) + _capacity(measured or sz) + _source(sz)


def _demand(sz: Sizing) -> list[Finding]:
    d = sz.scenario.demand
    out: list[Finding] = []

    # ---- demand: Little's law against given sequence counts
    if d.active_decode_sequences is not None:
        derived = d.peak_qps * d.output_tokens_per_request / d.decode_tok_s_per_request
        if _differs(derived, d.active_decode_sequences):
            out.append(Finding(
                "decode_sequences",
                f"given active decode sequences ({num(d.active_decode_sequences)}) disagree with "
                f"QPS x output tokens / decode speed ({num(derived)}, "
                f"{derived / d.active_decode_sequences:.2f}x)",
                f"{num(d.peak_qps)} req/s x {num(d.output_tokens_per_request)} tok / "
                f"{num(d.decode_tok_s_per_request)} tok/s = {num(derived)} sequences; the given count "
                f"implies {num(d.active_decode_sequences / d.peak_qps)} s of decode per request, i.e. "
                f"{num(d.active_decode_sequences / d.peak_qps * d.decode_tok_s_per_request)} output "
                f"tokens at {num(d.decode_tok_s_per_request)} tok/s",
            ))
    if d.active_prefill_sequences is not None:
        derived = d.peak_qps * d.ttft_s
        if _differs(derived, d.active_prefill_sequences):
            out.append(Finding(
                "prefill_sequences",
                f"given active prefill sequences ({num(d.active_prefill_sequences)}) disagree with "
                f"QPS x TTFT ({num(derived)})",
                f"{num(d.peak_qps)} req/s x {num(d.ttft_s)} s = {num(derived)}",
            ))
    if d.peak_day_tokens is not None:
        derived = sz.q("peak_day_tokens_from_qps")
        if _differs(derived, d.peak_day_tokens):
            implied = d.peak_day_tokens / (d.peak_qps * d.tokens_per_request * 86_400)
            out.append(Finding(
                "peak_day_tokens",
                f"given peak-day tokens ({num(d.peak_day_tokens)}) disagree with the QPS-derived "
                f"count ({num(derived)}, {derived / d.peak_day_tokens:.2f}x)",
                f"{num(d.peak_qps)} req/s x {num(d.tokens_per_request)} tok/request x 86,400 s"
                f"{' x ' + num(d.day_average_over_peak) if d.day_average_over_peak != 1 else ''} = "
                f"{num(derived)}; the given count implies a day-average load of "
                f"{implied:.3f} x peak QPS (demand.day_average_over_peak)",
            ))
    return out


def _capacity(sz: Sizing) -> list[Finding]:
    scn = sz.scenario
    p, fl = scn.placement, scn.fleet
    out: list[Finding] = []
    # ---- HBM: what is left per GPU after weights and overheads vs the hot window
    hbm_gpu = fl.hbm_per_gpu_bytes
    weights_gpu = sz.q("weights_bytes") / fl.gpus
    left = hbm_left_per_gpu(sz)
    hot_gpu = sz.item("live_kv_hot").bytes / fl.gpus
    if hot_gpu > max(left, 0.0):
        fits = hot_window_fit_tokens(sz)
        verdict = (f"a window of {num(int(fits))} tokens would" if fits >= 1 else
                   "weights and overheads alone fill it, so no window fits")
        out.append(Finding(
            "hot_window_hbm",
            f"the hot window ({num(p.hot_window_tokens)} tokens) does not fit in the HBM left per GPU "
            f"after weights and overheads; {verdict}",
            f"HBM/GPU {gib(hbm_gpu)} - overhead {gib(fl.overhead_per_gpu_bytes)} - weights "
            f"{gib(weights_gpu)} (= {num(tib(sz.q('weights_bytes')))} TiB / {num(fl.gpus)} GPUs) = "
            f"{gib(left)} left; hot KV needs {gib(hot_gpu)} per GPU "
            f"({num(round(sz.item('live_kv_hot').tib, 2))} TiB / {num(fl.gpus)} GPUs)",
        ))
    # capacity holds bytes: the corrected totals (no unit slip of the source)
    totals = sz.corrected_totals_bytes
    which = "corrected " if sz.has_source_slip else ""
    capacity = fl.gpus * hbm_gpu
    if totals["hbm"] > capacity:
        out.append(Finding(
            "hbm_capacity",
            f"the {which}HBM total ({num(round(tib(totals['hbm'])))} TiB) exceeds the fleet's HBM "
            f"({num(round(tib(capacity)))} TiB), {totals['hbm'] / capacity:.2f}x",
            f"{num(fl.gpus)} GPUs x {gib(hbm_gpu)} = {num(round(tib(capacity)))} TiB; the {which}HBM "
            f"total is {gib(totals['hbm'] / fl.gpus)} per GPU",
        ))
    if fl.dram_per_node_bytes is not None:
        cap = fl.nodes * fl.dram_per_node_bytes
        if totals["dram"] > cap:
            out.append(Finding(
                "dram_capacity",
                f"the {which}DRAM total exceeds the fleet's DRAM ({totals['dram'] / cap:.2f}x)",
                f"{num(fl.nodes)} nodes x {gib(fl.dram_per_node_bytes)} = {num(round(tib(cap)))} TiB "
                f"vs {which}DRAM total {num(round(tib(totals['dram'])))} TiB",
            ))
    return out


def _source(sz: Sizing) -> list[Finding]:
    scn = sz.scenario
    d, p, fl = scn.demand, scn.placement, scn.fleet
    out: list[Finding] = []

    # ---- live KV holds a window, not the context
    tpr = d.tokens_per_request
    if p.hot_window_tokens < tpr:
        full = sz.q("active_sequences") * tpr * sz.q("kv_bytes_per_token")
        out.append(Finding(
            "live_kv_context",
            f"live KV counts {num(p.hot_window_tokens)} tokens per active sequence, but a request "
            f"reaches {num(tpr)} tokens: the other {num(tpr - p.hot_window_tokens)} tokens of each "
            f"live context are in no live-KV row",
            f"full contexts: {num(sz.q('active_sequences'))} sequences x {num(tpr)} tok x "
            f"{num(sz.q('kv_bytes_per_token'))} B = {num(round(tib(full)))} TiB vs live KV "
            f"{num(round(tib(sz.q('live_kv_bytes'))))} TiB",
        ))

    # ---- totals that hold more than their rows
    for tier in UNATTRIBUTED_TIERS:
        f = _unattributed(sz, tier)
        if f is not None:
            out.append(f)

    # ---- fleet shape
    gpn = fl.gpus / fl.nodes
    if gpn < 2:
        ssd_gpu = fl.nodes * fl.rack_ssd_per_node_bytes / fl.gpus
        out.append(Finding(
            "gpus_per_node",
            f"{num(fl.nodes)} nodes for {num(fl.gpus)} GPUs is {gpn:.2g} GPU per node (servers "
            f"usually carry {TYPICAL_GPUS_PER_NODE}); rack SSD per GPU comes to "
            f"{num(ssd_gpu / 1e12)} TB vs ~{num(PUBLISHED_SSD_PER_GPU_BYTES / 1e12)} TB per GPU in "
            f"NVIDIA's context-memory tier",
            f"rack SSD caches = {num(fl.nodes)} nodes x {num(fl.rack_ssd_per_node_bytes / 1e12)} TB "
            f"= {num(round(sz.item('rack_ssd_caches').tib))} TiB; at {TYPICAL_GPUS_PER_NODE} GPUs per "
            f"node: {num(fl.gpus / TYPICAL_GPUS_PER_NODE)} nodes, "
            f"{num(round(tib(fl.gpus / TYPICAL_GPUS_PER_NODE * fl.rack_ssd_per_node_bytes)))} TiB",
        ))
    return out


def _unattributed(sz: Sizing, tier: str) -> Finding | None:
    """What a tier's total holds beyond its listed rows, and whether it is the rows x
    2^40/10^12 (the rows' size in TB printed as TiB)."""
    extra = sz.item(f"unattributed_{tier}")
    listed = sum(it.bytes for it in sz.tier_items(tier) if not it.id.startswith("unattributed"))
    if extra.bytes <= 0 or listed <= 0:
        return None
    rows, total = tib(listed), tib(listed + extra.bytes)
    arithmetic = (f"listed {num(round(rows))} TiB x {TIB_OVER_TB:.6f} = {num(round(rows * TIB_OVER_TB))}; "
                  f"listed + unattributed = {num(round(total))} TiB")
    if extra.source_only:
        return Finding(
            f"unattributed_{tier}",
            f"the source's {TIER_LABELS[tier]} total is its listed rows x 2^40/10^12 "
            f"({TIB_OVER_TB:.4f}): the rows (TiB) converted to TB and printed as TiB, a unit slip; "
            f"kvbench reproduces it as the source's ({num(round(total))} TiB) and gives the corrected "
            f"total ({num(round(rows))} TiB = {num(round(listed / 1e12))} TB) beside it",
            arithmetic + " (unattributed.rule: source_unit_slip, recomputed in every sizing and sweep)",
        )
    factor = (listed + extra.bytes) / listed
    if abs(factor - TIB_OVER_TB) < 1e-4:
        return Finding(
            f"unattributed_{tier}",
            f"the {TIER_LABELS[tier]} total is its listed rows x 2^40/10^12 ({TIB_OVER_TB:.4f}): "
            f"the rows (TiB) converted to TB and printed as TiB would give exactly this; the "
            f"unattributed {num(round(tib(extra.bytes)))} TiB may be a unit slip, not storage "
            f"(unattributed.rule: source_unit_slip does the source's arithmetic in every sizing)",
            arithmetic,
        )
    return Finding(
        f"unattributed_{tier}",
        f"the {TIER_LABELS[tier]} total holds {num(round(tib(extra.bytes)))} TiB ({extra.bytes / listed:.1%} "
        f"of its listed rows) that no listed input explains",
        f"listed {num(round(rows))} TiB + unattributed {num(round(tib(extra.bytes)))} TiB",
    )
