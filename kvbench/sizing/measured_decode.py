"""Measured mode, decode capacity: sequences per GPU at the scenario's decode speed, per
placement, from two kinds of case (docs/sizing.md, "Measured mode"):

* ``e2e`` (end to end: weights, compute and KV reads together): sequences/GPU =
  ``out_tok_s`` / decode tok/s per request, where ``out_tok_s`` = batch x new tokens /
  whole generation (prefill included) of ``config.batch`` sequences of ``prompt_tokens``
  + ``new_tokens``, i.e. at a mean context of prompt + new/2 tokens. Usable only for the
  scenario's model, full size (``shrunk`` false, ``layers_used == layers_config``), on a
  GPU (``device`` cuda...); other e2e cases are listed as seen, with the reason.
* ``decode`` (the microbenchmark): sequences/GPU = ``kv_read_gbps`` x 1e9 / (decode tok/s
  x KV bytes of the mean decode context, input + RAG + output/2).

The placement the scenario's live split asks for (``hbm``, ``nvme``, ``hot_window``) is
used. Among its rows one measured in the scenario's format wins, then e2e over decode.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.sizing.measured_common import (CapacityRow, Doc, Measured, Missing, Replacement,
                                            case_ref, metric, ok_cases, same)
from kvbench.sizing.model import Sizing
from kvbench.sizing.numbers import GB, num, sig3
from kvbench.sizing.scenario import Scenario
from kvbench.spec import get_format

#: where an e2e cache kind keeps K/V, for result files whose cases do not say it
#: (``config.decode_placement``): DynamicCache on the model's device (a GPU: hbm),
#: ``offloading=True`` streamed from host memory per layer, as decode's dram_prefetch;
#: ``kvbench`` pages on ``config.tier``
E2E_PLACEMENT = {"dynamic": "hbm", "dynamic_offload": "dram_prefetch"}
#: transformers' own caches store K/V in the model dtype (e2e: ``config.dtype``)
DTYPE_FORMAT = {"float16": "fp16", "bfloat16": "bf16"}
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def decode_placement(scn: Scenario) -> str:
    """The decode placement the scenario's live-KV split asks for."""
    p = scn.placement
    if p.live_hbm_fraction >= 1:
        return "hbm"
    if p.live_nvme_fraction > 0:
        return "nvme"
    return "hot_window"


def _mean_context(scn: Scenario) -> float:
    d = scn.demand
    return d.prompt_tokens_per_request + d.output_tokens_per_request / 2


# ------------------------------------------------------------------------ decode bench
def _decode_rows(sz: Sizing, docs: list[Doc], selected: str) -> list[CapacityRow]:
    """One row per placement: the best ``kv_read_gbps``, matching format and model first."""
    scn = sz.scenario
    need_bps = scn.demand.decode_tok_s_per_request * sz.sequence_kv_bytes(_mean_context(scn))
    best: dict[str, tuple[tuple[int, int, float], float, str, dict[str, Any]]] = {}
    for path, c in ok_cases(docs, "decode"):
        cfg = c.get("config", {})
        gbps = metric(c, "kv_read_gbps")
        place = cfg.get("placement")
        if gbps is None or not isinstance(place, str):
            continue
        key = (int(same(cfg.get("format"), scn.kv_format)), int(same(cfg.get("model"), scn.model_name)), gbps)
        if place not in best or key > best[place][0]:
            best[place] = (key, gbps, case_ref(path, c), cfg)
    rows = []
    for place, (key, gbps, ref, cfg) in sorted(best.items()):
        per_gpu = gbps * GB / need_bps
        needed = sz.q("active_decode_sequences") / per_gpu
        notes = []
        if not key[0]:
            notes.append(f"measured with format {cfg.get('format')}, not {scn.kv_format}")
        if not key[1]:
            notes.append(f"measured on {cfg.get('model')}; bytes/s applied to {scn.model_name}'s "
                         f"bytes/token")
        batch, ctx = cfg.get("batch"), cfg.get("context")
        rows.append(CapacityRow(
            place, gbps, per_gpu, needed, needed / scn.fleet.gpus, ref, place == selected,
            "; ".join(notes), basis="decode", format=str(cfg.get("format") or ""),
            batch=batch if isinstance(batch, (int, float)) else None,
            context_tokens=ctx if isinstance(ctx, (int, float)) else None))
    return rows


# ------------------------------------------------------------------------ e2e bench
def _e2e_cases(docs: list[Doc]):
    """(path, case, model name) of every ok e2e case; the model is the case's
    ``config.model``, else the run's (``run.options.model``, ``run.model.name``)."""
    for path, doc in docs:
        run = doc.get("run") if isinstance(doc.get("run"), dict) else {}
        opts = run.get("options") if isinstance(run.get("options"), dict) else {}
        rmodel = run.get("model") if isinstance(run.get("model"), dict) else {}
        for c in doc.get("cases", []):
            if c.get("bench") == "e2e" and c.get("status") == "ok":
                cfg = c.get("config") or {}
                yield path, c, cfg.get("model") or opts.get("model") or rmodel.get("name")


def _e2e_where(cfg: dict[str, Any]) -> tuple[str | None, str | None]:
    """(placement, KV format) of an e2e case, None where sizing has no name for it: what
    the case declares (``decode_placement``, ``kv_format``; '' or None: none), else from
    its cache kind."""
    if "decode_placement" in cfg or "kv_format" in cfg:
        return cfg.get("decode_placement") or None, cfg.get("kv_format") or None
    kind = cfg.get("cache")
    if kind == "kvbench":
        return cfg.get("tier"), cfg.get("format")
    if kind in E2E_PLACEMENT:
        return E2E_PLACEMENT[kind], DTYPE_FORMAT.get(cfg.get("dtype"))
    return None, None


def _positive(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in xs)


def e2e_unusable(scn: Scenario, model: Any, case: dict[str, Any]) -> str:
    """Why an e2e case cannot stand for the scenario's decode capacity ('' when it can)."""
    cfg = case.get("config") or {}
    why = []
    if not same(model, scn.model_name):
        why.append(f"model {model}, not the scenario's {scn.model_name}" if model
                   else "the result names no model")
    lu, lc = cfg.get("layers_used"), cfg.get("layers_config")
    dev = str(cfg.get("device") or "an unrecorded device")
    on_gpu = dev.startswith("cuda")
    layers_known = isinstance(lu, int) and isinstance(lc, int)
    device_said = False
    if cfg.get("shrunk") is True or (layers_known and lu != lc):
        what = (f"{lu} of {lc} layers" if lu != lc else
                f"hidden size {cfg.get('hidden_size_used')} of {cfg.get('hidden_size_config')}")
        why.append(f"shrunk model: {what}" + ("" if on_gpu else f" on {dev}"))
        device_said = True
    elif cfg.get("shrunk") is not False or not layers_known:
        why.append("full size not recorded (config.shrunk, layers_used, layers_config)")
    if not on_gpu and not device_said:
        why.append(f"ran on {dev}, not a GPU")
    built = {"layers": (cfg.get("layers_used"), scn.model.num_layers),
             "KV heads": (cfg.get("kv_heads_used"), scn.model.kv_heads),
             "head_dim": (cfg.get("head_dim_used"), scn.model.head_dim)}
    off = [f"{k} {got} vs {want}" for k, (got, want) in built.items() if isinstance(got, int) and got != want]
    if off and not device_said and same(model, scn.model_name):  # e.g. e2e.model_path's own model
        why.append(f"the model built differs from configs/models/{scn.model_name}: {', '.join(off)}")
    kind = cfg.get("cache")
    place, fmt = _e2e_where(cfg)
    if place is None or fmt is None:
        why.append(f"cache {kind}: K/V quantized by transformers, in no kvbench format"
                   if str(kind).startswith("quantized/") else
                   f"cache {kind}: no decode placement or KV format sizing can use (placement "
                   f"{place}, format {fmt})")
    else:
        try:
            get_format(fmt)
        except KvbenchError:
            why.append(f"unknown KV format {fmt}")
    if metric(case, "out_tok_s") is None:
        why.append("no out_tok_s")
    if not _positive(cfg.get("batch"), cfg.get("prompt_tokens"), cfg.get("new_tokens")):
        why.append("batch, prompt_tokens or new_tokens not recorded")
    return "; ".join(why)


def _e2e_caveats(scn: Scenario, cfg: dict[str, Any], case: dict[str, Any], per_gpu: float) -> list[str]:
    """What the e2e figure does not say about the scenario, in words."""
    dtok = scn.demand.decode_tok_s_per_request
    batch, prompt, new = cfg["batch"], cfg["prompt_tokens"], cfg["new_tokens"]
    out, ctx, e_ctx = metric(case, "out_tok_s"), _mean_context(scn), prompt + new / 2
    notes = [f"e2e: {sig3(out)} output tok/s for batch {num(batch)} at context {num(e_ctx)} "
             f"({num(prompt)} prompt + {num(new)}/2 new), whole generation incl. prefill"]
    tpot = metric(case, "tpot_s")
    if tpot is not None:
        notes.append(f"decode steps alone {sig3(batch / tpot)} tok/s (batch / tpot)")
    if ctx > e_ctx:
        notes.append(f"the scenario's mean decode context ({num(ctx)}) is longer: an upper bound")
    elif ctx < e_ctx:
        notes.append(f"the scenario's mean decode context ({num(ctx)}) is shorter: conservative")
    if per_gpu > batch:
        notes.append(f"{num(round(per_gpu, 1))} sequences assume the tok/s of batch {num(batch)} "
                     f"holds at that concurrency (not measured)")
    elif out / batch < dtok:
        notes.append(f"each of the {num(batch)} sequences decoded at {sig3(out / batch)} tok/s, below "
                     f"the scenario's {num(dtok)}: the GPU meets it only at a smaller batch, not measured")
    _, fmt = _e2e_where(cfg)
    if not same(fmt, scn.kv_format):
        notes.append(f"measured with format {fmt}, not {scn.kv_format}")
    w, dtype = scn.weights, cfg.get("dtype", "float16")
    differs = []
    if w.bytes_per_param is not None and w.bytes_per_param != DTYPE_BYTES.get(dtype):
        differs.append(f"{num(w.bytes_per_param)} B/param weights")
    if w.gpus_per_replica is not None and w.gpus_per_replica > 1:
        differs.append(f"{num(w.gpus_per_replica)} GPUs per replica")
    if differs:
        notes.append(f"e2e ran {dtype} weights on one GPU ({cfg.get('device')}); the scenario has "
                     + ", ".join(differs))
    notes.append("KV read GB/s implied: output tok/s x KV bytes at the e2e context")
    return notes


def _e2e_rows(sz: Sizing, docs: list[Doc], selected: str, m: Measured) -> list[CapacityRow]:
    """One row per placement from usable e2e cases (scenario's format first, then those
    whose sequences meet the scenario's speed, then those covering its context, then the
    most tok/s); each unusable case becomes a note with its reason."""
    scn = sz.scenario
    dtok, ctx = scn.demand.decode_tok_s_per_request, _mean_context(scn)
    best: dict[str, tuple[tuple, str, dict[str, Any]]] = {}
    unusable: dict[tuple[str, str], list[str]] = {}  # (file, reason) -> case names, in order
    for path, c, model in _e2e_cases(docs):
        why = e2e_unusable(scn, model, c)
        if why:
            unusable.setdefault((Path(path).name, why), []).append(f"e2e/{c.get('name')}")
            continue
        cfg = c["config"]
        place, fmt = _e2e_where(cfg)
        out = metric(c, "out_tok_s")
        e_ctx = cfg["prompt_tokens"] + cfg["new_tokens"] / 2
        key = (int(same(fmt, scn.kv_format)), int(out / cfg["batch"] >= dtok), int(e_ctx >= ctx), out)
        if place not in best or key > best[place][0]:
            best[place] = (key, path, c)
    for (name, why), cases in unusable.items():
        m.notes.append(f"e2e {'case' if len(cases) == 1 else 'cases'} {name}: {', '.join(cases)} seen, "
                       f"not usable for decode capacity: {why}")
    rows = []
    for place, (_, path, c) in sorted(best.items()):
        cfg = c["config"]
        _, fmt = _e2e_where(cfg)
        out = metric(c, "out_tok_s")
        e_ctx = cfg["prompt_tokens"] + cfg["new_tokens"] / 2
        per_gpu = out / dtok
        needed = sz.q("active_decode_sequences") / per_gpu
        bpt = cfg.get("kv_bytes_per_token")  # the case's own (its page size), else arithmetic
        seq = bpt * e_ctx if _positive(bpt) else scn.model.kv_bytes_for_sequence(round(e_ctx), fmt)
        implied = out * seq / GB
        rows.append(CapacityRow(
            place, implied, per_gpu, needed, needed / scn.fleet.gpus, case_ref(path, c), place == selected,
            "; ".join(_e2e_caveats(scn, cfg, c, per_gpu)), basis="e2e", format=fmt,
            batch=cfg["batch"], context_tokens=e_ctx, out_tok_s=out, upper_bound=ctx > e_ctx))
    return rows


# ------------------------------------------------------------------------ both
def _how(scn: Scenario, selected: str = "") -> str:
    decode = "run `kvbench run --bench decode`" + (f" (placement {selected})" if selected else "")
    if selected == "hot_window":  # e2e has no hot-window cache
        return decode
    case = f" (case kvbench/{selected}/{scn.kv_format})" if selected else ""
    return (f"{decode}, or `kvbench run --bench e2e --model {scn.model_name}` on a GPU, full size "
            f"(not --quick){case}")


def _formula(sz: Sizing, row: CapacityRow) -> str:
    scn = sz.scenario
    d, ctx = scn.demand, _mean_context(scn)
    if row.basis == "decode":
        need = d.decode_tok_s_per_request * sz.sequence_kv_bytes(ctx)
        return (f"decode capacity (decode bench): sequences/GPU = KV-read GB/s / (decode tok/s x KV bytes "
                f"of the mean decode context, input + RAG + output/2); {num(d.decode_tok_s_per_request)} "
                f"tok/s x ({num(ctx)} tok mean decode context x {num(sz.q('kv_bytes_per_token'))} B) = "
                f"{need / GB:.3g} GB/s of KV reads per sequence")
    bound = ("; the scenario's is longer: an upper bound" if row.upper_bound else
             "; the scenario's is shorter: conservative" if ctx < row.context_tokens else "")
    return (f"decode capacity (e2e): sequences/GPU = e2e output tok/s / decode tok/s per request = "
            f"{sig3(row.out_tok_s)} / {num(d.decode_tok_s_per_request)} = {num(round(row.seqs_per_gpu, 1))}"
            f"{' (at most)' if row.upper_bound else ''}; e2e tok/s measured at batch {num(row.batch)} "
            f"and context {num(row.context_tokens)} tokens ({row.source}) vs the scenario's mean decode "
            f"context {num(ctx)} (input + RAG + output/2){bound}")


def capacity(sz: Sizing, docs: list[Doc], m: Measured) -> None:
    """Decode capacity rows per placement (``m.capacity``), the GPUs the scenario's decode
    sequences need at the selected placement (a replacement), or what to run (missing)."""
    scn = sz.scenario
    selected = decode_placement(scn)
    rows = _decode_rows(sz, docs, selected) + _e2e_rows(sz, docs, selected, m)
    if not rows:
        m.missing.append(Missing("decode capacity (KV-read GB/s per placement)", _how(scn)))
        return
    here = [r for r in rows if r.selected]
    used = max(here, key=lambda r: (same(r.format, scn.kv_format), r.basis == "e2e"), default=None)
    m.capacity.extend(dataclasses.replace(r, used=r is used)
                      for r in sorted(rows, key=lambda r: (r.placement, r.basis)))
    for basis in ("decode", "e2e"):
        shown = used if used is not None and used.basis == basis else \
            next((r for r in rows if r.basis == basis), None)
        if shown is not None:
            m.notes.append(_formula(sz, shown))
    if used is None:
        m.missing.append(Missing(f"decode capacity for placement {selected}", _how(scn, selected)))
        return
    for other in (r for r in here if r is not used):
        m.notes.append(f"decode capacity used: {used.basis} ({used.source}, "
                       f"{num(round(used.seqs_per_gpu, 1))} sequences/GPU); beside it, {other.basis} "
                       f"({other.source}): {num(round(other.seqs_per_gpu, 1))} sequences/GPU")
    if used.basis == "e2e":
        how = (f"{'<= ' if used.upper_bound else ''}{num(round(used.seqs_per_gpu, 1))} sequences/GPU at "
               f"{num(scn.demand.decode_tok_s_per_request)} tok/s each")
    else:
        how = f"{sig3(used.kv_read_gbps)} GB/s KV read -> {num(round(used.seqs_per_gpu, 1))} sequences/GPU"
    m.replacements.append(Replacement(
        f"GPUs for {num(sz.q('active_decode_sequences'))} decode sequences",
        f"fleet {num(scn.fleet.gpus)} GPUs",
        f"{'>= ' if used.upper_bound else ''}{num(math.ceil(used.gpus_needed))} GPUs "
        f"({used.fleet_ratio:.2f}x the fleet)",
        used.source,
        f"placement {used.placement} ({used.basis}): {how}" + (f"; {used.note}" if used.note else ""),
    ))
