"""The recompute side of the prefix benchmark: the model's layer shapes, their FLOPs, a
prefill with random weights that writes each layer's K and V, and the recompute case."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kvbench.bench import RunContext, Skip
from kvbench.results import make_case
from kvbench.spec import ModelSpec, get_format
from kvbench.bench.prefix.common import BENCH_KEY, CPU_NOTE, _base_cfg, _budget, _method_config, _name, _timed


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
    gap = model.attention_gap("prefill")
    if gap:
        raise Skip(gap)
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
