"""Measured mode: replace a scenario's assumptions with figures from kvbench result files.

Each replacement is kept side by side with the assumption and names the result file and
case it came from. What the results lack is listed with the benchmark that measures it.

Replaced (docs/sizing.md, "Measured mode"):
  * KV bytes/token of the scenario's format, scales included: from the page size a
    ``transfer`` case stored (page_bytes / tokens_per_page / layers per page x layers);
    the live and reuse sizes follow.
  * HBM per GPU: ``environment.gpus[].memory_total_bytes``; the hot window that fits follows.
  * Decode capacity (kvbench/sizing/measured_decode.py): ``e2e`` cases' ``out_tok_s`` of
    the scenario's model, full size, on a GPU -> sequences per GPU = out tok/s / decode
    tok/s per request; else ``decode`` cases' ``kv_read_gbps`` per placement -> sequences
    per GPU = KV-read bytes/s / (decode tok/s x KV bytes of the mean decode context) ->
    GPUs needed for the active decode sequences vs the fleet.
  * Reuse cache: time to load a reused prefix from DRAM and from NVMe (``prefix`` cases'
    ``load_s``, else ``transfer`` tier bandwidths) vs recompute at the measured prefill
    rate -> which tier serves a hit within the TTFT target -> the cheapest such split.
  * Pooled DRAM (a row beside the split): a hit fetched from another host's memory at the
    ``remote`` results' remote->dram GB/s (kvbench/sizing/measured_remote.py), then dram->hbm.
  * Cost per tier where prices are given.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.sizing.measured_common import (CapacityRow, Doc, Measured, Missing, Replacement,
                                            ReuseRow)
from kvbench.sizing.measured_common import case_ref as _ref
from kvbench.sizing.measured_common import metric as _metric
from kvbench.sizing.measured_common import model_spec as _model
from kvbench.sizing.measured_common import ok_cases as _ok_cases
from kvbench.sizing.measured_common import params_active as _params_active
from kvbench.sizing.measured_common import same as _same
from kvbench.sizing.measured_decode import capacity
from kvbench.sizing.measured_remote import remote_bandwidths, remote_notes
from kvbench.sizing.model import Sizing, compute, hot_window_fit_tokens
from kvbench.sizing.numbers import GB, gib, num, seconds, tib
from kvbench.sizing.scenario import TIER_SHORT, Scenario
from kvbench.spec import get_format

#: the result types live in measured_common (shared with measured_decode); named here too
__all__ = ["CapacityRow", "Measured", "Missing", "Replacement", "ReuseRow", "measure", "tier_bandwidths"]


def tier_bandwidths(docs: list[Doc]) -> dict[str, tuple[float, str]]:
    """Best paged ``transfer`` GB/s per direction ("dram->hbm": (gbps, source)); where a
    direction's cases record a page-cache state (file reads), cold ones are preferred
    when any exist. The remote tier's directions (``remote->dram``) come from ``remote``
    results (kvbench/sizing/measured_remote.py)."""
    by_dir: dict[str, list[tuple[float, str, dict[str, Any]]]] = {}
    for path, c in _ok_cases(docs, "transfer"):
        cfg = c.get("config", {})
        if cfg.get("kind", "paged") != "paged":
            continue
        gbps = _metric(c, "gbps")
        direction = cfg.get("direction") or f"{cfg.get('src')}->{cfg.get('dst')}"
        if gbps is None or not isinstance(direction, str):
            continue
        by_dir.setdefault(direction, []).append((gbps, _ref(path, c), cfg))
    out = {}
    for direction, rows in by_dir.items():
        if any(r[2].get("cache_state") == "cold" for r in rows):
            rows = [r for r in rows if r[2].get("cache_state") == "cold"]
        gbps, ref, cfg = max(rows, key=lambda r: r[0])
        state = f", {cfg['cache_state']} cache" if cfg.get("cache_state") else ""
        out[direction] = (gbps, f"{ref} (best paged{state})")
    out.update(remote_bandwidths(docs))
    return out


# ------------------------------------------------------------------------ pieces
def _kv_bytes_per_token(scn: Scenario, docs: list[Doc], m: Measured) -> float | None:
    model, fmt = scn.model, scn.kv_format
    spec_bpt = model.kv_bytes_per_token_at(scn.demand.tokens_per_request, fmt)
    found: list[tuple[int, float, str, str]] = []  # (rank, bpt for the scenario model, ref, note)
    for path, c in _ok_cases(docs, "transfer"):
        cfg = c.get("config", {})
        if not _same(cfg.get("format"), fmt):
            continue
        page, tpp = cfg.get("page_bytes"), cfg.get("tokens_per_page")
        cm = _model(cfg.get("model")) or (model if cfg.get("model") is None else None)
        if not (isinstance(page, (int, float)) and isinstance(tpp, (int, float)) and page > 0
                and tpp > 0 and cm is not None):
            continue
        layers = cm.num_layers if cfg.get("layout") == "block" else 1
        case_bpt = page / (tpp * layers) * cm.full_layers
        if cm.name.lower() == model.name.lower():
            found.append((0, case_bpt, _ref(path, c), ""))
        else:
            scaled = spec_bpt * case_bpt / cm.kv_bytes_per_token(fmt)
            found.append((1, scaled, _ref(path, c),
                          f"measured on {cm.name} ({num(case_bpt)} B/token); scaled by the models' "
                          f"bytes/token ratio {num(spec_bpt)} / {num(cm.kv_bytes_per_token(fmt))}"))
    if not found:
        m.missing.append(Missing(f"KV bytes/token ({fmt})",
                                 f"run `kvbench run --bench transfer` with format {fmt}"))
        return None
    found.sort(key=lambda r: r[0])
    rank, bpt, ref, note = found[0]
    values = {round(r[1]) for r in found if r[0] == rank}
    if len(values) > 1:
        note = (note + "; " if note else "") + f"cases disagree ({', '.join(num(v) for v in sorted(values))}); first used"
    diff = bpt / spec_bpt - 1
    if abs(diff) > 1e-9:
        note = (note + "; " if note else "") + f"{diff:+.2%} vs the format's arithmetic"
    m.replacements.append(Replacement(
        f"KV bytes/token ({fmt}, scales incl.)", f"{num(spec_bpt)} B (model x format arithmetic)",
        f"{num(round(bpt, 2))} B", ref, note or "page_bytes / tokens_per_page / layers per page x layers"))
    return bpt


def _hbm_per_gpu(scn: Scenario, docs: list[Doc], m: Measured) -> float | None:
    seen = []
    for path, doc in docs:
        for i, g in enumerate(doc.get("environment", {}).get("gpus") or []):
            mem = g.get("memory_total_bytes") if isinstance(g, dict) else None
            if isinstance(mem, (int, float)) and mem > 0:
                seen.append((float(mem), str(g.get("name", "GPU")), f"{Path(path).name}: environment.gpus[{i}]"))
    if not seen:
        m.missing.append(Missing("HBM per GPU", "the result files hold no GPU: run kvbench on a GPU "
                                                "machine (any bench records environment.gpus)"))
        return None
    mem, name, ref = seen[0]
    note = name
    if len({s[0] for s in seen}) > 1:
        note += f"; results hold {len({s[0] for s in seen})} different GPU sizes, first used"
    m.replacements.append(Replacement(
        "HBM per GPU", f"{gib(scn.fleet.hbm_per_gpu_bytes)} ({scn.fleet.hbm_per_gpu_bytes / GB:.4g} GB)",
        f"{gib(mem)} ({mem / GB:.4g} GB)", ref, note))
    return mem


def _best_prefix(docs: list[Doc], source: str, scn: Scenario, tokens: float):
    """The prefix case for ``source`` closest in prefix length to ``tokens``, preferring the
    scenario's model."""
    rows = []
    for path, c in _ok_cases(docs, "prefix"):
        cfg = c.get("config", {})
        pt = cfg.get("prefix_tokens")
        if cfg.get("source") != source or not isinstance(pt, (int, float)) or pt <= 0:
            continue
        rank = 0 if _same(cfg.get("model"), scn.model_name) else 1
        rows.append(((rank, abs(math.log(pt / tokens))), path, c))
    if not rows:
        return None
    _, path, c = min(rows, key=lambda r: r[0])
    return path, c


def _reuse(sz: Sizing, docs: list[Doc], bw: dict[str, tuple[float, str]], m: Measured) -> dict[str, float] | None:
    """Reuse-hit load times per tier vs recompute; returns the recommended split or None."""
    scn = sz.scenario
    ttft = scn.demand.ttft_s
    tokens = scn.placement.reuse_prefix_tokens or scn.demand.prompt_tokens_per_request
    m.reuse_prefix_tokens = tokens
    nbytes = sz.sequence_kv_bytes(tokens)
    fmt = scn.kv_format

    def from_prefix(source: str) -> tuple[float, str, str, bool] | None:
        hit = _best_prefix(docs, source, scn, tokens)
        if hit is None:
            return None
        path, c = hit
        cfg = c["config"]
        load_s = _metric(c, "load_s")
        if load_s is None:
            return None
        cm = _model(cfg.get("model"))
        assumed = []
        if cm is None:
            cm = scn.model
            assumed.append(f"case model {cfg.get('model')!r} unknown, {cm.name} assumed")
        cfmt = cfg.get("format") or fmt
        if not cfg.get("format"):
            assumed.append(f"case gives no format, {fmt} assumed")
        try:
            case_bytes = cm.kv_bytes_for_sequence(int(cfg["prefix_tokens"]), get_format(cfmt))
        except KvbenchError:
            return None
        note = (f"{num(cfg['prefix_tokens'])}-token prefix of {cm.name}/{cfmt} in {seconds(load_s)} "
                f"({case_bytes / load_s / GB:.3g} GB/s), scaled by bytes to {num(tokens)} tokens")
        note = "; ".join([note, *assumed])
        return load_s * nbytes / case_bytes, _ref(path, c), note, False

    def from_transfer(*directions: str, lower_bound: str = "") -> tuple[float, str, str, bool] | None:
        legs = [(d, bw[d]) for d in directions if d in bw]
        if len(legs) != len(directions):
            return None
        gbps = min(leg[1][0] for leg in legs)
        note = " then ".join(f"{d} {g:.3g} GB/s" for d, (g, _) in legs)
        if len(legs) > 1:
            note += "; pipelined, the slower leg bounds"
        if lower_bound:
            note += f"; {lower_bound}"
        return nbytes / (gbps * GB), "; ".join(r for _, (_, r) in legs), note, bool(lower_bound)

    plans = {
        "dram": [lambda: from_prefix("dram"), lambda: from_transfer("dram->hbm")],
        "nvme": [lambda: from_prefix("nvme"), lambda: from_transfer("nvme->hbm"),
                 lambda: from_transfer("nvme->dram", "dram->hbm"),
                 lambda: from_transfer("nvme->dram", lower_bound="dram->hbm not measured: a lower "
                                                                  "bound on the time")],
        # pooled DRAM on other hosts (the remote tier): a row beside the split, which the
        # scenario holds in local DRAM and NVMe; shown only when a remote result is given
        "remote": [lambda: from_transfer("remote->dram", "dram->hbm"),
                   lambda: from_transfer("remote->dram", lower_bound="dram->hbm not measured: a lower "
                                                                     "bound on the time")],
    }
    times: dict[str, float] = {}
    for tier, tries in plans.items():
        got = next((r for r in (t() for t in tries) if r is not None), None)
        if got is None and tier == "remote":
            continue
        if tier == "remote":
            m.notes.extend(remote_notes(bw))
        if got is None:
            how = ("run `kvbench run --bench prefix` (source dram), or `--bench transfer` on a GPU "
                   "machine for dram->hbm" if tier == "dram" else
                   "run `kvbench run --bench prefix` (source nvme), or `--bench transfer` for "
                   "nvme->dram and dram->hbm")
            m.missing.append(Missing(f"reuse-hit load time from {TIER_SHORT[tier]}", how))
            continue
        t, ref, note, lower = got
        times[tier] = t
        m.reuse.append(ReuseRow(tier, t, t <= ttft, ref, note, lower_bound=lower))

    hit = _best_prefix(docs, "recompute", scn, tokens)
    rate = None
    if hit is not None:
        path, c = hit
        cfg = c["config"]
        rate = _metric(c, "prefill_tok_s")
        if rate is None and _metric(c, "recompute_s"):
            rate = cfg["prefix_tokens"] / _metric(c, "recompute_s")
    if rate is None:
        m.missing.append(Missing("recompute time (prefill tok/s)",
                                 "run `kvbench run --bench prefix` (source recompute)"))
    else:
        note = f"measured {num(round(rate))} prefill tok/s"
        if not _same(cfg.get("model"), scn.model_name):
            pa, pb = _params_active(_model(cfg.get("model"))), _params_active(scn.model)
            if pa and pb:
                rate = rate * pa / pb
                note += (f" on {cfg.get('model')}; scaled by active params {num(pa)} / {num(pb)} "
                         f"to {num(round(rate))} tok/s")
            else:
                note += f" on {cfg.get('model')}; not scaled (active params unknown)"
        t = tokens / rate
        times["recompute"] = t
        m.reuse.append(ReuseRow("recompute", t, t <= ttft, _ref(path, c), note))

    return _recommend(scn, times, m)


def _recommend(scn: Scenario, times: dict[str, float], m: Measured) -> dict[str, float] | None:
    ttft = scn.demand.ttft_s
    ok = [t for t in ("dram", "nvme") if t in times and times[t] <= ttft]
    prices = scn.prices_usd_per_gb
    also = ""
    if "recompute" in times:
        also = (f"; recompute takes {seconds(times['recompute'])}"
                + (", also within TTFT: a hit saves prefill compute" if times["recompute"] <= ttft
                   else ", over TTFT: a hit is what meets it"))
    if not ("dram" in times or "nvme" in times):
        m.reuse_verdict = "no reuse-hit load time measured; split kept" + also
        return None
    if not ok:
        if "recompute" in times and times["recompute"] <= ttft:
            m.reuse_verdict = (f"no measured tier loads a hit within TTFT {seconds(ttft)}, but "
                               f"recompute does: the reuse cache saves compute only; split kept")
        else:
            m.reuse_verdict = f"no measured path serves a hit within TTFT {seconds(ttft)}; split kept"
        return None
    if len(ok) == 2:
        if "dram" in prices and "nvme" in prices:
            tier = min(ok, key=lambda t: prices[t])
            why = f"cheaper at ${prices[tier]:g}/GB"
        else:
            tier = "nvme"
            why = f"no price for both tiers: {TIER_SHORT['nvme']} assumed cheaper per GB than DRAM"
    else:
        tier = ok[0]
        other = "nvme" if tier == "dram" else "dram"
        why = (f"{TIER_SHORT[other]} too slow ({seconds(times[other])})" if other in times
               else f"{TIER_SHORT[other]} not measured")
    split = {"dram": 1.0 if tier == "dram" else 0.0, "nvme": 1.0 if tier == "nvme" else 0.0}
    bound = next((" at least" for r in m.reuse if r.path == tier and r.lower_bound), "")
    m.reuse_verdict = (f"{TIER_SHORT[tier]} serves a reuse hit within TTFT {seconds(ttft)} "
                       f"({bound}{seconds(times[tier])}); {why}{also}")
    p = scn.placement
    m.replacements.append(Replacement(
        f"reuse split {TIER_SHORT['dram']} / {TIER_SHORT['nvme']}",
        f"{num(p.reuse_dram_fraction)} / {num(p.reuse_nvme_fraction)}",
        f"{num(split['dram'])} / {num(split['nvme'])}", "reuse-hit load times (below)",
        f"cheapest split meeting TTFT {seconds(ttft)}: {why}"))
    return split


# ------------------------------------------------------------------------ entry point
def measure(scn: Scenario, paths: list[str]) -> Measured:
    """Load result files and size ``scn`` with every measurement they provide."""
    from kvbench.results import load

    docs: list[Doc] = [(str(p), load(p)) for p in paths]
    assumed = compute(scn)
    m = Measured(assumed=assumed, sizing=assumed)
    bpt = _kv_bytes_per_token(scn, docs, m)
    hbm = _hbm_per_gpu(scn, docs, m)
    cur = scn
    if hbm is not None:
        cur = dataclasses.replace(cur, fleet=dataclasses.replace(cur.fleet, hbm_per_gpu_bytes=hbm))
    kv_src = next((r.source for r in m.replacements if r.quantity.startswith("KV bytes")), "")
    sz = compute(cur, kv_bytes_per_token=bpt, kv_source=kv_src)
    if bpt is not None:
        for key, label in (("live_kv_bytes", "live KV"), ("reuse_kv_bytes", "KV reuse cache")):
            m.replacements.append(Replacement(
                label, f"{num(round(tib(assumed.q(key)), 2))} TiB", f"{num(round(tib(sz.q(key)), 2))} TiB",
                "follows from KV bytes/token"))
    if hbm is not None or bpt is not None:
        fit = hot_window_fit_tokens(sz)
        m.replacements.append(Replacement(
            "hot window that fits in HBM", f"{num(scn.placement.hot_window_tokens)} tokens (scenario)",
            "all live KV" if math.isinf(fit) else f"{num(int(fit))} tokens",
            "HBM per GPU, KV bytes/token above",
            "(HBM/GPU - overhead/GPU - weights/GPU) x GPUs / (sequences x B/token x HBM share); "
            "reported, not applied"))
    capacity(sz, docs, m)
    split = _reuse(sz, docs, tier_bandwidths(docs), m)
    if split is not None:
        cur = dataclasses.replace(cur, placement=dataclasses.replace(
            cur.placement, reuse_dram_fraction=split["dram"], reuse_nvme_fraction=split["nvme"]))
        sz = compute(cur, kv_bytes_per_token=bpt, kv_source=kv_src)
    m.sizing = sz
    # costs of the bytes held: the corrected totals (a source's unit slip holds none)
    slip = " (corrected: no unit slip)" if sz.has_source_slip else ""
    for tier, cost in sz.corrected_costs_usd.items():
        m.replacements.append(Replacement(
            f"cost, {TIER_SHORT[tier]} (${scn.prices_usd_per_gb[tier]:g}/GB)",
            f"${assumed.corrected_costs_usd[tier]:,.0f}", f"${cost:,.0f}",
            f"tier total{slip} x price (GB = 1e9 B)"))
    return m
