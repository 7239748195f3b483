"""What each prefix case holds at once (kvbench.footprint): upper bounds read off
``prefill`` and ``loads``, in bytes by kind. With CUDA the prefill and the destination
pool are device memory and host pools pinned; without, everything is pageable host
memory (the CPU reference). Temporaries are summed with what they coexist with. Pure
arithmetic: no torch import."""

from __future__ import annotations

from kvbench.bench import RunContext, Skip
from kvbench.bench.prefix.common import _chunk_bytes, _spec, sources
from kvbench.footprint import total
from kvbench.units import MiB, align_up

#: _fill_bytes generates random bytes in blocks of this many (loads._fill_bytes)
FILL_BLOCK = 64 * MiB
#: _equal_rows compares in slices of this many bytes, each side copied to the host
COMPARE_SLICE = 256 * MiB
#: prefill._fill_random's block of random values on the CPU (elements)
RANDOM_BLOCK = 1 << 20


def prefill_bytes(ctx: RunContext, tokens: int) -> int:
    """Bytes a ``prefill.Prefill`` of ``tokens`` tokens holds (bf16 with CUDA, fp32
    without), from the model's shape (hidden h, heads H, kv heads KV, head_dim D, MLP
    widths w): the weights w_qkv h x (H + 2 KV) D and w_o H D x h, one gated MLP
    (3 h w) per distinct width; the input x [N, h]; the KV it writes, [2, N, KV, D]
    per slot (every layer with CUDA, one without: the CPU path times one layer of each
    shape); and one layer's activations summed as if none were freed: 6 hidden-sized
    [N, h] tensors, qkv, the query-sized attention output and its reshaped copy, K and
    V repeated to the query heads, 4 MLP-wide tensors at the widest w. Attention is
    SDPA's fused kernel (no N x N scores); sliding layers add their chunk's scores
    (H x window x 2 window) and band masks (3 of window x 2 window bools). 0 when the
    model's recompute is not modelled (MLA: the case skips)."""
    from kvbench.bench.prefix.prefill import prefill_layers

    try:
        kinds, _ = prefill_layers(ctx.model)
    except Skip:
        return 0
    m = ctx.model
    h, H, KV, D = m.hidden_size, m.num_attention_heads, m.kv_heads, m.head_dim
    e = 2 if ctx.cuda else 4
    widths = {kd.mlp_width for kd in kinds}
    slots = len(kinds) if ctx.cuda else 1
    weights = h * (H + 2 * KV) * D + H * D * h + sum(3 * h * w for w in widths)
    act = tokens * (6 * h + (H + 2 * KV) * D + 2 * H * D + 2 * H * D + 4 * max(widths))
    window = max((kd.window for kd in kinds if kd.attention == "sliding"), default=0)
    window = min(window, tokens)
    sliding = (H * window * 2 * window) * e + 3 * window * 2 * window
    return (weights + tokens * h + slots * 2 * tokens * KV * D + act + RANDOM_BLOCK) * e + sliding


def recompute(ctx: RunContext, tokens: int) -> dict[str, int]:
    """prefill.recompute_case: the prefill (``prefill_bytes``) on the device with CUDA,
    in pageable host memory without."""
    return {"device" if ctx.cuda else "pageable": prefill_bytes(ctx, tokens)}


def _recompute_arm(ctx: RunContext, tokens: int) -> dict[str, int]:
    """A load case's recompute arm (loads._recompute_arm), when recompute is a source."""
    return recompute(ctx, tokens) if "recompute" in sources(ctx) else {}


def _dst(ctx: RunContext, nbytes: int) -> dict[str, int]:
    """The destination pool: HBM with CUDA, a pageable host pool standing in without."""
    return {"device" if ctx.cuda else "pageable": nbytes}


def _compare(ctx: RunContext, nbytes: int) -> dict[str, int]:
    """_equal_rows: one slice of each side on the host (pageable copies; none on the CPU)."""
    return {"pageable": 2 * min(nbytes, COMPARE_SLICE)} if ctx.cuda else {}


def dram(ctx: RunContext, tokens: int) -> dict[str, int]:
    """loads.dram_case, the prefix's n block pages (n x page bytes): the source host
    pool (pinned with CUDA), the destination pool, a 64 MiB block of random bytes, the
    verification slices, and the recompute arm's prefill."""
    spec = _spec(ctx)
    nb = spec.pages_for_tokens(tokens) * spec.page_bytes
    return total({"pinned" if ctx.cuda else "pageable": nb}, _dst(ctx, nb),
                 {"device" if ctx.cuda else "pageable": min(nb, FILL_BLOCK) + 8},
                 _compare(ctx, nb), _recompute_arm(ctx, tokens))


def nvme(ctx: RunContext, tokens: int) -> dict[str, int]:
    """loads.nvme_case, the prefix's n block pages: the file pool (n rows of the 4 KiB
    aligned stride), its pageable n-row source written sequentially and kept to compare,
    the destination pool, two staging chunks of ``prefix.chunk_bytes`` rounded to
    whole rows (pinned with CUDA; and their device twins when rows are padded), a
    64 MiB block of random bytes, the verification slices, the recompute arm."""
    spec = _spec(ctx)
    n, pb = spec.pages_for_tokens(tokens), spec.page_bytes
    stride = align_up(pb, 4096)
    chunk = max(1, min(n, _chunk_bytes(ctx) // stride)) * stride
    return total({"file": n * stride, "pageable": n * stride}, _dst(ctx, n * pb),
                 {"pinned" if ctx.cuda else "pageable": 2 * chunk},
                 {"device": 2 * chunk} if ctx.cuda and stride != pb else {},
                 {"device" if ctx.cuda else "pageable": min(n * stride, FILL_BLOCK) + 8},
                 _compare(ctx, n * pb), _recompute_arm(ctx, tokens))


FOOTPRINTS = {"recompute": recompute, "dram": dram, "nvme": nvme}
