"""Bandwidth of the Triton quantize / dequantize kernels on a GPU, next to a same-run
device-to-device copy (``dst.copy_(src)``): the accuracy benchmark's speed cases.

Bytes counted (GB = 1e9), each once: quantize reads the fp16 K and V and writes the
page bytes (values and in-page scales); dequantize reads those page bytes and writes
fp16 K and V; the copy reads and writes the fp16 K+V bytes. Page ids, slots and side
scales (a few bytes per token) are not counted. Target: >= 80% of the copy's figure.
"""

from __future__ import annotations

from typing import Any

import torch

from kvbench.formats.layout import page_map
from kvbench.formats.paged import dequantize_pages as ref_dequantize_pages
from kvbench.formats.paged import quantize_to_pages as ref_quantize_to_pages
from kvbench.formats.paged import side_scales
from kvbench.stats import summarize
from kvbench.results import make_case, skipped_case
from kvbench.spec import PageSpec, get_format
from kvbench.units import GB, align_up

NOTES = (
    "GB = 1e9 bytes; bytes counted = bytes read + bytes written, each once",
    "quantize: fp16 K+V read + page values and in-page scales written; dequantize: page "
    "bytes read + fp16 K+V written; block-table / slot indices and side scales not counted",
    "copy baseline: dst.copy_(src) of the fp16 K+V bytes in the same run, counted as "
    "read + written",
)


def speed_config(model, fmt: str, tokens_per_page: int, quick: bool) -> dict[str, Any]:
    """The speed case's configuration: fp16 K+V of 256 MiB (quick) or 1 GiB."""
    target = (256 if quick else 1024) * 2**20
    m = model
    per_token = 2 * m.kv_factor * m.kv_heads * m.head_dim  # fp16 bytes of K+V per token
    t = tokens_per_page
    tokens = max(t, target // per_token // t * t)
    return {"format": fmt, "model": m.name, "tokens": tokens, "tokens_per_page": t,
            "layout": "layer", "kv_heads": m.kv_heads, "head_dim": m.head_dim,
            "input_dtype": "float16", "output_dtype": "float16"}


def run_speed(ctx, bench: str, name: str, config: dict[str, Any], model) -> dict[str, Any]:
    """One speed case (timed with ctx.warmup / ctx.samples, seeded with ctx.seed); a
    skipped case with the reason "no CUDA device" when there is none."""
    if not ctx.cuda:
        return skipped_case(bench, name, config, "no CUDA device")
    from kvbench.timing import time_cuda

    return measure(bench, name, config, model, seed=ctx.seed, warmup=ctx.warmup,
                   samples=ctx.samples, device="cuda", timer=time_cuda)


def measure(bench: str, name: str, config: dict[str, Any], model, *, seed: int, warmup: int,
            samples: int, device: str, timer) -> dict[str, Any]:
    """The measurement behind run_speed, on ``device`` with ``timer`` (time_cuda on a
    GPU; tests drive it on the CPU through the Triton interpreter with time_host)."""
    from kvbench.kernels_loader import load_kernels

    q = load_kernels("quant")
    m = model
    f = get_format(config["format"])
    spec = PageSpec(m, f, config["tokens_per_page"], "layer")
    pm = page_map(spec)
    n, t = config["tokens"], spec.tokens
    pages = n // t
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(seed)
    shape = (n, pm.heads, pm.head_dim)
    k = torch.randn(shape, generator=g, device=dev, dtype=torch.float16)
    v = torch.randn(shape, generator=g, device=dev, dtype=torch.float16) if pm.kv_factor == 2 else None
    sd = side_scales(k, v, f)
    side = None if sd is None else sd.unsqueeze(0).expand(m.num_layers, *sd.shape).contiguous()
    order = torch.randperm(pages, generator=g, device=dev)
    page_ids = order.repeat_interleave(t)
    slots = torch.arange(t, device=dev).repeat(pages)
    stride = align_up(spec.page_bytes, 256)
    pool = torch.zeros((pages, stride), dtype=torch.uint8, device=dev)

    # correctness, once, outside the timed region
    q.quantize_to_pages(k, v, pool, page_ids, slots, spec, side)
    ref_pool = torch.zeros_like(pool)
    ref_quantize_to_pages(k, v, ref_pool, page_ids, slots, spec, side, backend="torch")
    quant_exact = bool(torch.equal(pool[:, :spec.page_bytes], ref_pool[:, :spec.page_bytes]))
    del ref_pool
    got = q.dequantize_pages(pool, order, spec, side, dtype=torch.float16)
    want = ref_dequantize_pages(pool, order, spec, side, dtype=torch.float16, backend="torch")
    dequant_exact = all(torch.equal(a, b) for a, b in zip(got, want) if a is not None)
    del got, want

    in_bytes = k.nbytes + (v.nbytes if v is not None else 0)
    page_bytes = pages * spec.page_bytes
    quant_s = timer(
        lambda: q.quantize_to_pages(k, v, pool, page_ids, slots, spec, side, check=False),
        warmup=warmup, samples=samples)
    dequant_s = timer(
        lambda: q.dequantize_pages(pool, order, spec, side, dtype=torch.float16, check=False),
        warmup=warmup, samples=samples)
    src = torch.empty(in_bytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = timer(lambda: dst.copy_(src), warmup=warmup, samples=samples)

    def med(xs):
        return summarize(xs)["median"]

    moved = {"quant": in_bytes + page_bytes, "dequant": page_bytes + in_bytes,
             "copy": 2 * in_bytes}
    gbps = {key: moved[key] / med(s) / GB
            for key, s in (("quant", quant_s), ("dequant", dequant_s), ("copy", copy_s))}
    metrics = {
        "quant_gbps": gbps["quant"], "dequant_gbps": gbps["dequant"], "copy_gbps": gbps["copy"],
        "quant_pct_of_copy": 100.0 * gbps["quant"] / gbps["copy"],
        "dequant_pct_of_copy": 100.0 * gbps["dequant"] / gbps["copy"],
        "quant_bytes": moved["quant"], "dequant_bytes": moved["dequant"],
        "copy_bytes": moved["copy"], "quant_bit_exact": quant_exact,
        "dequant_bit_exact": dequant_exact,
    }
    units = {"quant_s": "s", "dequant_s": "s", "copy_s": "s", "quant_gbps": "GB/s",
             "dequant_gbps": "GB/s", "copy_gbps": "GB/s", "quant_pct_of_copy": "%",
             "dequant_pct_of_copy": "%", "quant_bytes": "bytes", "dequant_bytes": "bytes",
             "copy_bytes": "bytes", "quant_bit_exact": "bool", "dequant_bit_exact": "bool"}
    notes = list(NOTES)
    if not (quant_exact and dequant_exact):
        notes.append("MISMATCH: the Triton kernels disagree with the torch reference")
    return make_case(bench, name, {**config, "page_bytes": spec.page_bytes, "pool_stride": stride},
                     samples={"quant_s": quant_s, "dequant_s": dequant_s, "copy_s": copy_s},
                     metrics=metrics, units=units, notes=notes)
