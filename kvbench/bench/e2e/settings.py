"""The e2e benchmark's settings: its key, the shrunken model of a CPU run, the
``--set e2e.*`` options it reads (validated at plan time: one line, exit 2), where the
model comes from (the run's model config, or real weights in ``e2e.model_path``) and
whether it can run here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from kvbench.bench import RunContext
from kvbench.errors import KvbenchError

BENCH_KEY = "e2e"

#: the shrunken model of a CPU or --quick run (upper bounds; the config's own values
#: where smaller): a few layers and a small hidden size keep a CPU run to seconds
SHRINK = {"layers": 2, "heads": 8, "head_dim": 64, "vocab": 1024}
#: transformers' quantized-cache backends and the module each needs
QUANT_BACKENDS = {"quanto": "optimum.quanto", "hqq": "hqq"}
#: seconds a cache's generations are paired with DynamicCache's for (quick, full): at
#: least max(6, --samples) pairs are taken whatever the budget
BUDGET_S = (10.0, 60.0)

#: e2e.attention's values: kvbench's registered attention reading the pages, or sdpa over a copy
ATTENTIONS = ("kvbench", "copy")

OPTIONS = {
    "e2e.batch": "sequences generated together (default 2 quick, 8 full)",
    "e2e.prompt_tokens": "prompt tokens per sequence (default 32 quick, 512 full), e.g. 2048",
    "e2e.new_tokens": "tokens generated per sequence, EOS ignored; at least 2 (default 16 quick, 128 full)",
    "e2e.budget_s": "seconds a cache's generations are sampled alternately with DynamicCache's for, "
                    "after at least max(6, --samples) pairs (default 10 quick, 60 full)",
    "e2e.hot_window": "tokens of each sequence kept on the hot tier in a two-tier placement "
                      "(kvbench/<hot>+<cold>/<format>), the older ones on the cold tier "
                      "(default 16 quick, 256 full)",
    "e2e.warm_window": "tokens of each sequence kept on the middle tier of a three-tier chain "
                       "(kvbench/<hot>+<warm>+<cold>/<format>) after the hot window (default 32 quick, 4096 full)",
    "e2e.attention": "how kvbench's cache is attended: 'kvbench' (kvbench_paged, registered with "
                     "transformers: attention reads the pages, fused paged decode on CUDA) or 'copy' "
                     "(the cache hands sdpa a dequantized copy of the layer); default kvbench",
    "e2e.model_path": "a local save_pretrained folder (config.json + weights) loaded offline in float16 "
                      "instead of random weights from --model's config; never shrunk",
}


def budget_s(ctx: RunContext) -> float:
    return ctx.opt_seconds("e2e.budget_s", BUDGET_S[0] if ctx.quick else BUDGET_S[1])


def model_dir(ctx: RunContext) -> Path | None:
    """The folder of ``--set e2e.model_path``, checked without loading it: a directory
    with a JSON ``config.json`` naming a ``model_type`` and weight files; None when the
    option is not given. A one-line KvbenchError otherwise."""
    text = str(ctx.opt("e2e.model_path", "")).strip()
    if not text:
        return None
    where = f"--set e2e.model_path={text}"
    path = Path(text).expanduser()
    if not path.is_dir():
        raise KvbenchError(f"{where}: not a directory")
    try:
        fields = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise KvbenchError(f"{where}: no config.json in it (a save_pretrained folder has one)") from None
    except (OSError, ValueError) as exc:
        raise KvbenchError(f"{where}: config.json is not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(fields, dict) or not fields.get("model_type"):
        raise KvbenchError(f"{where}: config.json names no model_type")
    if not (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise KvbenchError(f"{where}: no weights in it (*.safetensors or pytorch_model*.bin)")
    return path.resolve()


def source_fields(ctx: RunContext) -> dict[str, Any]:
    """The Hugging Face config fields the model is built from: ``e2e.model_path``'s
    config.json when given, else the run's model config (``--model``)."""
    path = model_dir(ctx)
    if path is not None:
        return json.loads((path / "config.json").read_text())
    return dict(ctx.model.config or {})


def settings(ctx: RunContext) -> dict[str, Any]:
    """The resolved options, validated (one-line KvbenchError for a bad one)."""
    path = model_dir(ctx)
    fields = source_fields(ctx)
    most = int(fields["max_position_embeddings"]) if fields.get("max_position_embeddings") else None
    batch = ctx.opt_int("e2e.batch", 2 if ctx.quick else 8, maximum=4096)
    prompt = ctx.opt_int("e2e.prompt_tokens", 32 if ctx.quick else 512, maximum=most,
                         why="the model's max_position_embeddings")
    new = ctx.opt_int("e2e.new_tokens", 16 if ctx.quick else 128, minimum=2,
                      maximum=(most - prompt) if most else None,
                      why=f"prompt ({prompt}) + new tokens must fit max_position_embeddings ({most})")
    if most and prompt + new > most:  # the defaults, which opt_int does not check
        raise KvbenchError(f"e2e.prompt_tokens ({prompt}) + e2e.new_tokens ({new}) is more than the model's "
                           f"max_position_embeddings ({most}): --set smaller ones")
    budget_s(ctx)
    window = ctx.opt_int("e2e.hot_window", 16 if ctx.quick else 256, maximum=1 << 24)
    warm = ctx.opt_int("e2e.warm_window", 32 if ctx.quick else 4096, maximum=1 << 24)
    attention = str(ctx.opt("e2e.attention", "kvbench"))
    if attention not in ATTENTIONS:
        raise KvbenchError(f"--set e2e.attention={attention}: one of {', '.join(ATTENTIONS)}")
    return {"batch": batch, "prompt_tokens": prompt, "new_tokens": new, "hot_window": window,
            "warm_window": warm,
            "attention": attention,
            "shrunk": path is None and (ctx.quick or not ctx.cuda),
            "weights": str(path) if path is not None else "random"}


def support(ctx: RunContext) -> tuple[bool, str]:
    """Whether the run's model can be built as a transformers model and paged."""
    if importlib.util.find_spec("transformers") is None:
        return False, "transformers is not installed"
    if "e2e.model_path" in ctx.options:
        return True, ""  # model_dir checked the folder; PagedCache says what it cannot page
    cfg = ctx.model.config or {}
    if ctx.model.attention_type not in ("gqa", "mha"):
        return False, (f"attention type {ctx.model.attention_type} is not paged by PagedCache yet "
                       "(gqa and mha are)")
    if not cfg.get("model_type"):
        return False, f"model {ctx.model.name} has no model_type: no transformers architecture to build"
    return True, ""


def shrink_fields(cfg: dict[str, Any], shrunk: bool) -> dict[str, int]:
    """The Hugging Face config fields a shrunken build overrides ({} when not shrunk):
    at most SHRINK's layers, query heads and head dims (the GQA ratio kept), hidden =
    heads x head_dim, intermediate = 2 x hidden, at most SHRINK's vocabulary; MoE at
    most 4 experts of width hidden, 2 per token."""
    if not shrunk:
        return {}
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    group = max(1, heads // kv)
    h = min(heads, SHRINK["heads"])
    h = max(group, h - h % group)
    d = min(head_dim, SHRINK["head_dim"])
    hidden = h * d
    out = {"num_hidden_layers": min(int(cfg["num_hidden_layers"]), SHRINK["layers"]),
           "num_attention_heads": h, "num_key_value_heads": max(1, h // group), "head_dim": d,
           "hidden_size": hidden, "intermediate_size": 2 * hidden,
           "vocab_size": min(int(cfg.get("vocab_size") or 32000), SHRINK["vocab"])}
    for k in ("moe_intermediate_size", "n_routed_experts", "num_local_experts"):
        if k in cfg:
            out[k] = min(int(cfg[k]), {"moe_intermediate_size": hidden}.get(k, 4))
    if "num_experts_per_tok" in cfg:
        out["num_experts_per_tok"] = min(int(cfg["num_experts_per_tok"]), 2)
    return out
