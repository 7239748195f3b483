"""End-to-end generation helpers for ``kvbench run --bench e2e`` (issue 13).

A random-weight transformers model built from a kvbench ``ModelSpec``'s Hugging Face
config fields (no download), or real weights loaded offline from a local folder; the
sizes and bytes of the model built (``describe_model``); a step-by-step greedy
generation loop that times every forward with a given cache; teacher-forced logits for
fidelity against a reference.

Shapes: ``ids`` ``[B, P]`` int64 prompt tokens (no padding); generated tokens ``[B, N]``;
logits ``[N, B, V]`` float32 (step i: the logits that choose token i).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

import torch

from kvbench.errors import KvbenchError


def build_config(hf_fields: dict[str, Any], shrink: dict[str, int] | None) -> Any:
    """A transformers config of ``hf_fields['model_type']`` from the spec's fields,
    with ``shrink`` (num_hidden_layers, num_attention_heads, num_key_value_heads,
    head_dim, hidden_size, intermediate_size, vocab_size) applied over them; every layer
    full attention (PagedCache pages full-attention layers only)."""
    from transformers import AutoConfig

    fields = {k: v for k, v in hf_fields.items()
              if k not in ("model_type", "architectures", "layer_types", "torch_dtype", "dtype")}
    fields.update(shrink or {})
    fields["sliding_window"] = None
    fields["use_sliding_window"] = False
    try:
        cfg = AutoConfig.for_model(hf_fields["model_type"], **fields)
    except (KeyError, ValueError) as exc:
        raise KvbenchError(f"transformers has no config for model_type "
                           f"{hf_fields.get('model_type')!r}: {exc}") from None
    cfg._attn_implementation = "sdpa"
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = ["full_attention"] * int(cfg.num_hidden_layers)
    return cfg


def build_model(cfg: Any, dtype: torch.dtype, device: str, seed: int) -> Any:
    """A random-weight causal LM of ``cfg`` (``torch.manual_seed(seed)`` first), eval
    mode, its weights made and initialised on ``device`` (an 8B model initialised on a
    CPU takes minutes; on the GPU, seconds)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.to(device).eval()


def load_model(path: Any, dtype: torch.dtype, device: str) -> Any:
    """Real weights: ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)``
    in ``dtype`` (nothing is downloaded), sdpa attention, eval mode. A one-line
    KvbenchError when the folder does not load."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                                     attn_implementation="sdpa")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KvbenchError(f"e2e.model_path {path}: does not load as a causal LM: {first}") from None
    return model.to(device).eval()


def describe_model(model: Any) -> dict[str, Any]:
    """What was built, for a case config: the text decoder's sizes (``layers_used``,
    ``hidden_size_used``, ``heads_used``, ``kv_heads_used``, ``head_dim_used``,
    ``vocab_used``, ``dtype``), ``weight_bytes`` (every parameter's bytes, a tied
    embedding once), ``weight_bytes_read_per_step`` (the same less the input embedding
    when it is not the output head's: a lookup reads B rows, not the matrix) and
    ``kv_bytes_per_token`` (K and V of every layer in the model's dtype, DynamicCache's)."""
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads)
    layers = int(cfg.num_hidden_layers)
    params = list(model.parameters())  # shared (tied) parameters once
    total = sum(p.numel() * p.element_size() for p in params)
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb_out is not None and emb_out.weight is emb_in.weight
    lookup = 0 if tied else emb_in.weight.numel() * emb_in.weight.element_size()
    dtype = params[0].dtype
    return {"layers_used": layers, "hidden_size_used": int(cfg.hidden_size), "heads_used": heads,
            "kv_heads_used": kv, "head_dim_used": head_dim, "vocab_used": int(cfg.vocab_size),
            "dtype": str(dtype).replace("torch.", ""), "weight_bytes": int(total),
            "weight_bytes_read_per_step": int(total - lookup), "tied_embeddings": bool(tied),
            "kv_bytes_per_token": 2 * layers * kv * head_dim * torch.empty((), dtype=dtype).element_size(),
            "attn_implementation": str(getattr(model.config, "_attn_implementation", "") or "")}


def cache_kw(model: Any, cache: Any) -> dict[str, Any]:
    """``cache=`` where the model's forward takes it (newer transformers), else
    ``past_key_values=``; and ``logits_to_keep=1`` where it takes that, so the prefill
    computes the last position's logits only, as ``generate`` does (at 2k tokens, batch
    8 and a 128k vocabulary all positions' fp16 logits would be 4 GB)."""
    params = inspect.signature(model.forward).parameters
    kw: dict[str, Any] = {("cache" if "cache" in params else "past_key_values"): cache}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    return kw


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def generate_timed(model: Any, cache: Any, ids: torch.Tensor, new_tokens: int,
                   forced: torch.Tensor | None = None, keep_logits: bool = False
                   ) -> dict[str, Any]:
    """Greedy decoding of ``new_tokens`` tokens, one model forward per token (EOS ignored).

    forced: ``[B, N]`` tokens to feed instead of the model's own picks (teacher forcing);
    the picks are still returned. Returns ``tokens`` ``[B, N]``, ``ttft_s`` (prefill
    forward + first argmax, synchronised), ``step_s`` (N-1 per-token decode times, each
    forward + argmax, synchronised), ``step_context`` (the tokens each of those steps
    attends over: P + i at step i = 1..N-1, the new token included) and, with
    ``keep_logits``, ``logits`` ``[N, B, V]`` float32 on the CPU."""
    device = str(ids.device)
    b, p = ids.shape
    kw = cache_kw(model, cache)
    pos = torch.arange(p, device=ids.device).unsqueeze(0).expand(b, p)
    mask = torch.ones(b, p, dtype=torch.long, device=ids.device)
    picks, logits, steps = [], [], []
    _sync(device)
    t0 = time.perf_counter()
    out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    last = out.logits[:, -1]
    tok = last.argmax(-1)
    _sync(device)
    ttft = time.perf_counter() - t0
    picks.append(tok)
    if keep_logits:
        logits.append(last.float().cpu())
    for i in range(1, new_tokens):
        feed = (forced[:, i - 1] if forced is not None else tok).view(b, 1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        pos = pos[:, -1:] + 1
        t0 = time.perf_counter()
        out = model(feed, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
        last = out.logits[:, -1]
        tok = last.argmax(-1)
        _sync(device)
        steps.append(time.perf_counter() - t0)
        picks.append(tok)
        if keep_logits:
            logits.append(last.float().cpu())
    res: dict[str, Any] = {"tokens": torch.stack(picks, 1).cpu(), "ttft_s": ttft, "step_s": steps,
                           "step_context": [p + i for i in range(1, new_tokens)]}
    if keep_logits:
        res["logits"] = torch.stack(logits, 0)
    return res


def agreement(tokens: torch.Tensor, ref: torch.Tensor) -> tuple[float, int | None]:
    """(fraction of ``[B, N]`` tokens equal to ``ref``'s, first step where any row
    differs or None)."""
    same = tokens == ref
    bad = (~same).any(0).nonzero()
    return float(same.float().mean()), (int(bad[0]) if len(bad) else None)


def logit_errors(logits: torch.Tensor, ref: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per step: max |logit - ref logit| over batch and vocab, and KL(ref || case) of
    the softmax distributions in nats, mean over the batch. ``[N, B, V]`` float32 each."""
    diff = (logits - ref).abs().amax(dim=(1, 2))
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(logits, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0).mean(-1)
    return [float(x) for x in diff], [float(x) for x in kl]


def make_cache_factory(kind: str, model: Any, *, fmt: str = "", tier: str = "",
                       tokens_per_page: int = 16, max_tokens: int = 0,
                       nvme_dir: Any = None,
                       placement: list[tuple[str, int]] | None = None) -> Callable[[], Any]:
    """A function returning a fresh cache of ``kind``: ``dynamic``, ``dynamic_offload``,
    ``quantized/<backend>`` or ``kvbench`` (a ``PagedCache`` of ``fmt`` on ``tier``, or on
    a chain of tiers by age: ``placement``, see ``PagedCache``)."""
    from transformers import DynamicCache

    if kind == "dynamic":
        return lambda: DynamicCache(config=model.config)
    if kind == "dynamic_offload":
        return lambda: DynamicCache(config=model.config, offloading=True)
    if kind.startswith("quantized/"):
        from transformers import QuantizedCache

        backend = kind.split("/", 1)[1]
        return lambda: QuantizedCache(backend, model.config)
    if kind == "kvbench":
        from kvbench.hf.cache import PagedCache

        return lambda: PagedCache(model.config, fmt=fmt, tier=tier, tokens_per_page=tokens_per_page,
                                  max_cache_len=max_tokens, nvme_dir=nvme_dir,
                                  placement=placement or [(tier, 0)])
    raise KvbenchError(f"unknown cache kind {kind!r}")
