"""Model shapes, KV formats and page geometry: pure arithmetic, no torch.

A KV page is a fixed number of bytes whose shape comes from a real model
(``ModelSpec``, read from ``configs/models/<name>.yaml`` with the exact Hugging
Face config field names) and a format (``KVFormat``: bytes per element including
scales). ``PageSpec`` adds tokens per page and a layout. The sizing model uses
this module too, so it must never import torch.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError

# --------------------------------------------------------------------------------------
# KV formats
# --------------------------------------------------------------------------------------

#: Format families: one reference codec (kvbench.formats.codecs) and one set of Triton
#: kernel paths (kernels/quant.py, kernels/paged_attention.py) per family. Within a
#: family, formats differ only in what they declare (element, scale layout), so a new
#: format of an existing family is one registry entry below.
FORMAT_FAMILIES = {
    "float": "16-bit floats stored as they are (a cast), no scale",
    "fp8": "one 8-bit float code per value times an fp32 scale (per tensor, per KV head, "
           "or per (token, KV head) vector in the page)",
    "fp4_block": "4-bit codes, two per byte, times a per-block in-page scale (e4m3 with a "
                 "second-level fp32 per-tensor scale, NVFP4's recipe; or e8m0, OCP MX)",
}


@dataclass(frozen=True)
class Encoding:
    """A stored number type: bits (or bytes) per item, and the integer code the Triton
    kernels compare their constexprs against (unique within its table)."""

    name: str
    bits: int
    code: int
    description: str = ""


#: Value element encodings. ``code`` is the decode kernel's VAL constexpr.
ELEMENTS = {e.name: e for e in (
    Encoding("fp16", 16, 0, "IEEE 754 binary16"),
    Encoding("bf16", 16, 1, "bfloat16"),
    Encoding("e4m3", 8, 2, "OCP e4m3fn, max 448 (OFP8 v1.0)"),
    Encoding("e2m1", 4, 3, "OCP FP4 e2m1, max 6 (MX v1.0 5.3.3)"),
)}

#: In-page scale encodings. ``code`` is the decode kernel's SCALE constexpr ("none":
#: no in-page scale; out-of-page scales are always fp32, see ``tensor_scale_bytes``).
SCALE_DTYPES = {e.name: e for e in (
    Encoding("none", 0, 0, "no in-page scale"),
    Encoding("fp32", 32, 1, "IEEE binary32, little-endian"),
    Encoding("e4m3", 8, 2, "OCP e4m3fn"),
    Encoding("e8m0", 8, 3, "OCP MX e8m0, a power of two 2^(byte-127)"),
)}

#: Scale granularities. "tensor": one fp32 per (layer, K or V) tensor; "head": one fp32
#: per (layer, K or V, KV head); "token_head": one in-page scale per (token, K or V, KV
#: head) vector; "block": one in-page scale per `block` elements along head_dim.
SCALE_GRANULARITIES = ("none", "tensor", "head", "token_head", "block")
#: granularities whose scale is stored in the page (with a scale_dtype)
IN_PAGE_SCALES = ("token_head", "block")


@dataclass(frozen=True)
class KVFormat:
    """How one KV element is stored: a family, a value element and a scale layout.

    family: one of FORMAT_FAMILIES (selects the codec and the kernel paths).
    element: one of ELEMENTS, the stored value (4-bit values pack two per byte, the
        first in the low nibble).
    scale: one of SCALE_GRANULARITIES.
    block: elements per in-page scale for scale == "block" (16 for NVFP4, 32 for MXFP4).
    scale_dtype: one of SCALE_DTYPES, the encoding of each in-page scale ("none" unless
        scale is in IN_PAGE_SCALES).
    tensor_scale_bytes: bytes of the out-of-page fp32 scale per (layer, K or V) tensor
        (fp8 per-tensor scale; NVFP4's second-level scale), per head for "head".
    """

    name: str
    family: str
    element: str
    scale: str = "none"
    block: int = 0
    scale_dtype: str = "none"
    tensor_scale_bytes: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        for what, value, known in (("family", self.family, FORMAT_FAMILIES),
                                   ("element", self.element, ELEMENTS),
                                   ("scale", self.scale, SCALE_GRANULARITIES),
                                   ("scale_dtype", self.scale_dtype, SCALE_DTYPES)):
            if value not in known:
                raise KvbenchError(f"KV format {self.name}: unknown {what} {value!r}; "
                                   f"known: {', '.join(known)}")
        if (self.scale in IN_PAGE_SCALES) != (self.scale_dtype != "none"):
            raise KvbenchError(f"KV format {self.name}: scale {self.scale!r} needs an in-page "
                               f"scale_dtype exactly when it is one of {', '.join(IN_PAGE_SCALES)}")
        if (self.scale == "block") != (self.block > 0):
            raise KvbenchError(f"KV format {self.name}: a block size goes with scale 'block'")

    @property
    def value_bits(self) -> int:
        """Bits per stored value (16, 8 or 4)."""
        return ELEMENTS[self.element].bits

    @property
    def scale_bytes(self) -> int:
        """Bytes of each in-page scale (fp32 = 4, e4m3 = 1, e8m0 = 1; 0 without one)."""
        return SCALE_DTYPES[self.scale_dtype].bits // 8

    @property
    def value_code(self) -> int:
        """The Triton kernels' code of the value element (ELEMENTS[element].code)."""
        return ELEMENTS[self.element].code

    @property
    def scale_code(self) -> int:
        """The Triton kernels' code of the in-page scale (SCALE_DTYPES[scale_dtype].code)."""
        return SCALE_DTYPES[self.scale_dtype].code

    def vector_bytes(self, n: int) -> int:
        """Bytes in a page for one vector of n elements (one token, one head, K or V),
        including its in-page scales. n must be a multiple of the block size."""
        if n <= 0:
            raise ValueError("vector length must be positive")
        if self.value_bits == 4 and n % 2:
            raise KvbenchError(f"{self.name}: vector length {n} is odd; 4-bit values pack in pairs")
        values = n * self.value_bits // 8
        if self.scale == "block":
            if n % self.block:
                raise KvbenchError(
                    f"{self.name}: head dim {n} is not a multiple of its {self.block}-element block"
                )
            return values + (n // self.block) * self.scale_bytes
        if self.scale == "token_head":
            return values + self.scale_bytes
        return values

    def value_bytes(self, n: int) -> int:
        """Bytes of the packed values alone for n elements (no scales)."""
        return n * self.value_bits // 8

    def bits_per_element(self, head_dim: int) -> float:
        """Stored bits per element including in-page scales (out-of-page per-tensor scales
        are amortized to ~0 and not counted here)."""
        return 8.0 * self.vector_bytes(head_dim) / head_dim

    @property
    def quantized(self) -> bool:
        return self.value_bits < 16


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


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

ATTENTION_TYPES = ("mha", "gqa", "mla", "hybrid_sliding")


def configs_dir() -> Path:
    """The configs/ folder: $KVBENCH_CONFIGS, else the one beside the package."""
    env = os.environ.get("KVBENCH_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelSpec:
    """A model's attention shape, with provenance.

    ``config`` holds Hugging Face config.json fields under their exact names.
    Dispatch on ``attention_type``, never on the model's name.
    """

    name: str
    attention_type: str
    config: dict[str, Any]
    source_url: str
    retrieved: str
    hf_id: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

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
        """KV heads stored per layer (1 for MLA: one latent vector per token)."""
        if self.attention_type == "mla":
            return 1
        if self.attention_type == "mha":
            return self.num_attention_heads
        return int(self.config["num_key_value_heads"])

    @property
    def head_dim(self) -> int:
        """Elements per stored KV vector. MLA: kv_lora_rank + qk_rope_head_dim."""
        if self.attention_type == "mla":
            return int(self.config["kv_lora_rank"]) + int(self.config["qk_rope_head_dim"])
        return int(self.config["head_dim"])

    @property
    def kv_factor(self) -> int:
        """2 when K and V are stored separately; 1 for MLA's joint latent."""
        return 1 if self.attention_type == "mla" else 2

    @property
    def sliding_window(self) -> int | None:
        if self.attention_type != "hybrid_sliding":
            return None
        return int(self.config["sliding_window"])

    @cached_property
    def layer_types(self) -> tuple[str, ...]:
        """'full_attention' or 'sliding_attention' per layer."""
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
        return self.num_layers - self.full_layers

    # ---- KV sizes ----------------------------------------------------------------------
    def kv_bytes_per_token_per_layer(self, fmt: KVFormat | str = "fp16") -> int:
        """Bytes one token adds to one layer's cache (K and V, all KV heads, with scales)."""
        f = get_format(fmt) if isinstance(fmt, str) else fmt
        return self.kv_factor * self.kv_heads * f.vector_bytes(self.head_dim)

    def kv_bytes_per_token(self, fmt: KVFormat | str = "fp16") -> int:
        """Bytes per token of context, over the layers whose cache grows with context
        (all layers, except sliding-window layers of a hybrid model, which are a
        per-sequence constant: see ``kv_bytes_per_sequence_constant``)."""
        return self.full_layers * self.kv_bytes_per_token_per_layer(fmt)

    def kv_bytes_per_sequence_constant(self, fmt: KVFormat | str = "fp16") -> int:
        """Bytes per sequence held by sliding-window layers once the sequence is at least
        one window long (0 for models without them)."""
        if self.attention_type != "hybrid_sliding":
            return 0
        return self.sliding_layers * self.sliding_window * self.kv_bytes_per_token_per_layer(fmt)

    def kv_bytes_for_sequence(self, tokens: int, fmt: KVFormat | str = "fp16") -> int:
        """Exact KV bytes for one sequence of ``tokens`` tokens (in-page data and scales)."""
        per_layer = self.kv_bytes_per_token_per_layer(fmt)
        window = self.sliding_window or 0
        return (
            self.full_layers * tokens * per_layer
            + self.sliding_layers * min(tokens, window) * per_layer
        )

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
            "source_url": self.source_url,
            "retrieved": self.retrieved,
        }


_REQUIRED_TOP = ("name", "attention_type", "config", "source_url", "retrieved")
_REQUIRED_CONFIG = {
    "mha": ("num_hidden_layers", "num_attention_heads", "head_dim"),
    "gqa": ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"),
    "mla": ("num_hidden_layers", "kv_lora_rank", "qk_rope_head_dim"),
    "hybrid_sliding": (
        "num_hidden_layers", "num_key_value_heads", "head_dim", "sliding_window", "layer_types",
    ),
}


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
    for key in _REQUIRED_CONFIG[att]:
        if key not in cfg:
            raise KvbenchError(f"{origin}: config is missing {key!r} (needed for {att})")
    for key in ("num_hidden_layers", "num_key_value_heads", "head_dim", "kv_lora_rank"):
        if key in cfg and (not isinstance(cfg[key], int) or cfg[key] <= 0):
            raise KvbenchError(f"{origin}: config.{key} must be a positive integer")
    retrieved = data["retrieved"]
    if isinstance(retrieved, (_dt.date, _dt.datetime)):
        retrieved = retrieved.isoformat()
    spec = ModelSpec(
        name=str(data["name"]),
        attention_type=att,
        config=dict(cfg),
        source_url=str(data["source_url"]),
        retrieved=str(retrieved),
        hf_id=str(data.get("hf_id", "")),
        notes=str(data.get("notes", "")),
        extra=dict(data.get("kvbench", {}) or {}),
    )
    _ = spec.layer_types  # validates hybrid layer lists
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


# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------

LAYOUTS = ("layer", "block")


@dataclass(frozen=True)
class PageSpec:
    """Geometry of one page.

    layout "layer": a page holds ``tokens`` tokens of one layer (K and V, all KV heads),
        as vLLM's per-layer KV blocks do; a sequence needs num_layers pages per span.
    layout "block": a page holds ``tokens`` tokens of every layer, one contiguous block
        per token span (the layout that makes offload copies large).
    Inside a page, for each layer: the K values of all (token, head) vectors, then V
    values, then the in-page scales of K, then of V (see kvbench.formats for the exact
    byte map).
    """

    model: ModelSpec
    fmt: KVFormat
    tokens: int
    layout: str = "layer"

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise KvbenchError(f"tokens per page must be positive, got {self.tokens}")
        if self.layout not in LAYOUTS:
            raise KvbenchError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")

    @property
    def layers_per_page(self) -> int:
        return self.model.num_layers if self.layout == "block" else 1

    @property
    def page_bytes(self) -> int:
        """Payload bytes of one page (values and in-page scales)."""
        return self.tokens * self.layers_per_page * self.model.kv_bytes_per_token_per_layer(self.fmt)

    def pages_for_tokens(self, tokens: int) -> int:
        """Pages one sequence of ``tokens`` tokens needs (all layers, every layer paged)."""
        spans = -(-tokens // self.tokens)
        return spans * (self.model.num_layers // self.layers_per_page)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "format": self.fmt.name,
            "tokens_per_page": self.tokens,
            "layout": self.layout,
            "page_bytes": self.page_bytes,
        }
