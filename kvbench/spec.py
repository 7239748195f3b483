"""Model shapes, KV formats and page geometry: pure arithmetic, no torch.

A KV page is a fixed number of bytes whose shape comes from a real model
(``ModelSpec``, read from ``configs/models/<name>.yaml`` with the exact Hugging
Face config field names) and a format (``KVFormat``: bytes per element including
scales). ``PageSpec`` adds tokens per page and a layout. A model's cache is a set of
components (``kvbench.kvcomponents``: a latent, indexer keys, a sliding window,
compressed entries, a compressor's state), so bytes at a context are exact. The sizing
model uses this module too, so it must never import torch.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.kvcomponents import (REQUIRED_CONFIG, SHIPPED, STORED_LAYOUTS, KVComponent, VectorCodec,
                                  build_components, compressed_layer_types)
# the encodings and the format class live in kvbench.kvformat, pages in kvbench.pagespec;
# their names are this module's too
from kvbench.kvformat import (ELEMENTS, FORMAT_FAMILIES, IN_PAGE_SCALES, SCALE_DTYPES,  # noqa: F401
                              SCALE_GRANULARITIES, Encoding, KVFormat)
from kvbench.pagespec import LAYOUTS, PageSpec  # noqa: F401

# --------------------------------------------------------------------------------------
# KV formats
# --------------------------------------------------------------------------------------

#: Every KV format by name. A new format of an existing family is one entry here (the
#: codec and the kernels read its declared attributes); a new family also needs its
#: codec in kvbench/formats/codecs.py and its paths in kernels/ (see docs/formats.md).
FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in (
        KVFormat("fp16", "float", "fp16", description="IEEE half, no scale"),
        KVFormat("bf16", "float", "bf16", description="bfloat16, no scale"),
        KVFormat(
            "fp8_e4m3", "fp8", "e4m3", scale="tensor", tensor_scale_bytes=4,
            description="OCP e4m3fn (+-448), one fp32 scale per layer and K/V tensor",
        ),
        KVFormat(
            "fp8_e4m3_head", "fp8", "e4m3", scale="head", tensor_scale_bytes=4,
            description="OCP e4m3fn, one fp32 scale per layer, K/V and KV head",
        ),
        KVFormat(
            "fp8_e4m3_token_head", "fp8", "e4m3", scale="token_head", scale_dtype="fp32",
            description="OCP e4m3fn, one fp32 scale per token, K/V and KV head (in the page)",
        ),
        KVFormat(
            "nvfp4", "fp4_block", "e2m1", scale="block", block=16, scale_dtype="e4m3",
            tensor_scale_bytes=4,
            description="e2m1 values, e4m3 scale per 16 elements, one fp32 per tensor",
        ),
        KVFormat(
            "mxfp4", "fp4_block", "e2m1", scale="block", block=32, scale_dtype="e8m0",
            description="e2m1 values, e8m0 (power of two) scale per 32 elements",
        ),
    )
}


def get_format(name: str) -> KVFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KvbenchError(
            f"unknown KV format {name!r}; known: {', '.join(FORMATS)}"
        ) from None


def resolve_format(name: str) -> KVFormat | str:
    """A format name: its KVFormat, or "shipped" (each component as its model ships it)."""
    return SHIPPED if name == SHIPPED else get_format(name)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

ATTENTION_TYPES = tuple(REQUIRED_CONFIG)  # mha, gqa, mla, hybrid_sliding, hybrid_compressed


def configs_dir() -> Path:
    """The configs/ folder: $KVBENCH_CONFIGS, else the one beside the package."""
    env = os.environ.get("KVBENCH_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "configs"


def _number(x: Fraction) -> int | float:
    """An exact byte count as an int when it is whole, else a float."""
    return int(x) if x.denominator == 1 else float(x)


@dataclass(frozen=True)
class ModelSpec:
    """A model's attention shape, with provenance.

    ``config`` holds Hugging Face config.json fields under their exact names.
    Dispatch on ``attention_type`` (and declared fields such as ``index_head_dim``),
    never on the model's name. ``extra`` is the file's ``kvbench:`` block (params,
    ``shipped_formats``: component -> format or stored layout it ships in);
    ``provenance``: where each group of fields came from.
    """

    name: str
    attention_type: str
    config: dict[str, Any]
    source_url: str
    retrieved: str
    hf_id: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    provenance: tuple[dict[str, Any], ...] = ()

    # ---- raw shape -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def num_attention_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def kv_heads(self) -> int:
        """KV heads stored per layer in the primary component (1 for MLA: one latent)."""
        if self.attention_type == "mla":
            return 1
        if self.attention_type == "mha":
            return self.num_attention_heads
        return int(self.config["num_key_value_heads"])

    @property
    def head_dim(self) -> int:
        """Elements per stored KV vector of the primary component. MLA: kv_lora_rank +
        qk_rope_head_dim; hybrid_compressed: head_dim of the shared K=V entry."""
        if self.attention_type == "mla":
            return int(self.config["kv_lora_rank"]) + int(self.config["qk_rope_head_dim"])
        return int(self.config["head_dim"])

    @property
    def kv_factor(self) -> int:
        """2 when K and V are stored separately; 1 for MLA's joint latent and for a
        shared K=V entry (hybrid_compressed)."""
        return 1 if self.attention_type in ("mla", "hybrid_compressed") else 2

    @property
    def sliding_window(self) -> int | None:
        if self.attention_type not in ("hybrid_sliding", "hybrid_compressed"):
            return None
        return int(self.config["sliding_window"])

    @cached_property
    def layer_types(self) -> tuple[str, ...]:
        """Per layer: 'full_attention' or 'sliding_attention' (hybrid_sliding); the
        DeepSeek-V4 types (sliding_attention, compressed_sparse_attention,
        heavily_compressed_attention) for hybrid_compressed."""
        if self.attention_type == "hybrid_compressed":
            return compressed_layer_types(self.config, f"model {self.name}")
        if self.attention_type == "hybrid_sliding":
            types = tuple(self.config["layer_types"])
            if len(types) != self.num_layers:
                raise KvbenchError(
                    f"model {self.name}: layer_types has {len(types)} entries, "
                    f"num_hidden_layers is {self.num_layers}"
                )
            return types
        return ("full_attention",) * self.num_layers

    @property
    def full_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == "full_attention")

    @property
    def sliding_layers(self) -> int:
        """Layers with a sliding window (every layer of a hybrid_compressed model)."""
        return self.num_layers - self.full_layers

    # ---- components ------------------------------------------------------------------
    @cached_property
    def components(self) -> tuple[KVComponent, ...]:
        """What the cache holds, component by component (kvbench.kvcomponents); the
        first is the primary one, whose vectors pages hold."""
        return build_components(self.attention_type, self.config, self.layer_types,
                                self.shipped_formats, bool(self.extra.get("compressor_state")))

    @property
    def shipped_formats(self) -> dict[str, str]:
        """Component -> the kvbench format or stored layout the model ships it in."""
        return dict(self.extra.get("shipped_formats") or {})

    def codec(self, comp: KVComponent, fmt: KVFormat | str) -> VectorCodec:
        """How ``comp`` is stored in ``fmt`` (a KVFormat, a format name or "shipped")."""
        if comp.fixed:
            return STORED_LAYOUTS[comp.fixed]
        if fmt == SHIPPED:
            if not comp.shipped:
                raise KvbenchError(f"model {self.name}: no shipped format is known for component "
                                   f"{comp.name} (configs/models kvbench.shipped_formats)")
            return FORMATS.get(comp.shipped) or STORED_LAYOUTS[comp.shipped]
        return get_format(fmt) if isinstance(fmt, str) else fmt

    def attention_gap(self, kind: str) -> str:
        """Why kvbench cannot model this model's attention for ``kind`` ("decode": the
        paged decode kernels, which read K and V vectors per token, head and layer, sliding
        windows as a band; "prefill": the recompute model of the prefix benchmark), or ""
        when it can. A benchmark skips with this reason (dispatch on the shape, never on a
        name)."""
        if kind not in ("decode", "prefill"):
            raise ValueError(f"attention_gap: kind is decode or prefill, not {kind!r}")
        if self.attention_type == "mla":
            if kind == "prefill":
                return "recompute of MLA attention (latent KV, absorbed projections) is not modelled"
            extra = "; indexer keys are sized, not paged" if len(self.components) > 1 else ""
            return "decode attention for MLA (absorbed latent) is not modelled" + extra
        if self.attention_type == "hybrid_compressed":
            if kind == "prefill":
                return ("recompute of CSA/HCA compressed attention (compressors, lightning indexer) "
                        "is not modelled")
            return ("decode attention for CSA/HCA compressed layers (entries compressed one per m "
                    "tokens, shared K=V, indexer top-k) has no kernel yet")
        return ""

    def check_format(self, fmt: KVFormat | str) -> None:
        """One-line KvbenchError when a component cannot be stored in ``fmt``."""
        for c in self.components:
            c.entry_bytes(self.codec(c, fmt))

    # ---- KV sizes ----------------------------------------------------------------------
    def kv_bytes_per_token_per_layer(self, fmt: KVFormat | str = "fp16") -> int:
        """Bytes of one entry of the primary component in one layer (K and V, all KV
        heads, with in-page scales): one token's for mha/gqa/mla. A page's unit."""
        f = get_format(fmt) if isinstance(fmt, str) else fmt
        return self.kv_factor * self.kv_heads * f.vector_bytes(self.head_dim)

    def kv_bytes_per_token(self, fmt: KVFormat | str = "fp16") -> int | float:
        """Bytes per token of context over the components that grow with it (a component
        with one entry per m tokens adds its entry / m); windows and fixed state are a
        per-sequence constant (``kv_bytes_per_sequence_constant``)."""
        return _number(sum((c.bytes_per_token(self.codec(c, fmt)) for c in self.components), Fraction(0)))

    def kv_bytes_per_sequence_constant(self, fmt: KVFormat | str = "fp16") -> int:
        """Bytes per sequence held by windows (once the sequence is one window long) and
        fixed state (0 for models without them)."""
        return sum(c.bytes_per_sequence_constant(self.codec(c, fmt)) for c in self.components)

    def kv_bytes_for_sequence(self, tokens: int, fmt: KVFormat | str = "fp16") -> int:
        """Exact KV bytes for one sequence of ``tokens`` tokens (in-page data and scales;
        a compressed component holds only complete m-token windows)."""
        return sum(c.bytes_for_sequence(int(tokens), self.codec(c, fmt)) for c in self.components)

    def kv_bytes_per_token_at(self, tokens: float, fmt: KVFormat | str = "fp16") -> float:
        """The growing components' exact bytes at ``tokens`` tokens, per token: what a
        sequence of that length adds beyond the per-sequence constant. Equals
        ``kv_bytes_per_token`` when every growing component keeps one entry per token."""
        t = max(int(tokens), 1)
        return sum(c.bytes_for_sequence(t, self.codec(c, fmt)) for c in self.components if c.grows) / t

    def kv_vectors_per_token(self) -> Fraction:
        """Stored vectors each token of context adds (one in-page scale each, for a
        per-vector format such as fp8_e4m3_token_head)."""
        return sum((c.vectors_per_token() for c in self.components), Fraction(0))

    def tensor_scale_bytes(self, fmt: KVFormat | str = "fp16") -> int:
        """Out-of-page scale bytes for the whole cache (per-tensor / per-head scales)."""
        f = get_format(fmt) if isinstance(fmt, str) else fmt
        per_tensor = f.tensor_scale_bytes * (self.kv_heads if f.scale == "head" else 1)
        return self.num_layers * self.kv_factor * per_tensor

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hf_id": self.hf_id,
            "attention_type": self.attention_type,
            "num_layers": self.num_layers,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "kv_factor": self.kv_factor,
            "sliding_window": self.sliding_window,
            "sliding_layers": self.sliding_layers,
            "components": [c.name for c in self.components],
            "source_url": self.source_url,
            "retrieved": self.retrieved,
        }


_REQUIRED_TOP = ("name", "attention_type", "config", "source_url", "retrieved")


def _date(value: Any) -> str:
    return value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else str(value)


def _provenance(data: dict[str, Any], origin: str) -> tuple[dict[str, Any], ...]:
    """The optional ``provenance:`` list: each entry names its ``fields``, a ``source``
    and the date it was ``retrieved``."""
    out = []
    for i, p in enumerate(data.get("provenance") or []):
        if not isinstance(p, dict) or not {"fields", "source", "retrieved"} <= set(p):
            raise KvbenchError(f"{origin}: provenance[{i}] needs fields, source and retrieved")
        out.append({**p, "retrieved": _date(p["retrieved"])})
    return tuple(out)


def model_from_dict(data: dict[str, Any], origin: str = "<dict>") -> ModelSpec:
    """Validate a model mapping (as read from YAML) and build a ModelSpec."""
    if not isinstance(data, dict):
        raise KvbenchError(f"{origin}: expected a mapping at top level")
    for key in _REQUIRED_TOP:
        if key not in data:
            raise KvbenchError(f"{origin}: missing field {key!r}")
    att = data["attention_type"]
    if att not in ATTENTION_TYPES:
        raise KvbenchError(
            f"{origin}: attention_type {att!r} is not one of {', '.join(ATTENTION_TYPES)}"
        )
    cfg = data["config"]
    if not isinstance(cfg, dict):
        raise KvbenchError(f"{origin}: 'config' must be a mapping of Hugging Face config fields")
    for key in REQUIRED_CONFIG[att]:
        if key not in cfg:
            raise KvbenchError(f"{origin}: config is missing {key!r} (needed for {att})")
    for key in ("num_hidden_layers", "num_key_value_heads", "head_dim", "kv_lora_rank", "index_head_dim"):
        if key in cfg and (not isinstance(cfg[key], int) or cfg[key] <= 0):
            raise KvbenchError(f"{origin}: config.{key} must be a positive integer")
    spec = ModelSpec(
        name=str(data["name"]),
        attention_type=att,
        config=dict(cfg),
        source_url=str(data["source_url"]),
        retrieved=_date(data["retrieved"]),
        hf_id=str(data.get("hf_id", "")),
        notes=str(data.get("notes", "")),
        extra=dict(data.get("kvbench", {}) or {}),
        provenance=_provenance(data, origin),
    )
    _ = spec.layer_types  # validates hybrid layer lists
    try:
        _ = spec.components
        for name in spec.shipped_formats.values():
            if name not in FORMATS and name not in STORED_LAYOUTS:
                raise KvbenchError(f"shipped format {name!r} is neither a KV format nor a stored "
                                   f"layout ({', '.join([*FORMATS, *STORED_LAYOUTS])})")
        if spec.shipped_formats:
            for c in spec.components:
                if c.shipped:
                    c.entry_bytes(spec.codec(c, SHIPPED))
    except KvbenchError as exc:
        raise KvbenchError(f"{origin}: {exc}") from None
    return spec


def list_models() -> list[str]:
    d = configs_dir() / "models"
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_model(name_or_path: str) -> ModelSpec:
    """Load ``configs/models/<name>.yaml`` (case-insensitive name) or a YAML path."""
    import yaml  # local: keep `import kvbench.spec` cheap

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        known = {n.lower(): n for n in list_models()}
        key = name_or_path.lower()
        if key not in known:
            raise KvbenchError(
                f"unknown model {name_or_path!r}; known: {', '.join(sorted(known.values()))}"
            )
        path = configs_dir() / "models" / f"{known[key]}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KvbenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return model_from_dict(data, origin=str(path))
