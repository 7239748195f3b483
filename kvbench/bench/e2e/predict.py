"""Prediction beside measurement (issue 13): each e2e case's time per output token
predicted from the same run's transfer and decode cases and the model's bytes, shown
beside the measured one. Pure arithmetic over a result document: no torch.

    predicted_tpot_s = weight_s + kv_s
    weight_s = weight_bytes_read_per_step / weight read rate
    kv_s     = batch x context x kv_bytes_per_token / KV read rate

``weight_bytes_read_per_step`` (case config, from the model built): every parameter's
bytes, a tied embedding once, less an input embedding that is not the output head (a
lookup reads ``batch`` rows of it, not the matrix). ``context``: the median of the decode
steps' contexts (``config.step_context_tokens``), as ``tpot_s`` is their median step
time. ``kv_bytes_per_token``: K and V of every layer in the case's format (case config).

Weight read rate, the same run's dense read of the memory the weights live in (the
first source of ``WEIGHT_RATE_SOURCES`` the run has; the best case of it): on CUDA,
decode's ``ceiling/hbm`` (a device-to-device copy counting bytes read + written: the
traffic a read-only kernel can reach), else transfer's ``ceiling/hbm->hbm`` (payload
counted once, x2); on a CPU, transfer's warm file reads' ``ceiling_gbps`` (a copy out
of the page cache, host memory to host memory, x2 for read + write): neither decode nor
transfer measures a plain host-memory read on a CPU, so this copy is what there is.

KV read rate: ``kv_read_gbps`` of the decode case of the case's ``decode_placement`` and
KV format (fused), at the context nearest the case's (by ratio): KV bytes per step over
its median step time, so it carries the attention's compute and, for a quantized
format, its dequantization. On a CPU that step is the torch reference (gather, fp32
softmax), so the rate is attention per KV byte, not a memory rate: decode records on a
CPU give no plain KV-read rate. It is taken at decode's model shape, scaled by bytes to
the e2e case's (a shrunken model on a CPU).

Counted: the weights and the whole live KV read once per step, one after the other (no
overlap), at this run's rates. Left out: compute beyond what those rates carry (the
projections' and MLP's matmuls are taken as bandwidth-bound), kernel launches and
Python dispatch per layer and op (what dominates a shrunken model on a CPU), the
cache's own update (writing and quantizing the new token's K/V), the copies of a
PagedCache that hands the model a dequantized copy of each layer, sampling and the
per-step synchronisation, activations, CPU caches (a shrunken model's weights may fit in
them, which a DRAM copy rate does not see), page-cache hits on the nvme tier (decode's
nvme case reads cold), and MoE routing (every expert's bytes counted). A
measured/predicted ratio far above 1 says the step is bound by something other than
bytes.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from kvbench.units import GB, is_num

NO_INPUTS = "no transfer/decode cases in this run"

#: same-run dense reads of the weights' memory, best first per device: (bench, config
#: key/values, metric, factor from the metric to bytes read per second, what it is)
WEIGHT_RATE_SOURCES: dict[str, tuple[tuple[str, dict[str, Any], str, float, str], ...]] = {
    "cuda": (("decode", {"kind": "ceiling", "what": "hbm"}, "gbps", 1.0,
              "device-to-device copy, bytes read + written"),
             ("transfer", {"kind": "ceiling", "direction": "hbm->hbm"}, "gbps", 2.0,
              "device-to-device copy, payload x2 (read + written)")),
    "cpu": (("transfer", {"kind": "paged", "direction": "nvme->dram", "cache_state": "warm"}, "ceiling_gbps", 2.0,
             "copy out of the page cache (host memory to host memory), x2 (read + written)"),),
}


def _ok(doc: dict[str, Any], bench: str, **config: Any) -> list[dict[str, Any]]:
    return [c for c in doc.get("cases", []) if c.get("bench") == bench and c.get("status") == "ok"
            and all((c.get("config") or {}).get(k) == v for k, v in config.items())]


def has_inputs(doc: dict[str, Any]) -> bool:
    """Whether the run has any ok transfer or decode case to predict from."""
    return bool(_ok(doc, "transfer") or _ok(doc, "decode"))


def weight_rate(doc: dict[str, Any], device: str) -> tuple[float, str] | None:
    """(bytes read per second in GB/s, where from) for weights on ``device``, or None."""
    for bench, match, metric, factor, what in WEIGHT_RATE_SOURCES.get(device, ()):
        got = [(c["metrics"][metric] * factor, c["name"]) for c in _ok(doc, bench, **match)
               if is_num(c["metrics"].get(metric)) and c["metrics"][metric] > 0]
        if got:
            rate, name = max(got)
            return rate, f"{bench} {name}: {what}"
    return None


def kv_rate(doc: dict[str, Any], placement: str, fmt: str, context: float) -> tuple[float, str] | None:
    """(KV GB/s, the decode case) of placement and format nearest ``context``, or None."""
    got = [c for c in _ok(doc, "decode", kind="decode", placement=placement, format=fmt)
           if c["config"].get("fused", True) and is_num(c["metrics"].get("kv_read_gbps"))
           and c["metrics"]["kv_read_gbps"] > 0 and is_num(c["config"].get("context"))]
    if not got:
        return None
    best = min(got, key=lambda c: abs(math.log(max(c["config"]["context"], 1) / max(context, 1))))
    return best["metrics"]["kv_read_gbps"], f"decode {best['name']}"


def _context(cfg: dict[str, Any]) -> float:
    steps = cfg.get("step_context_tokens") or []
    if steps:
        return float(statistics.median(steps))
    return float(cfg.get("prompt_tokens", 0)) + float(cfg.get("new_tokens", 0)) / 2


def predict_case(doc: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """One ok e2e case's prediction: ``predicted_tpot_s``, its ``weight_s`` and ``kv_s``,
    ``kv_s_per_context_token`` (kv_s = that x context), the rates and where they came
    from, ``measured_tpot_s`` and ``measured_over_predicted``; or ``{"reason": ...}``
    saying which input the run lacks."""
    cfg, measured = case.get("config") or {}, (case.get("metrics") or {}).get("tpot_s")
    if not has_inputs(doc):
        return {"reason": NO_INPUTS}
    if not cfg.get("kv_format") or not is_num(cfg.get("kv_bytes_per_token")):
        return {"reason": "its K/V are not in a kvbench format: no decode figure for them"}
    if not cfg.get("decode_placement"):
        return {"reason": "no decode placement reads K/V as it does"}
    device = str(cfg.get("device", "cpu"))
    wbytes = cfg.get("weight_bytes_read_per_step", cfg.get("weight_bytes"))
    w = weight_rate(doc, device)
    if w is None or not is_num(wbytes):
        return {"reason": f"no dense read of {device} memory in this run (for the weights)"}
    context = _context(cfg)
    kv = kv_rate(doc, cfg["decode_placement"], cfg["kv_format"], context)
    if kv is None:
        return {"reason": f"no decode {cfg['decode_placement']}/{cfg['kv_format']} case in this run"}
    per_token = float(cfg.get("batch", 1)) * cfg["kv_bytes_per_token"] / (kv[0] * GB)
    weight_s = wbytes / (w[0] * GB)
    pred = weight_s + per_token * context
    out = {"predicted_tpot_s": pred, "weight_s": weight_s, "kv_s": per_token * context,
           "kv_s_per_context_token": per_token, "context_tokens": context,
           "weight_read_gbps": w[0], "weight_rate_from": w[1], "kv_read_gbps": kv[0], "kv_rate_from": kv[1],
           "measured_tpot_s": measured}
    if is_num(measured):
        out["measured_over_predicted"] = measured / pred
    return out


def predict(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ok e2e case's prediction (``predict_case``), by case name."""
    return {c["name"]: predict_case(doc, c) for c in _ok(doc, "e2e")}
