"""KV formats: how one stored element is encoded (pure arithmetic, no torch).

``KVFormat`` is one format's declaration: a family (which codec and kernel paths), a
value element and a scale layout; its bytes per vector include in-page scales. The
registry of formats by name, ``FORMATS``, lives in ``kvbench.spec`` (one entry per
format) and re-exports every name here; this module holds the encodings and the class
those entries are made of.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvbench.errors import KvbenchError

#: Format families: one reference codec (kvbench.formats.codecs) and one set of Triton
#: kernel paths (kernels/quant.py, kernels/paged_attention.py) per family. Within a
#: family, formats differ only in what they declare (element, scale layout), so a new
#: format of an existing family is one entry in ``kvbench.spec.FORMATS``.
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
