"""What every part of the decode benchmark shares: its key, the verification tolerance,
the ``--set decode.*`` options it reads, and how a case is named and configured."""

from __future__ import annotations

from typing import Any

from kvbench.bench import RunContext

BENCH_KEY = "decode"
PLACEMENTS = ("hbm", "dram_prefetch", "dram_zero_copy", "nvme", "hot_window")
#: verification tolerance of kernel vs fp32 reference (relative Frobenius error): the
#: kernel rounds probabilities to bf16/fp16 for the p.V product, as FlashAttention does
REL_TOL = 2e-2


def shapes(ctx: RunContext, placement: str) -> list[tuple[int, int]]:
    """(batch, context) pairs per placement. hbm: batch x context ~ 512k tokens (e.g.
    64 x 8k), so the cache fills a good part of an 80 GB GPU; tiers below HBM move the
    whole cache every step, so they get smaller shapes."""
    key = f"decode.{placement}.shapes"
    if key in ctx.options:
        def pair(text: str) -> tuple[int, int]:
            b, _, c = text.partition("x")
            return int(b), int(c)  # ValueError -> a one-line error naming the option
        return ctx.opt_list(key, [], pair)
    if not ctx.cuda:
        return [(2, 512)] if ctx.quick else [(4, 2048)]
    if placement == "hbm":
        ctxs = [1024, 8192, 32768] if ctx.quick else [1024, 8192, 32768, 131072]
        return [(max(1, 524288 // c), c) for c in ctxs]
    if placement in ("dram_prefetch", "hot_window"):
        return [(8, 8192)] if ctx.quick else [(8, 8192), (2, 32768)]
    if placement == "dram_zero_copy":  # reads over PCIe from the kernel: slow per step
        return [(4, 8192)]
    return [(2, 8192)]


def _tiles(ctx: RunContext) -> list[Any]:
    """Autotune candidates: ``--set decode.tiles=TxWxS,...`` (tokens per step x warps x
    stages) or every choice the kernel offers."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    if "decode.tiles" not in ctx.options:
        return pa.tile_choices(ctx.tokens_per_page)

    def tile(text: str):
        rows, w, st = (int(x) for x in text.split("x"))  # ValueError -> one line naming the option
        if rows < 16 or rows & (rows - 1) or w < 1 or w & (w - 1) or st < 1:
            raise ValueError(text)  # tl.dot needs >= 16 rows; warps a power of two
        return pa.DecodeTile(rows, w, st)
    return ctx.opt_list("decode.tiles", [], tile)


def _budget(ctx: RunContext) -> float:
    """Seconds a case may sample its paired figures for."""
    return ctx.opt_seconds("decode.budget_s", 3.0 if ctx.quick else 15.0)


def _nvme_threads(ctx: RunContext) -> int:
    return ctx.opt_int("decode.nvme.threads", 4 if ctx.quick else 32)


def _hot_window(ctx: RunContext) -> int:
    """Tokens per sequence kept in HBM for placement hot_window."""
    return ctx.opt_int("decode.hot_window", 1024)


def _cfg(ctx: RunContext, placement: str, fmt: str, batch: int, context: int, fused: bool,
         **extra: Any) -> dict[str, Any]:
    return {"kind": "decode", "placement": placement, "format": fmt, "batch": batch,
            "context": context, "fused": fused, "model": ctx.model.name,
            "tokens_per_page": ctx.tokens_per_page, "layout": "layer",
            "device": "cuda" if ctx.cuda else "cpu", **extra}


def _name(placement: str, fmt: str, batch: int, context: int, fused: bool) -> str:
    return f"{placement}/{fmt}/{batch}x{context}" + ("" if fused else "/unfused")
