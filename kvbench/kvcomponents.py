"""A model's KV cache as components: pure arithmetic, no torch.

A component is one kind of vector some layers keep per sequence: MLA's latent, DeepSeek
Sparse Attention's indexer keys, a sliding window's entries, CSA's entries compressed
one per ``m`` tokens, a compressor's fixed-size state. Bytes of one sequence at ``N``
tokens are then exact arithmetic::

    layers x entries(N) x vectors x bytes per vector (in the format)
    entries(N) = N // tokens_per_entry          (growing: one entry per m tokens)
               = min(N // m, max_entries)       (a window: at most max_entries)
               = max_entries                    (constant state, allocated at once)

A component is stored either in a kvbench format applied uniformly (``KVFormat``) or
in a ``StoredLayout``: the byte layout a model's serving stack ships it in, e.g. FlashMLA's
FP8 latent with a bf16 RoPE part. Components are built from the model's Hugging Face
config fields by ``build_components``, which dispatches on ``attention_type`` and on
declared fields (``index_head_dim``: an indexer), never on a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Protocol

from kvbench.errors import KvbenchError

#: ``--format shipped``: each component in the layout the model ships it in
#: (``kvbench.shipped_formats`` of its configs/models file).
SHIPPED = "shipped"

#: DeepSeek-V4's layer types (transformers' DEEPSEEK_V4_LAYER_TYPES) and the
#: ``compress_ratios`` entry that means "sliding window only" (transformers'
#: _COMPRESS_RATIO_TO_LAYER_TYPE: 0 -> sliding_attention).
SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
COMPRESSED_LAYER_TYPES = (SLIDING, CSA, HCA)


class VectorCodec(Protocol):
    """What a component's storage answers: bytes of one stored vector of n elements."""

    name: str

    def vector_bytes(self, n: int) -> int: ...


# ----------------------------------------------------------------------- stored layouts
@dataclass(frozen=True)
class Part:
    """A slice of a stored vector in one encoding: ``elements`` values of ``bits`` each,
    plus one ``scale_bits`` scale per ``block`` elements (block 0: no scale)."""

    elements: int
    bits: int
    block: int = 0
    scale_bits: int = 0
    label: str = ""

    @property
    def nbytes(self) -> int:
        scales = self.elements // self.block * self.scale_bits if self.block else 0
        return (self.elements * self.bits + scales) // 8


@dataclass(frozen=True)
class StoredLayout:
    """A byte layout of one stored vector as a serving stack ships it: ``parts`` in
    order (their elements add up to the vector's) and ``pad_bytes`` after them; or,
    with ``uniform_bits``, any length at that many bits per element (fp32 state)."""

    name: str
    parts: tuple[Part, ...] = ()
    pad_bytes: int = 0
    uniform_bits: int = 0
    description: str = ""
    source: str = ""

    @property
    def elements(self) -> int:
        return sum(p.elements for p in self.parts)

    def vector_bytes(self, n: int) -> int:
        if self.uniform_bits:
            return n * self.uniform_bits // 8
        if n != self.elements:
            raise KvbenchError(f"stored layout {self.name} holds {self.elements}-element vectors, "
                               f"not {n}")
        return sum(p.nbytes for p in self.parts) + self.pad_bytes


#: Layouts models ship components in, beside kvbench's uniform formats (kvbench.spec.FORMATS;
#: a model's shipped format may also name one of those, e.g. mxfp4).
STORED_LAYOUTS: dict[str, StoredLayout] = {s.name: s for s in (
    StoredLayout(
        "ds_mla_fp8",
        (Part(512, 8, 128, 32, "512 e4m3 + fp32 scale per 128"), Part(64, 16, label="64 bf16 RoPE")),
        description="DeepSeek-V3.2's FP8 latent: 512 e4m3 values, 4 fp32 scales (one per 128), "
                    "64 bf16 RoPE values = 656 B",
        source="https://github.com/deepseek-ai/FlashMLA README.md ('FP8 with scale' format: 656 "
               "bytes per token) and csrc/api/sparse_decode.h 'V3.2 style: 512 + 64*2 + "
               "(512/128)*4' (commit 9241ae3e, read 2026-12-02)"),
    StoredLayout(
        "ds_v4_fp8",
        (Part(448, 8, 64, 8, "448 e4m3 + e8m0 scale per 64"), Part(64, 16, label="64 bf16 RoPE")),
        pad_bytes=1,
        description="DeepSeek-V4's FP8 K=V entry (FlashMLA 'MODEL1', d_qk 512): 448 e4m3 values, "
                    "7 e8m0 scales (one per 64), 64 bf16 RoPE values, 1 pad byte = 584 B",
        source="https://github.com/deepseek-ai/FlashMLA csrc/api/sparse_decode.h 'MODEL1 style: "
               "448 + 64*2 + (448/64)*1 + 1' and csrc/sm100/decode/head64/config.h (e8m0 scales, "
               "'Padding is included') (commit 9241ae3e, read 2026-12-02)"),
    StoredLayout(
        "fp8_e4m3_b128",
        (Part(128, 8, 128, 32, "128 e4m3 + fp32 scale per 128"),),
        description="DeepSeek-V3.2's indexer key: 128 e4m3 values and one fp32 scale = 132 B",
        source="https://github.com/deepseek-ai/DeepSeek-V3.2-Exp inference/model.py Indexer: "
               "k_cache float8_e4m3fn [.., index_head_dim], k_scale_cache float32 "
               "[.., index_head_dim // block_size], block_size = 128 (commit 3b99a535, read 2026-12-02)"),
    StoredLayout(
        "fp32", uniform_bits=32,
        description="fp32, whatever kvbench format is chosen (a compressor's running state)"),
)}


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class KVComponent:
    """One kind of vector some layers keep per sequence.

    elements: values per stored vector (e.g. 576 for MLA's latent + RoPE key).
    vectors: vectors per entry (2 x KV heads for separate K and V; 1 for a latent or a
        shared K=V entry).
    layers: the layer indices that keep it.
    tokens_per_entry: one entry per this many tokens (m; 1 = every token).
    max_entries: > 0: at most this many entries per sequence (a window), or, with
        ``constant``, exactly this many from the first token (a fixed-size state).
    fixed: a STORED_LAYOUTS name the component is always kept in, whatever the format.
    shipped: the format or layout the model ships it in ("" when no source says).
    """

    name: str
    elements: int
    vectors: int
    layers: tuple[int, ...]
    tokens_per_entry: int = 1
    max_entries: int = 0
    constant: bool = False
    fixed: str = ""
    shipped: str = ""
    description: str = ""

    @property
    def grows(self) -> bool:
        """True when the component grows with context (no window, no fixed size)."""
        return not self.max_entries

    def entries(self, tokens: int) -> int:
        """Entries one layer holds for a sequence of ``tokens`` tokens."""
        if self.constant:
            return self.max_entries
        n = tokens // self.tokens_per_entry
        return min(n, self.max_entries) if self.max_entries else n

    def entry_bytes(self, codec: VectorCodec) -> int:
        return self.vectors * codec.vector_bytes(self.elements)

    def bytes_for_sequence(self, tokens: int, codec: VectorCodec) -> int:
        return len(self.layers) * self.entries(tokens) * self.entry_bytes(codec)

    def bytes_per_token(self, codec: VectorCodec) -> Fraction:
        """Bytes each token of context adds, averaged over m tokens (0 if it does not grow)."""
        if not self.grows:
            return Fraction(0)
        return Fraction(len(self.layers) * self.entry_bytes(codec), self.tokens_per_entry)

    def bytes_per_sequence_constant(self, codec: VectorCodec) -> int:
        """Bytes per sequence once its window is full (a fixed state: from the start)."""
        return 0 if self.grows else len(self.layers) * self.max_entries * self.entry_bytes(codec)

    def vectors_per_token(self) -> Fraction:
        return Fraction(len(self.layers) * self.vectors, self.tokens_per_entry) if self.grows else Fraction(0)

    def holds(self) -> str:
        """What a layer holds, in words ("every token", "1 per 4 tokens", "last 128")."""
        if self.constant:
            return f"{self.max_entries} rows, fixed"
        per = "every token" if self.tokens_per_entry == 1 else f"1 per {self.tokens_per_entry} tokens"
        return f"last {self.max_entries}" if self.max_entries else per


# ------------------------------------------------------------------------------ builders
#: config fields each attention type needs (exact Hugging Face names)
REQUIRED_CONFIG = {
    "mha": ("num_hidden_layers", "num_attention_heads", "head_dim"),
    "gqa": ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"),
    "mla": ("num_hidden_layers", "kv_lora_rank", "qk_rope_head_dim"),
    "hybrid_sliding": (
        "num_hidden_layers", "num_key_value_heads", "head_dim", "sliding_window", "layer_types",
    ),
    "hybrid_compressed": (
        "num_hidden_layers", "num_key_value_heads", "head_dim", "sliding_window",
        "compress_rates", "index_head_dim",
    ),
}


def compressed_layer_types(cfg: dict[str, Any], origin: str) -> tuple[str, ...]:
    """Per-layer types of a hybrid_compressed model, as transformers' DeepseekV4Config reads
    them: ``layer_types`` if given, else ``compress_ratios`` (config.json's per-layer ints;
    0 = sliding only, else the layer type whose ``compress_rates`` entry it equals),
    truncated to ``num_hidden_layers`` (config.json lists the MTP layers after them)."""
    n = int(cfg["num_hidden_layers"])
    rates = cfg["compress_rates"]
    if not isinstance(rates, dict) or not all(isinstance(r, int) and r > 0 for r in rates.values()):
        raise KvbenchError(f"{origin}: compress_rates must map layer types to positive integers")
    for key in ("layer_types", "compress_ratios"):
        if key in cfg and not isinstance(cfg[key], list):
            raise KvbenchError(f"{origin}: {key} must be a list, one entry per layer")
    if "layer_types" in cfg:
        types = tuple(cfg["layer_types"])
    elif "compress_ratios" in cfg:
        by_ratio = {0: SLIDING, **{r: t for t, r in rates.items()}}
        bad = sorted({r for r in cfg["compress_ratios"] if r not in by_ratio})
        if bad:
            raise KvbenchError(f"{origin}: compress_ratios has {bad}, not 0 or a compress_rates "
                               f"value ({', '.join(f'{t}: {r}' for t, r in rates.items())})")
        types = tuple(by_ratio[r] for r in cfg["compress_ratios"])
    else:
        raise KvbenchError(f"{origin}: config needs layer_types or compress_ratios (hybrid_compressed)")
    if len(types) < n:
        raise KvbenchError(f"{origin}: {len(types)} layer types for num_hidden_layers {n}")
    types = types[:n]
    bad_types = sorted(set(types) - set(COMPRESSED_LAYER_TYPES))
    if bad_types:
        raise KvbenchError(f"{origin}: layer types {bad_types} are not {', '.join(COMPRESSED_LAYER_TYPES)}")
    missing = {CSA, HCA} & set(types) - set(rates)
    if missing:
        raise KvbenchError(f"{origin}: compress_rates has no rate for {', '.join(sorted(missing))}")
    return types


def _indexer_layers(cfg: dict[str, Any], n: int) -> tuple[int, ...]:
    """Layers that run (and cache keys for) their own indexer: transformers'
    ``indexer_types`` "full" entries when the config lists them, else every layer."""
    types = cfg.get("indexer_types")
    return tuple(i for i, t in enumerate(types) if t == "full") if types else tuple(range(n))


def _compressed(cfg: dict[str, Any], types: tuple[str, ...], state: bool) -> list[KVComponent]:
    """DeepSeek-V4's hybrid attention (transformers' DeepseekV4Attention and its CSA / HCA
    caches): every layer keeps a sliding window of K=V entries (one KV head, shared by K and
    V); CSA layers add one compressed entry per m tokens and a lightning indexer key per m
    tokens; HCA layers one compressed entry per m' tokens. ``state``: the compressors'
    fixed fp32 buffers (kv_state and score_state, [coff x m, coff x d] each, coff = 2 on the
    overlapping CSA path, 1 on HCA)."""
    d, di, kv = int(cfg["head_dim"]), int(cfg["index_head_dim"]), int(cfg["num_key_value_heads"])
    m, m2 = (int(cfg["compress_rates"].get(t, 0)) for t in (CSA, HCA))
    csa = tuple(i for i, t in enumerate(types) if t == CSA)
    hca = tuple(i for i, t in enumerate(types) if t == HCA)
    comps = [
        KVComponent("window", d, kv, tuple(range(len(types))), max_entries=int(cfg["sliding_window"]),
                    description="K=V entries of the last sliding_window tokens (every layer)"),
        KVComponent("csa_entries", d, kv, csa, tokens_per_entry=m,
                    description="CSA: one compressed K=V entry per compress_rates[CSA] tokens"),
        KVComponent("csa_indexer_keys", di, 1, csa, tokens_per_entry=m,
                    description="CSA's lightning indexer: one compressed key per m tokens"),
        KVComponent("hca_entries", d, kv, hca, tokens_per_entry=m2,
                    description="HCA: one compressed K=V entry per compress_rates[HCA] tokens"),
    ]
    if state:
        comps += [
            KVComponent("csa_compressor_state", 2 * d, 1, csa, max_entries=2 * 2 * m, constant=True,
                        fixed="fp32", description="CSA compressor: kv_state + score_state, [2m, 2d] fp32 each"),
            KVComponent("csa_indexer_state", 2 * di, 1, csa, max_entries=2 * 2 * m, constant=True,
                        fixed="fp32",
                        description="indexer compressor: kv_state + score_state, [2m, 2 x index_head_dim] fp32"),
            KVComponent("hca_compressor_state", d, 1, hca, max_entries=2 * m2, constant=True,
                        fixed="fp32", description="HCA compressor: kv_state + score_state, [m', d] fp32 each"),
        ]
    return comps


def build_components(attention_type: str, cfg: dict[str, Any], layer_types: tuple[str, ...],
                     shipped: dict[str, str] | None = None,
                     compressor_state: bool = False) -> tuple[KVComponent, ...]:
    """The KV components of a model, the primary one (whose vectors pages hold) first.
    ``shipped``: component name -> the format or layout the model ships it in."""
    n = int(cfg["num_hidden_layers"])
    every = tuple(range(n))
    if attention_type in ("mha", "gqa"):
        heads = int(cfg["num_attention_heads" if attention_type == "mha" else "num_key_value_heads"])
        comps = [KVComponent("kv", int(cfg["head_dim"]), 2 * heads, every,
                             description="K and V of every KV head")]
    elif attention_type == "mla":
        comps = [KVComponent("latent", int(cfg["kv_lora_rank"]) + int(cfg["qk_rope_head_dim"]), 1, every,
                             description="MLA: kv_lora_rank latent + qk_rope_head_dim RoPE key, one per token")]
        if "index_head_dim" in cfg:  # DeepSeek Sparse Attention's lightning indexer
            comps.append(KVComponent("indexer_keys", int(cfg["index_head_dim"]), 1, _indexer_layers(cfg, n),
                                     description="DSA lightning indexer: one index_head_dim key per token"))
    elif attention_type == "hybrid_sliding":
        kv, hd = 2 * int(cfg["num_key_value_heads"]), int(cfg["head_dim"])
        full = tuple(i for i, t in enumerate(layer_types) if t == "full_attention")
        window = tuple(i for i, t in enumerate(layer_types) if t != "full_attention")
        comps = [KVComponent("kv", hd, kv, full, description="K and V, full-attention layers"),
                 KVComponent("kv_window", hd, kv, window, max_entries=int(cfg["sliding_window"]),
                             description="K and V of the last sliding_window tokens")]
    elif attention_type == "hybrid_compressed":
        comps = _compressed(cfg, layer_types, compressor_state)
    else:
        raise KvbenchError(f"attention_type {attention_type!r} has no KV components")
    shipped = shipped or {}
    unknown = sorted(set(shipped) - {c.name for c in comps})
    if unknown:
        raise KvbenchError(f"shipped_formats names {unknown}, not components "
                           f"({', '.join(c.name for c in comps)})")
    return tuple(replace(c, shipped=shipped.get(c.name, "")) for c in comps if c.layers)
