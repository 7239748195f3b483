"""Prefix benchmark: load a reused prefix's KV from DRAM or NVMe, or recompute it?

For a prefix of N tokens (N swept), three cases, in this order:
  ``recompute``  prefill of the N tokens through ``num_layers`` layers of the model's
                 shape (QKV projection, causal attention, output projection, gated MLP)
                 with random weights, writing each layer's K and V into a KV cache.
  ``dram``       the prefix's KV pages (block layout: one contiguous block per token
                 span, all layers) sit in a host page pool; one coalesced copy moves
                 them into the destination pool (HBM).
  ``nvme``       the same pages sit in a file page pool; cold (page cache dropped and
                 checked before every sample), read with a thread pool (O_DIRECT where
                 the folder allows it) into two staging buffers, each copied to the
                 destination while the other fills; host timer around the whole load,
                 final synchronisation included.
Each load case also reports ``break_even_gbps`` (KV bytes / recompute time of the same
N: the load bandwidth at which loading and recomputing take equally long) and
``speedup_vs_recompute`` (recompute time / load time).

Without a GPU every case runs the same code on the CPU and is labelled a CPU
reference: the destination pool is a second host pool standing in for HBM, and the
prefill runs in fp32, timing one layer of each distinct layer shape and scaling by
the number of layers of that shape.

Units: seconds, GB = 1e9 B, tokens/s. Bytes counted: payload bytes of the prefix's
pages, once. Weights are not counted as bytes.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from kvbench import movers
from kvbench.bench import Benchmark, Case, Highlights, Plot, RunContext, Skip, tier_or_skip
from kvbench.errors import KvbenchError
from kvbench.results import make_case
from kvbench.spec import ModelSpec, PageSpec, get_format
from kvbench.units import GB, MiB, parse_size

BENCH_KEY = "prefix"
SOURCES = ("recompute", "dram", "nvme")
TOKENS_FULL = (1024, 2048, 4096, 8192, 16384, 32768)
#: a full Llama-3.1-8B layer in fp32 on 2 CPU cores takes about 1 s at 128 tokens and
#: 3-4 s at 512 (this repository's CI machine): two points keep the quick run short
TOKENS_QUICK = (128, 512)
CPU_NOTE = "CPU reference numbers, not GPU figures"
#: warm-up and samples stop early once a case has spent this long (seconds) on them
BUDGET_FULL_S = 3.0
BUDGET_QUICK_S = 2.0
#: never fewer timed samples than this (unless --samples asks for fewer)
MIN_SAMPLES = 3

#: Published: time to first token with the prefix loaded from CPU memory vs recomputed,
#: "2-22x faster", Llama-3.1-8B on H100 (/work/shared/reference/limits-and-anchors.md,
#: "KV offload systems (published)"). A TTFT figure: it includes the rest of the
#: prefill, which this benchmark does not time.
PUBLISHED_CPU_LOAD_SPEEDUP = (2.0, 22.0)
PUBLISHED_MODEL = "Llama-3.1-8B"


# ----------------------------------------------------------------------------- options
def tokens_sweep(ctx: RunContext) -> list[int]:
    return ctx.opt_list("prefix.tokens", list(TOKENS_QUICK if ctx.quick else TOKENS_FULL))


def sources(ctx: RunContext) -> list[str]:
    chosen = [s.strip() for s in ctx.opt("prefix.sources", ",".join(SOURCES)).split(",") if s.strip()]
    for s in chosen:
        if s not in SOURCES:
            raise KvbenchError(f"--set prefix.sources: unknown source {s!r}; known: {', '.join(SOURCES)}")
    return [s for s in SOURCES if s in chosen]  # recompute first: loads compare with it


def _threads(ctx: RunContext) -> int:
    return ctx.opt("prefix.threads", 16 if ctx.cuda else 4, int)


def _chunk_bytes(ctx: RunContext) -> int:
    return ctx.opt("prefix.chunk_bytes", (32 if ctx.cuda else 8) * MiB, parse_size)


def _budget(ctx: RunContext) -> float:
    return ctx.opt_seconds("prefix.budget_s", BUDGET_QUICK_S if ctx.quick else BUDGET_FULL_S)


# ----------------------------------------------------------------------------- timing
def _timed(ctx: RunContext, fn: Callable[[], Any], *, budget_s: float, stream: Any = None,
           setup: Callable[[], Any] | None = None, warmup_cap: int | None = None
           ) -> tuple[list[float], int]:
    """(seconds per timed sample, warm-up runs done). CUDA events on ``stream`` when
    given, else the host clock. Warm-up runs stop once they have taken half the budget;
    samples are capped so they fit in the budget, but never fewer than MIN_SAMPLES
    (or --samples, if smaller). ``setup`` runs before every run, untimed."""
    from kvbench.timing import time_cuda, time_host

    def timer(warmup: int, samples: int) -> list[float]:
        if stream is not None:
            return time_cuda(fn, warmup=warmup, samples=samples, stream=stream, setup=setup)
        return time_host(fn, warmup=warmup, samples=samples, setup=setup)

    want_warm = ctx.warmup if warmup_cap is None else min(ctx.warmup, warmup_cap)
    t0, warm = time.perf_counter(), 0
    while warm < want_warm:
        timer(1, 0)
        warm += 1
        if time.perf_counter() - t0 > budget_s / 2:
            break
    first = timer(0, 1)
    floor = min(MIN_SAMPLES, ctx.samples)
    n = max(floor, min(ctx.samples, int(budget_s / max(first[0], 1e-9))))
    return first + (timer(0, n - 1) if n > 1 else []), warm


def _method_config(ctx: RunContext, cfg: dict[str, Any], notes: list[str], secs: list[float],
                   warm: int, warmup_cap: int | None = None) -> None:
    cfg["warmup"] = warm
    cfg["samples"] = len(secs)
    want_warm = ctx.warmup if warmup_cap is None else min(ctx.warmup, warmup_cap)
    if len(secs) < ctx.samples or warm < want_warm:
        notes.append(f"{warm} warm-up runs and {len(secs)} samples (asked {ctx.warmup} and "
                     f"{ctx.samples}): capped by a per-case time budget of {_budget(ctx):g} s "
                     "(--set prefix.budget_s)")


# ----------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class LayerKind:
    """One layer's shape for the prefill: its attention span and active MLP width.

    attention: "full" (causal over all tokens) or "sliding" (causal over the last
        ``window`` tokens).
    mlp_width: width of the gated MLP (gate and up are hidden -> mlp_width).
    """

    attention: str
    mlp_width: int
    window: int = 0


def prefill_layers(model: ModelSpec) -> tuple[list[LayerKind], list[str]]:
    """The prefill's layers, one LayerKind per model layer, and notes on how the
    model's shape was mapped. MLA models raise Skip (their recompute is not modelled).

    Dense models: ``intermediate_size``. MoE models (``num_experts_per_tok`` in the
    config): the active experts as one dense gated MLP of width ``moe_intermediate_size``
    (or ``intermediate_size`` when the config has no separate expert width) x
    ``num_experts_per_tok``, plus shared experts (``n_shared_experts`` x the expert
    width, or ``shared_expert_intermediate_size``); the first ``first_k_dense_replace``
    layers are dense with ``intermediate_size``."""
    if model.attention_type == "mla":
        raise Skip("recompute of MLA attention (latent KV, absorbed projections) is not modelled")
    cfg = model.config
    notes: list[str] = []
    if "intermediate_size" not in cfg and "moe_intermediate_size" not in cfg:
        raise Skip(f"model {model.name}: config has no intermediate_size: MLP width unknown")
    dense = int(cfg.get("intermediate_size", 0))
    k = int(cfg.get("num_experts_per_tok") or 0)
    dense_first = 0
    if k:
        expert = int(cfg.get("moe_intermediate_size") or dense)
        shared = int(cfg.get("n_shared_experts") or 0) * expert + int(cfg.get("shared_expert_intermediate_size") or 0)
        width = k * expert + shared
        dense_first = int(cfg.get("first_k_dense_replace") or 0)
        notes.append(
            f"MoE: the active MLP is modelled as one dense gated MLP of width {width} = "
            f"{k} experts x {expert}" + (f" + {shared} shared" if shared else "")
            + (f"; the first {dense_first} layers dense with intermediate_size {dense}" if dense_first else "")
            + "; routing and the reads of every expert's weights are not modelled")
    else:
        width = dense
    kinds = []
    for i, t in enumerate(model.layer_types):
        w = dense if i < dense_first else width
        if t == "sliding_attention":
            kinds.append(LayerKind("sliding", w, int(model.sliding_window or 0)))
        else:
            kinds.append(LayerKind("full", w))
    if any(kd.attention == "sliding" for kd in kinds):
        notes.append("sliding-window layers attend to the last sliding_window tokens, computed "
                     "in query chunks of one window with a band mask")
    notes.append("each layer: QKV projection, causal attention, output projection, gated "
                  "SiLU MLP, residual adds; no norms, no RoPE, no embedding or LM head")
    return kinds, notes


def prefill_flops(model: ModelSpec, kinds: list[LayerKind], tokens: int) -> float:
    """Model FLOPs of the prefill (2 per multiply-add): projections and MLP per token,
    plus 4 * heads * head_dim per causal (query, key) pair (QK^T and PV)."""
    h, H, KV, D = model.hidden_size, model.num_attention_heads, model.kv_heads, model.head_dim
    total = 0.0
    for kd in kinds:
        proj = h * (H + 2 * KV) * D + H * D * h + 3 * h * kd.mlp_width
        span = kd.window if kd.attention == "sliding" else tokens
        pairs = sum(min(q + 1, span) for q in range(tokens)) if span < tokens else tokens * (tokens + 1) / 2
        total += 2.0 * tokens * proj + 4.0 * H * D * pairs
    return total


# ----------------------------------------------------------------------------- prefill
def _fill_random(t: Any, seed: int, scale: float = 1.0) -> None:
    """Fill a float tensor with normal values times ``scale``. On the CPU a random block
    of 2**20 values is tiled (generating hundreds of millions of normals there takes
    seconds; the values do not change matmul or attention time)."""
    import torch

    g = torch.Generator(device=t.device).manual_seed(seed)
    flat = t.view(-1)
    if t.is_cuda:
        flat.normal_(generator=g).mul_(scale)
        return
    block = torch.empty(min(flat.numel(), 1 << 20), dtype=t.dtype).normal_(generator=g).mul_(scale)
    for s in range(0, flat.numel(), block.numel()):
        e = min(flat.numel(), s + block.numel())
        flat[s:e].copy_(block[: e - s])


def _flash_gqa_ok(device: str, dtype: Any, heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether SDPA's flash backend takes grouped KV heads (enable_gqa) for these shapes
    here, probed on a tiny input."""
    if device != "cuda" or heads == kv_heads:
        return False
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, heads, 16, head_dim, dtype=dtype, device=device)
    k = torch.zeros(1, kv_heads, 16, head_dim, dtype=dtype, device=device)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
        torch.cuda.synchronize()
        return True
    except (RuntimeError, TypeError):
        return False


class Prefill:
    """Prefill of ``tokens`` tokens through layers of a model's shape.

    One set of random weights per distinct MLP width, reused by every layer of that
    width (same shape, same cost): w_qkv [hidden, (heads + 2 kv_heads) * head_dim],
    w_o [heads * head_dim, hidden], w_gu [hidden, 2 * width], w_down [width, hidden].
    Hidden states x [tokens, hidden]. Each layer writes its K and V into
    ``kv[slot]`` = [2, tokens, kv_heads, head_dim] (the KV cache it produces).
    """

    def __init__(self, model: ModelSpec, tokens: int, kinds: list[LayerKind], *, device: str,
                 dtype: Any, seed: int, kv_slots: int) -> None:
        import torch

        self.model, self.tokens, self.kinds = model, tokens, kinds
        h, H, KV, D = model.hidden_size, model.num_attention_heads, model.kv_heads, model.head_dim
        self.H, self.KV, self.D = H, KV, D
        self.q_dim, self.kv_dim = H * D, KV * D

        def weight(shape: tuple[int, ...], fan_in: int, s: int, extra: float = 1.0):
            w = torch.empty(shape, dtype=dtype, device=device)
            _fill_random(w, seed + s, extra / math.sqrt(fan_in))
            return w
        # residual branches scaled down so hidden states stay O(1) through every layer
        damp = 1.0 / math.sqrt(2 * len(kinds))
        self.w_qkv = weight((h, (H + 2 * KV) * D), h, 1)
        self.w_o = weight((H * D, h), H * D, 2, damp)
        self.mlp = {}
        for i, w in enumerate(sorted({kd.mlp_width for kd in kinds})):
            self.mlp[w] = (weight((h, 2 * w), h, 10 + 2 * i), weight((w, h), w, 11 + 2 * i, damp))
        self.x0 = weight((tokens, h), 1, 3)
        self.kv = torch.empty(kv_slots, 2, tokens, KV, D, dtype=dtype, device=device)
        self.flash_gqa = _flash_gqa_ok(device, dtype, H, KV, D)
        self._masks: dict[tuple[int, int, int, int], Any] = {}

    @property
    def attention_impl(self) -> str:
        if self.flash_gqa:
            return "sdpa flash backend, enable_gqa (grouped KV heads read in place)"
        if self.H != self.KV:
            return "sdpa, KV heads repeated to the query heads (repeat_interleave)"
        return "sdpa"

    def _repeat(self, t: Any) -> Any:
        rep = self.H // self.KV
        return t.repeat_interleave(rep, dim=1) if rep > 1 else t

    def _band_mask(self, q0: int, k0: int, nq: int, nk: int, window: int) -> Any:
        import torch

        key = (q0 - k0, nq, nk, window)
        if key not in self._masks:
            qp = torch.arange(q0, q0 + nq, device=self.x0.device)[:, None]
            kp = torch.arange(k0, k0 + nk, device=self.x0.device)[None, :]
            self._masks[key] = (kp <= qp) & (qp - kp < window)
        return self._masks[key]

    def attend(self, q: Any, k: Any, v: Any, kind: LayerKind) -> Any:
        """q [1, H, N, D], k and v [1, KV, N, D] -> [1, H, N, D], causal."""
        import torch.nn.functional as F

        n = q.shape[2]
        if kind.attention == "sliding" and kind.window < n:
            k, v, w = self._repeat(k), self._repeat(v), kind.window
            out = q.new_empty(q.shape)
            for s in range(0, n, w):
                e, k0 = min(n, s + w), max(0, s - w + 1)
                mask = self._band_mask(s, k0, e - s, e - k0, w)
                out[:, :, s:e] = F.scaled_dot_product_attention(
                    q[:, :, s:e], k[:, :, k0:e], v[:, :, k0:e], attn_mask=mask)
            return out
        if self.flash_gqa:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, self._repeat(k), self._repeat(v), is_causal=True)

    def layer(self, x: Any, kind: LayerKind, slot: int) -> Any:
        import torch.nn.functional as F

        n, qd, kd = x.shape[0], self.q_dim, self.kv_dim
        qkv = x @ self.w_qkv
        k = qkv[:, qd: qd + kd].view(n, self.KV, self.D)
        v = qkv[:, qd + kd:].view(n, self.KV, self.D)
        self.kv[slot, 0].copy_(k)
        self.kv[slot, 1].copy_(v)
        q = qkv[:, :qd].view(n, self.H, self.D).transpose(0, 1).unsqueeze(0)
        a = self.attend(q, k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), kind)
        x = x + a.squeeze(0).transpose(0, 1).reshape(n, qd) @ self.w_o
        w_gu, w_down = self.mlp[kind.mlp_width]
        g, u = (x @ w_gu).split(kind.mlp_width, dim=-1)
        return x + (F.silu(g) * u) @ w_down

    def run_all(self) -> Any:
        """Every layer in order; layer i writes kv[i]."""
        x = self.x0
        for i, kind in enumerate(self.kinds):
            x = self.layer(x, kind, i)
        return x

    def run_one(self, kind: LayerKind) -> Any:
        """One layer of this shape on the input; writes kv[0]."""
        return self.layer(self.x0, kind, 0)


def recompute_case(ctx: RunContext, tokens: int) -> dict[str, Any]:
    import torch

    model, fmt = ctx.model, get_format(ctx.formats[0])
    kinds, notes = prefill_layers(model)
    cuda = ctx.cuda
    dtype = torch.bfloat16 if cuda else torch.float32
    L = len(kinds)
    counts = Counter(kinds)
    cfg = _base_cfg(ctx, "recompute", tokens)
    cfg.update(dtype=str(dtype).replace("torch.", ""), layers=L,
               mlp_widths=sorted({kd.mlp_width for kd in kinds}))
    pf = Prefill(model, tokens, kinds, device=ctx.device, dtype=dtype, seed=ctx.seed,
                 kv_slots=L if cuda else 1)
    cfg["attention_impl"] = pf.attention_impl
    budget = _budget(ctx)
    if cuda:
        stream = torch.cuda.Stream()
        torch.cuda.synchronize()  # weights and inputs were made on the default stream
        secs, warm = _timed(ctx, pf.run_all, budget_s=budget, stream=stream)
        torch.cuda.synchronize()
        out = pf.run_all()
        torch.cuda.synchronize()
        cfg.update(layers_timed=L, layers_scaled_to=L)
        notes.append(f"all {L} layers run and timed (CUDA events)")
    else:
        per_kind: dict[LayerKind, list[float]] = {}
        warm = 0
        for kd in counts:
            per_kind[kd], warm = _timed(ctx, lambda kd=kd: pf.run_one(kd), budget_s=budget / len(counts))
        n = min(len(v) for v in per_kind.values())
        secs = [sum(counts[kd] * per_kind[kd][i] for kd in counts) for i in range(n)]
        out = pf.run_one(kinds[0])
        cfg.update(layers_timed=len(counts), layers_scaled_to=L)
        if len(counts) == 1:
            notes.append(f"timed one layer in fp32 and multiplied by {L}: all {L} layers have the "
                         "same shape, so the same cost")
        else:
            notes.append(f"timed one layer of each of the {len(counts)} distinct layer shapes in fp32 "
                         f"and multiplied by the number of layers of that shape ({L} in all): "
                         "layers of one shape cost the same")
        notes.insert(0, CPU_NOTE)
    _method_config(ctx, cfg, notes, secs, warm)
    # checks, outside the timed region: the cache holds K/V of the model's shape
    want = (pf.kv.shape[0], 2, tokens, model.kv_heads, model.head_dim)
    if tuple(pf.kv.shape) != want:
        raise AssertionError(f"KV cache shape {tuple(pf.kv.shape)}, expected {want}")
    if not bool(torch.isfinite(out).all()):
        raise AssertionError("prefill produced non-finite hidden states")
    kv_bf16 = model.kv_bytes_for_sequence(tokens, "bf16")
    kv_fmt = model.kv_bytes_for_sequence(tokens, fmt)
    flops = prefill_flops(model, kinds, tokens)
    case = make_case(
        BENCH_KEY, _name(tokens, "recompute"), cfg,
        samples={"seconds": secs, "recompute_s": secs,
                 "prefill_tok_s": [tokens / s for s in secs],
                 "model_tflop_s": [flops / s / 1e12 for s in secs]},
        units={"seconds": "s", "recompute_s": "s", "prefill_tok_s": "tokens/s",
               "model_tflop_s": "TFLOP/s (model FLOPs, 2 per multiply-add)",
               "kv_bytes_produced": "B (bf16 K and V of every layer)", "kv_bytes": "B",
               "model_flop": "FLOP"},
        metrics={"kv_bytes_produced": kv_bf16, "kv_bytes": kv_fmt, "model_flop": flops},
        notes=notes)
    if fmt.quantized:
        case["notes"].append(f"the prefill writes bf16 K/V; quantizing it to {fmt.name} "
                             "is not timed")
    return case


# ----------------------------------------------------------------------------- loads
def _prefix_pages(pool: Any, tokens: int) -> list[int]:
    """Allocate one sequence of ``tokens`` tokens in the pool; its page ids."""
    from kvbench.store import PagedKVStore

    store = PagedKVStore(pool)
    store.add_sequence(0)
    store.append_tokens(0, tokens)
    return store.block_table(0)[0]


def _span(ids: list[int]) -> int:
    """First page id of a run of consecutive ids (a fresh pool hands them out so)."""
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise AssertionError("the prefix's pages are not consecutive in a fresh pool")
    return ids[0]


def _fill_bytes(t: Any, ctx: RunContext, key: int) -> None:
    """Random bytes into a 1-D uint8 tensor (generated on the GPU when there is one)."""
    import torch

    dev = "cuda" if ctx.cuda else "cpu"
    g = torch.Generator(device=dev).manual_seed(ctx.seed * 1000 + key)
    step = 64 * MiB
    for s in range(0, t.numel(), step):
        m = min(step, t.numel() - s)
        r = torch.empty(-(-m // 8), dtype=torch.int64, device=dev).random_(generator=g)
        t[s: s + m].copy_(r.view(torch.uint8)[:m])


def _equal_rows(got: Any, want: Any) -> bool:
    """Byte equality of two [n, B] uint8 tensors (any devices), in 256 MiB slices."""
    import torch

    if got.shape != want.shape:
        return False
    rows = max(1, (256 * MiB) // max(1, got.shape[1]))
    for s in range(0, got.shape[0], rows):
        if not torch.equal(got[s: s + rows].cpu(), want[s: s + rows].cpu()):
            return False
    return True


def _dst_tier(ctx: RunContext):
    return tier_or_skip("hbm" if ctx.cuda else "dram", ctx)


def _recompute_arm(ctx: RunContext, tokens: int) -> tuple[Any, str]:
    """The recompute of the same N tokens as an arm of a load case, sampled alternately
    with the load: on CUDA every layer (CUDA events), on the CPU one layer of each
    distinct shape in fp32, weighted by how many layers have it (as recompute_case)."""
    import torch

    from kvbench.measure.paired import Arm, cuda_arm

    kinds, _ = prefill_layers(ctx.model)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    pf = Prefill(ctx.model, tokens, kinds, device=ctx.device, dtype=dtype, seed=ctx.seed,
                 kv_slots=len(kinds) if ctx.cuda else 1)
    if ctx.cuda:
        torch.cuda.synchronize()
        return cuda_arm(pf.run_all, 1.0, torch.cuda.Stream()), f"all {len(kinds)} layers, bf16"
    counts = Counter(kinds)

    def sample(k: int) -> list[float]:
        out = []
        for _ in range(k):
            total = 0.0
            for kd, c in counts.items():
                t0 = time.perf_counter()
                pf.run_one(kd)
                total += c * (time.perf_counter() - t0)
            out.append(total)
        return out
    return Arm(sample, 1.0), f"one layer per distinct shape in fp32, x its {len(kinds)}-layer count"


def _paired_load(ctx: RunContext, tokens: int, load: Any, notes: list[str]) -> Any:
    """Sample the load and the recompute of the same prefix alternately."""
    from kvbench.measure.paired import interleave, min_pairs_for

    why = "" if "recompute" in sources(ctx) else "recompute not among --set prefix.sources"
    if not why:
        try:
            rec, how = _recompute_arm(ctx, tokens)
        except Skip as e:
            why = str(e)
    if why:
        notes.append(f"{why}: break-even and speed-up not computed")
        return interleave({"load": load}, {}, budget_s=_budget(ctx), min_pairs=min_pairs_for(ctx.samples),
                          warmup=min(ctx.warmup, 1))
    # at least MIN_SAMPLES pairs, not paired.MIN_PAIRS: on the CPU one recompute of a long
    # prefix takes seconds to minutes (with 3 pairs the interval is their whole range)
    notes.append(f"speed-up vs recompute: per pair of a load and a recompute of the same {tokens} "
                 f"tokens sampled alternately in this case (recompute: {how})")
    return interleave({"load": load, "recompute": rec}, {"speedup_vs_recompute": ("load", "recompute")},
                      budget_s=_budget(ctx), min_pairs=min(MIN_SAMPLES, ctx.samples) if not ctx.cuda
                      else min_pairs_for(ctx.samples), warmup=min(ctx.warmup, 1))


def dram_case(ctx: RunContext, tokens: int) -> dict[str, Any]:
    """Pages of one prefix, consecutive in a host pool, moved by one coalesced copy."""
    import torch

    from kvbench.measure.paired import cuda_arm, host_arm
    from kvbench.store import PagePool

    spec = _spec(ctx)
    n = spec.pages_for_tokens(tokens)
    cfg = _load_cfg(ctx, "dram", tokens, spec, n)
    src = PagePool(tier_or_skip("dram", ctx), spec, n)
    dst = PagePool(_dst_tier(ctx), spec, n)
    notes: list[str] = []
    try:
        s0, d0 = _span(_prefix_pages(src, tokens)), _span(_prefix_pages(dst, tokens))
        _fill_bytes(src.tensor.view(-1), ctx, key=1)
        dst.tensor.zero_()
        a, b = src.tensor[s0: s0 + n], dst.tensor[d0: d0 + n]  # contiguous: stride == page_bytes
        cfg.update(src=src.tier.label, dst=dst.tier.label, method="one coalesced copy_")
        if ctx.cuda:
            torch.cuda.synchronize()
            load = cuda_arm(lambda: b.copy_(a, non_blocking=True), 1.0, torch.cuda.Stream())
            notes.append("one cudaMemcpyAsync of the prefix's pages, pinned host -> HBM; CUDA events")
        else:
            load = host_arm(lambda: b.copy_(a), 1.0)
            notes += [CPU_NOTE, "source: a pageable host pool; destination: a second host pool "
                      "standing in for HBM (no GPU here)"]
        res = _paired_load(ctx, tokens, load, notes)
        if ctx.cuda:
            torch.cuda.synchronize()
        if not _equal_rows(b, a):
            raise AssertionError("pages differ after the dram load")
    finally:
        src.close()
        dst.close()
    return _load_result(ctx, cfg, tokens, spec, n, res, notes, "dram->hbm")


def nvme_case(ctx: RunContext, tokens: int) -> dict[str, Any]:
    """Pages of one prefix in a file pool, read cold in chunks at queue depth
    ``prefix.threads`` into two staging buffers (pinned with CUDA), each copied to the
    destination while the other fills (``kvbench.measure.staged``)."""
    import torch

    from kvbench.measure import label_cache, staged
    from kvbench.measure.paired import host_arm
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    spec = _spec(ctx)
    n = spec.pages_for_tokens(tokens)
    cfg = _load_cfg(ctx, "nvme", tokens, spec, n)
    nvme = tier_or_skip("nvme", ctx)
    odirect, why = nvme.odirect_status()
    method = "odirect" if odirect else "buffered"
    threads, cuda, pb = _threads(ctx), ctx.cuda, spec.page_bytes
    notes: list[str] = []
    if not odirect:
        notes.append(f"O_DIRECT unavailable here ({why}): buffered reads")
    tp = ThreadPoolExecutor(threads)
    src = dst = None
    try:
        src = PagePool(nvme, spec, n)
        dst = PagePool(_dst_tier(ctx), spec, n)
        stride = src.stride
        s0, d0 = _span(_prefix_pages(src, tokens)), _span(_prefix_pages(dst, tokens))
        if s0 != 0:
            raise AssertionError("the prefix does not start at the file's first page")
        # the pages' bytes (padding to the 4 KiB stride included), written sequentially
        host = aligned_host_empty(n * stride, pin=False)
        _fill_bytes(host, ctx, key=2)
        f = src.file()
        movers.sequential_writer(f, n * stride, host, 4 * MiB, tp, direct=odirect)()
        data = host.view(n, stride)[:, :pb]
        dst.tensor.zero_()
        out = dst.tensor[d0: d0 + n]
        chunk = max(1, min(n, _chunk_bytes(ctx) // stride))
        staging = [aligned_host_empty(chunk * stride, pin=cuda).view(chunk, stride) for _ in range(2)]
        hand_on = _hand_on(cuda, out, staging, chunk, stride, pb)
        load = staged.StagedReader(staged.page_chunks(f, stride, list(range(s0, s0 + n)), staging,
                                                      method, tp, pb, chunk), 2, hand_on)
        resid: list[float] = []
        if cuda:
            torch.cuda.synchronize()
        res = _paired_load(ctx, tokens, host_arm(load, 1.0, setup=lambda: resid.append(f.drop_cache())),
                           notes)
        if cuda:
            torch.cuda.synchronize()
        if not _equal_rows(out, data):
            raise AssertionError("pages differ after the nvme load")
    finally:
        tp.shutdown()
        for p in (src, dst):
            if p is not None:
                p.close()
        nvme.close()
    cfg.update(src=f"nvme ({method})", dst="hbm" if cuda else "dram (pageable, standing in for hbm)",
               method=(f"{method} reads, {threads} threads, into pinned staging, double-buffered "
                       "with H2D copies" if cuda else
                       f"{method} reads, {threads} threads, into pageable staging, then a host copy"),
               threads=threads, chunk_pages=chunk, chunk_bytes=chunk * stride, file_stride=stride)
    notes.append(f"chunks of {chunk} pages read by {threads} threads; " + (
        "each chunk's H2D copy overlaps the next chunk's read" if cuda else
        "each chunk copied to the destination after its read (no overlap on the CPU)")
        + "; host timer around the whole load, final synchronisation included")
    if not cuda:
        notes.insert(0, CPU_NOTE)
    case = _load_result(ctx, cfg, tokens, spec, n, res, notes, "nvme->hbm")
    label_cache(case, resid[min(ctx.warmup, 1):], want="cold")
    return case


def _hand_on(cuda: bool, out: Any, staging: list[Any], chunk: int, stride: int, pb: int):
    """What happens to a chunk of a prefix's pages once read into staging: on CUDA an
    H2D copy (through a device staging buffer when the file's rows are padded), else a
    host copy."""
    import torch

    if not cuda:
        def host_copy(c):
            out[c.start: c.start + c.rows].copy_(staging[c.slot][:c.rows, :pb])
        return host_copy
    direct_rows = stride == pb  # staging rows match destination rows: copy them as is
    dev_stage = None if direct_rows else [torch.empty(chunk, stride, dtype=torch.uint8, device="cuda")
                                          for _ in range(2)]
    done = [torch.cuda.Event() for _ in range(2)]
    stream = torch.cuda.Stream()

    def h2d(c):
        rows = out[c.start: c.start + c.rows]
        with torch.cuda.stream(stream):
            if direct_rows:
                rows.copy_(staging[c.slot][:c.rows], non_blocking=True)
            else:
                dev_stage[c.slot][:c.rows].copy_(staging[c.slot][:c.rows], non_blocking=True)
                rows.copy_(dev_stage[c.slot][:c.rows, :pb])
            done[c.slot].record(stream)
        return done[c.slot]
    return h2d


def _load_result(ctx: RunContext, cfg: dict[str, Any], tokens: int, spec: PageSpec, n: int,
                 res: Any, notes: list[str], direction: str) -> dict[str, Any]:
    from kvbench.measure import paired

    nbytes = n * spec.page_bytes
    secs = res.arms["load"].seconds
    samples = {"seconds": secs, "load_s": secs, "gbps": [nbytes / s / GB for s in secs]}
    if "recompute" in res.arms:
        samples["recompute_s"] = res.arms["recompute"].seconds
    case = make_case(BENCH_KEY, _name(tokens, cfg["source"]), cfg, samples=samples,
                     units={"seconds": "s", "load_s": "s", "gbps": "GB/s", "kv_bytes": "B",
                            "bytes": "B", "recompute_s": "s (same N, sampled alternately in this case)",
                            "break_even_gbps": "GB/s (KV bytes / recompute_s: load is faster above it)",
                            "speedup_vs_recompute": "x (recompute_s / load_s, median of per-pair ratios)"},
                     metrics={"kv_bytes": cfg["kv_bytes"], "bytes": nbytes},
                     notes=notes)
    if nbytes != cfg["kv_bytes"]:
        case["notes"].append(f"pages hold {nbytes:,} B for the model's {cfg['kv_bytes']:,} B of KV "
                             "(whole pages; block pages hold every layer for every token)")
    paired.record(case, res)
    if "recompute_s" in case["metrics"]:
        case["metrics"]["break_even_gbps"] = cfg["kv_bytes"] / case["metrics"]["recompute_s"] / GB
    if ctx.cuda:
        from kvbench.measure import check_limits

        check_limits(ctx, case, direction)
        if cfg["source"] == "dram" and ctx.model.name == PUBLISHED_MODEL:
            lo, hi = PUBLISHED_CPU_LOAD_SPEEDUP
            case["notes"].append(f"published: time to first token with the prefix loaded from CPU vs "
                                 f"recomputed {lo:g}-{hi:g}x faster ({PUBLISHED_MODEL}, H100); a TTFT "
                                 "figure, this case times the KV load alone")
    return case


# ----------------------------------------------------------------------------- plan
def _spec(ctx: RunContext) -> PageSpec:
    return PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, "block")


def _base_cfg(ctx: RunContext, source: str, tokens: int) -> dict[str, Any]:
    return {"source": source, "prefix_tokens": tokens, "model": ctx.model.name,
            "format": ctx.formats[0], "device": ctx.device,
            "kv_bytes": ctx.model.kv_bytes_for_sequence(tokens, ctx.formats[0])}


def _load_cfg(ctx: RunContext, source: str, tokens: int, spec: PageSpec, n: int) -> dict[str, Any]:
    cfg = _base_cfg(ctx, source, tokens)
    cfg.update(spec.describe(), pages=n, bytes=n * spec.page_bytes)
    return cfg


def _name(tokens: int, source: str) -> str:
    return f"{tokens}tok/{source}"


def plan(ctx: RunContext) -> list[Case]:
    _budget(ctx)  # a malformed --set prefix.budget_s fails before anything runs
    runners = {"recompute": recompute_case, "dram": dram_case, "nvme": nvme_case}
    cases = []
    for n in tokens_sweep(ctx):
        for s in sources(ctx):
            cases.append(Case(_name(n, s), _base_cfg(ctx, s, n),
                              lambda c, n=n, s=s: runners[s](c, n)))
    return cases


def _tokens(c: dict[str, Any]) -> Any:  # prefix length; older files said "tokens"
    return c["config"].get("prefix_tokens", c["config"].get("tokens"))


def _curves(ax, by_src: dict[str, list[dict[str, Any]]], metric: str) -> list[float]:
    """A line per source (the tier's colour, the same in every panel) of one metric
    against prefix tokens; the values drawn."""
    from kvbench import plotkit

    drawn = []
    for src, cs in by_src.items():
        pts = sorted((_tokens(c), c["metrics"][metric]) for c in cs
                     if isinstance(c["metrics"].get(metric), (int, float)))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=src,
                    color=plotkit.tier_colour(src))
            drawn += [p[1] for p in pts]
    return drawn


def plot_load_vs_recompute(doc: dict[str, Any]):
    """Load and recompute seconds against prefix tokens (log-log), and each load's
    speed-up over recompute (paired in the case), coloured by tier."""
    from kvbench import plotkit
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, BENCH_KEY) if isinstance(_tokens(c), int)
             and isinstance(c["metrics"].get("seconds"), (int, float))]
    if not cases:
        return None
    by_src: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_src.setdefault(str(c["config"].get("source", "?")), []).append(c)
    speed = any(isinstance(c["metrics"].get("speedup_vs_recompute"), (int, float)) for c in cases)
    fig = plotkit.new_figure(11 if speed else 7, 4.5)
    axes = fig.subplots(1, 2 if speed else 1, squeeze=False)[0]
    _curves(axes[0], by_src, "seconds")
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title("load vs recompute time", fontsize=10, loc="left")
    plotkit.log_axis(axes[0], "y")
    if speed:
        drawn = _curves(axes[1], {s: cs for s, cs in by_src.items() if s != "recompute"}, "speedup_vs_recompute")
        axes[1].axhline(1, color="black", lw=1)
        plotkit.log_axis(axes[1], "y", drawn + [1.0])
        axes[1].set_ylabel("speed-up of load over recompute (x, paired)")
        axes[1].set_title("recompute_s / load_s", fontsize=10, loc="left")
    xt = sorted({_tokens(c) for c in cases})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xt, [f"{x:,}" for x in xt])
        ax.minorticks_off()
        ax.set_xlabel("prefix tokens")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig, "prefix: load (dram, nvme) vs recompute seconds" + (", and the load's speed-up" if speed else "")


def highlights(doc: dict[str, Any]) -> Highlights | None:
    """Per source at the longest prefix: load time, speed-up over recompute, break-even GB/s."""
    from kvbench.results import find_cases

    cases = [c for c in find_cases(doc, BENCH_KEY) if c["config"].get("source") != "recompute"
             and isinstance(_tokens(c), int)]
    if not cases:
        return None
    longest = max(_tokens(c) for c in cases)
    rows = [[c["config"].get("source"), longest, c["metrics"].get("seconds"),
             c["metrics"].get("speedup_vs_recompute"), c["metrics"].get("break_even_gbps"), c["metrics"].get("gbps")]
            for c in cases if _tokens(c) == longest]
    return Highlights(f"prefix: load vs recompute at {longest:,} tokens",
                      [("source", ""), ("prefix tokens", "tokens"), ("load", "s"), ("speed-up vs recompute", "x"),
                       ("break-even", "GB/s"), ("load", "GB/s")], rows)


BENCH = Benchmark(
    key=BENCH_KEY,
    description="reused prefix: load its KV from dram / nvme vs recompute it; break-even GB/s and speed-up",
    plan=plan,
    headline="seconds",
    headline_unit="s",
    columns=("load_s", "recompute_s", "speedup_vs_recompute", "break_even_gbps", "gbps", "prefill_tok_s"),
    plots=(Plot("prefix_load_vs_recompute.png", plot_load_vs_recompute),),
    highlights=highlights,
    options={
        'prefix.tokens': 'prefix lengths, e.g. 1024,8192,32768',
        'prefix.sources': 'dram, nvme, recompute (default all)',
        'prefix.threads': 'O_DIRECT reader threads (default 16 GPU, 4 CPU)',
        'prefix.chunk_bytes': 'staging chunk size for nvme loads (default 32MiB GPU, 8MiB CPU)',
        'prefix.budget_s': 'time budget per case that caps warm-up and samples',
    },
)
