"""Check ``ssd_per_gpu``: an SSD capacity per GPU as a KV tier. Arithmetic: whether the
per-GPU and per-rack figures agree, how many tokens of KV the capacity holds per model and
format (at one context length, every component), what a scenario assumes per GPU.
Measured: how long reading it all back takes at the best cold ``transfer`` nvme->dram
rate in the results (a host path: the disk's rate, whatever the machine's GPU).
"""

from __future__ import annotations

from kvbench.claims.core import (CONFIRMED, REFUTED, Claim, Evaluation, Figure, Param, arithmetic, count, duration,
                                 measured, not_measured, within)
from kvbench.claims.evidence import Evidence, measured_basis, metric
from kvbench.errors import KvbenchError
from kvbench.sizing.numbers import num, plain
from kvbench.sizing.scenario import load_scenario
from kvbench.spec import load_model, resolve_format

PARAMS = {
    "ssd_per_gpu_tb": Param("number", help="the claimed SSD per GPU, TB (10^12 B)"),
    "rack_ssd_tb": Param("number", help="the other source's SSD per rack, TB"),
    "rack_gpus": Param("number", help="GPUs per rack the rack figure is for"),
    "scenario": Param("text", help="the scenario whose SSD per GPU is shown (--scenario replaces it)"),
    "models": Param("names", help="models whose tokens of KV are counted"),
    "formats": Param("names", help="KV formats ('shipped' allowed; a format a model cannot use is left out)"),
    "context_tokens": Param("number", help="the sequence length the bytes per token are taken at"),
    "tolerance": Param("fraction", 0.01, help="the two published figures agree within this"),
}

#: measures the nvme -> dram rate; DIR: a folder on the drive to test
NVME_COMMAND = "kvbench run --bench transfer --format fp16 --cases '^nvme->dram/.*/cold$' --nvme-dir DIR"


def _tokens_figure(model_name: str, formats: list[str], tokens: int, capacity: float) -> Figure:
    model = load_model(model_name)
    held, per_token = {}, {}
    for fmt in formats:
        try:
            bpt = model.kv_bytes_for_sequence(tokens, resolve_format(fmt)) / tokens
        except KvbenchError:  # no shipped layout declared, or a head dim the format cannot hold
            continue
        per_token[fmt], held[fmt] = bpt, capacity / bpt
    value = "; ".join(f"{f} {count(n)}" for f, n in held.items()) or "no format applies"
    basis = (f"{plain(capacity)} / KV bytes per token of a {num(tokens)}-token sequence (every component): "
             + ", ".join(f"{f} {num(round(b))} B" for f, b in per_token.items()))
    return arithmetic(f"tokens of KV it holds, {model.name}", value + " tokens", basis,
                      tokens_held=held, bytes_per_token=per_token, context_tokens=tokens)


def _readback_figure(ev: Evidence, capacity: float) -> Figure:
    """The capacity's read-back time at the best cold paged nvme->dram rate given."""
    best = None
    for r, c in ev.cases("transfer", kind="paged", direction="nvme->dram"):
        gbps = metric(c, "gbps")
        state = c["config"].get("cache_state") or ("cold" if str(c["name"]).endswith("/cold") else "")
        if gbps is not None and state == "cold" and (best is None or gbps > best[0]):
            best = (gbps, r, c)
    what = f"time to read {plain(capacity)} back at the measured NVMe rate"
    if best is None:
        return not_measured(what, NVME_COMMAND, ev.skip_reason("transfer", "nvme->dram"))
    gbps, r, c = best
    seconds = capacity / (gbps * 1e9)
    host = "" if r.on_gpu else " (a host path: the disk's rate; this machine has no GPU)"
    return measured(what, f"{duration(seconds)} at {gbps:.3g} GB/s",
                    measured_basis(r, [c], f"the best cold paged nvme->dram read given; disk {r.disk}{host}"),
                    seconds=seconds, gbps=gbps)


def evaluate(claim: Claim, ev: Evidence) -> Evaluation:
    p = claim.params
    per_gpu = p["ssd_per_gpu_tb"] * 1e12
    rack_per_gpu = p["rack_ssd_tb"] * 1e12 / p["rack_gpus"]
    scn = load_scenario(ev.scenario or p["scenario"])
    fl = scn.fleet
    scn_per_gpu = fl.nodes * fl.rack_ssd_per_node_bytes / fl.gpus
    figures = [
        arithmetic("SSD per GPU from the rack figure", plain(rack_per_gpu),
                   f"{num(p['rack_ssd_tb'])} TB per rack / {num(p['rack_gpus'])} GPUs per rack",
                   bytes=rack_per_gpu),
        arithmetic(f"rack SSD per GPU in scenario {scn.name}", f"{plain(scn_per_gpu)} "
                   f"({scn_per_gpu / per_gpu:.3g}x {plain(per_gpu)})",
                   f"nodes x rack SSD per node / GPUs = {num(fl.nodes)} x {plain(fl.rack_ssd_per_node_bytes)} / "
                   f"{num(fl.gpus)}", bytes=scn_per_gpu, scenario=scn.name),
        *(_tokens_figure(m, p["formats"], int(p["context_tokens"]), per_gpu) for m in p["models"]),
        _readback_figure(ev, per_gpu),
    ]
    agree = within(rack_per_gpu, per_gpu, p["tolerance"])
    reason = (f"the two published figures {'agree' if agree else 'disagree'}: {num(p['rack_ssd_tb'])} TB / "
              f"{num(p['rack_gpus'])} GPUs = {plain(rack_per_gpu)} vs {plain(per_gpu)} per GPU; scenario "
              f"{scn.name} assumes {plain(scn_per_gpu)} per GPU")
    readback = figures[-1]
    if readback.how == "measured":
        reason += f"; reading {plain(per_gpu)} back takes {readback.value}"
    return Evaluation(claim, tuple(figures), CONFIRMED if agree else REFUTED, reason,
                      notes=("the claim states a capacity: the read-back time is what it means, not a test of it",))
