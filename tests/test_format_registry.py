"""The KV format registry is what everything reads: each format declares its family,
value element, scale layout and the integer codes the Triton kernels branch on; the
codecs, the kernels' constexprs and the CLI's help come from those declarations, so a
new format of an existing family is one registry entry (here: formats registered by a
test, checked through the torch reference, the quant kernels and fused decode)."""

import pytest
import torch

from conftest import KERNEL_DEVICE, KERNEL_REL_TOL
from kvbench.errors import KvbenchError
from kvbench.formats import codecs as C
from kvbench.formats import paged
from kvbench.formats.layout import side_shape
from kvbench.spec import (ELEMENTS, FORMAT_FAMILIES, FORMATS, SCALE_DTYPES, KVFormat, PageSpec,
                          get_format, model_from_dict)

DEV = KERNEL_DEVICE
TINY = model_from_dict({
    "name": "tiny-gqa", "attention_type": "gqa", "source_url": "test", "retrieved": "2026-01-01",
    "config": {"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
               "head_dim": 32},
})

#: formats of existing families that the registry does not hold: MX scales per 16
#: elements, NVFP4's recipe per 32, and e4m3 with per-head scales under another name
NEW_OF_OLD_FAMILIES = (
    KVFormat("mxfp4_b16", "fp4_block", "e2m1", scale="block", block=16, scale_dtype="e8m0",
             description="test: e8m0 scale per 16 elements"),
    KVFormat("nvfp4_b32", "fp4_block", "e2m1", scale="block", block=32, scale_dtype="e4m3",
             tensor_scale_bytes=4, description="test: e4m3 scale per 32 elements"),
    KVFormat("e4m3_per_head", "fp8", "e4m3", scale="head", tensor_scale_bytes=4,
             description="test: fp8_e4m3_head under another name"),
)
NEW = [f.name for f in NEW_OF_OLD_FAMILIES]


@pytest.fixture
def registered(monkeypatch):
    """The test formats added to the registry (and removed after the test)."""
    for f in NEW_OF_OLD_FAMILIES:
        monkeypatch.setitem(FORMATS, f.name, f)
    return {f.name: f for f in NEW_OF_OLD_FAMILIES}


# ----------------------------------------------------------------- declarations
def test_codes_are_unique_and_every_format_declares_known_ones():
    for table in (ELEMENTS, SCALE_DTYPES):
        codes = [e.code for e in table.values()]
        assert len(set(codes)) == len(codes), table
    for f in FORMATS.values():
        assert f.family in FORMAT_FAMILIES
        assert ELEMENTS[f.element].code == f.value_code
        assert SCALE_DTYPES[f.scale_dtype].code == f.scale_code
        assert f.value_bits == ELEMENTS[f.element].bits
        assert f.scale_bytes == SCALE_DTYPES[f.scale_dtype].bits // 8


def test_the_registry_matches_the_cited_constants():
    assert FORMATS["nvfp4"].block == C.NVFP4_BLOCK and FORMATS["nvfp4"].scale_dtype == "e4m3"
    assert FORMATS["mxfp4"].block == C.MXFP4_BLOCK and FORMATS["mxfp4"].scale_dtype == "e8m0"
    assert FORMATS["fp8_e4m3_token_head"].scale_dtype == "fp32"
    assert {f.family for f in FORMATS.values()} == set(FORMAT_FAMILIES)


@pytest.mark.parametrize("kw,msg", [
    (dict(family="int4"), "unknown family"),
    (dict(element="e5m2"), "unknown element"),
    (dict(scale="block", block=16), "scale_dtype"),          # a block scale needs its dtype
    (dict(scale_dtype="e8m0"), "scale_dtype"),               # and only in-page scales have one
    (dict(scale="token_head", scale_dtype="fp32", block=4), "block"),
])
def test_inconsistent_declarations_are_refused(kw, msg):
    base = dict(name="bad", family="fp8", element="e4m3")
    with pytest.raises(KvbenchError, match=msg):
        KVFormat(**{**base, **kw})


def test_the_decode_kernel_reads_the_registry_codes():
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    for name, e in ELEMENTS.items():
        assert getattr(pa, f"VAL_{name.upper()}") == e.code
    for name, e in SCALE_DTYPES.items():
        assert getattr(pa, f"SCALE_{name.upper()}") == e.code
    for f in FORMATS.values():
        assert pa.format_constexprs(f.name) == {"VAL": f.value_code, "SCALE": f.scale_code,
                                                "SBLK": max(1, f.block)}


class _Record:
    """Stands in for a @triton.jit kernel: ``k[grid](*args, **kw)`` records kw."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append(kw)


def _pool(spec, layer=0):
    pool = torch.zeros(4, spec.page_bytes, dtype=torch.uint8)
    shape = side_shape(spec.model, spec.fmt)
    side = torch.ones(shape) if shape else None
    return pool, side


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_launches_carry_the_declared_attributes(fmt, monkeypatch):
    """What the host code hands the kernels for each format comes from its declaration."""
    from kvbench.attention import prepare_fused, q_dtype
    from kvbench.kernels_loader import load_kernels

    pa, Q = load_kernels("paged_attention"), load_kernels("quant")
    f = get_format(fmt)
    rec = {n: _Record() for n in ("_paged_decode_kernel", "_merge_kernel", "_quant16_kernel",
                                  "_quant_fp8_kernel", "_quant_fp4_kernel")}
    for n, r in rec.items():
        monkeypatch.setattr(pa if n in ("_paged_decode_kernel", "_merge_kernel") else Q, n, r)
    spec = PageSpec(TINY, f, 16, "layer")
    pool, side = _pool(spec)
    q = torch.zeros(1, 8, 32, dtype=q_dtype(fmt))
    prepare_fused(q, pool, torch.zeros(1, 1, dtype=torch.int32),
                  torch.ones(1, dtype=torch.int32), spec, 0, side)()
    kw = rec["_paged_decode_kernel"].calls[0]
    assert (kw["VAL"], kw["SCALE"], kw["SBLK"]) == (f.value_code, f.scale_code, max(1, f.block))
    assert kw["HEAD_SIDE"] == (f.scale == "head")
    k = torch.zeros(1, 2, 32)
    Q.quantize_to_pages(k, k, pool, torch.tensor([0]), torch.tensor([0]), spec, side)
    quant = {"float": "_quant16_kernel", "fp8": "_quant_fp8_kernel", "fp4_block": "_quant_fp4_kernel"}
    kw = rec[quant[f.family]].calls[0]
    if f.family == "float":
        assert kw["BF16"] == (f.element == "bf16")
    elif f.family == "fp8":
        assert kw["PER_TOKEN"] == (f.scale == "token_head")
        assert kw["SIDE_PER_HEAD"] == (1 if f.scale == "head" else 0)
    else:
        assert kw["BLK"] == f.block and kw["MX"] == (f.scale_dtype == "e8m0")


def test_a_layout_no_family_implements_is_refused_everywhere(monkeypatch):
    from kvbench.kernels_loader import load_kernels

    f = KVFormat("fp8_block16", "fp8", "e4m3", scale="block", block=16, scale_dtype="e4m3")
    monkeypatch.setitem(FORMATS, f.name, f)
    with pytest.raises(KvbenchError, match="no reference codec"):
        C.quantize(torch.randn(2, 2, 32), f.name)
    spec = PageSpec(TINY, f, 16, "layer")
    pool, _ = _pool(spec)
    with pytest.raises(KvbenchError, match="no reference codec"):
        load_kernels("quant").quantize_to_pages(torch.zeros(1, 2, 32), torch.zeros(1, 2, 32), pool,
                                                torch.tensor([0]), torch.tensor([0]), spec)
    with pytest.raises(KvbenchError, match="paged decode cannot read"):
        load_kernels("paged_attention").format_constexprs(f)


# ------------------------------------------- a new format of an existing family
@pytest.mark.parametrize("fmt", NEW)
def test_new_format_through_the_torch_reference(fmt, registered):
    f = registered[fmt]
    assert C.get_codec(fmt).fmt is f
    x = torch.randn(16, 2, 64, generator=torch.Generator().manual_seed(3))
    q = C.quantize(x, fmt)
    rel = float((C.dequantize(q) - x).norm() / x.norm())
    assert rel < (0.05 if f.family == "fp8" else 0.3)
    assert q.values.shape[-1] == f.value_bytes(64)
    if f.scale == "block":
        assert q.scales.shape[-1] == 64 // f.block
    assert C.quantize(C.dequantize(q), fmt, q.side).values.equal(q.values)  # idempotent
    # pages: a page and a pool, written and read back as the codec does
    spec = PageSpec(TINY, f, 4, "layer")
    k, v = torch.randn(2, 4, 2, 32).unbind(0)
    sd = paged.side_scales(k, v, f)
    page = paged.pack_page(k, v, spec, sd)
    assert page.numel() == spec.page_bytes
    got_k, _ = paged.unpack_page(page, spec, sd)
    assert torch.equal(got_k, C.roundtrip(k, fmt, None if sd is None else sd[0]))
    pool = torch.zeros(3, spec.page_bytes, dtype=torch.uint8)
    side = paged.unit_side(TINY, f)
    if side is not None:
        side[0] = sd
    paged.quantize_to_pages(k, v, pool, torch.full((4,), 2), torch.arange(4), spec, side)
    assert torch.equal(pool[2], page)
    dk, dv = paged.dequantize_pages(pool, torch.tensor([2]), spec, side, dtype=torch.float32)
    assert torch.equal(dk, got_k)


def _decode_inputs(f, seed=0):
    g = torch.Generator().manual_seed(seed)
    spec = PageSpec(TINY, f, 16, "layer")
    lens = (40, 17)
    table = torch.tensor([[5, 1, 3], [0, 4, 2]], dtype=torch.int32)
    pool = torch.zeros(6, spec.page_bytes, dtype=torch.uint8)
    n = sum(lens)
    k, v = torch.randn(2, n, 2, 32, generator=g).unbind(0)
    side = None
    if side_shape(TINY, f):
        side = torch.ones(side_shape(TINY, f))
        side[0] = paged.side_scales(k, v, f)
    pids = torch.cat([table[b].repeat_interleave(16)[:lens[b]] for b in range(2)])
    slots = torch.cat([torch.arange(m) % 16 for m in lens])
    return spec, k, v, pool, pids, slots, side, table, torch.tensor(lens, dtype=torch.int32)


@pytest.mark.parametrize("fmt", NEW)
def test_new_format_through_the_kernels(fmt, registered):
    """The quant kernels write the reference's bytes and decode (fused, and unfused
    through the dequantize kernel) reads them, with no kernel edit: the launches take
    the block size and scale codes from the declaration."""
    from kvbench.attention import decode_fused, decode_reference, decode_unfused, q_dtype
    from kvbench.kernels_loader import load_kernels

    Q = load_kernels("quant")
    spec, k, v, pool, pids, slots, side, table, lens = _decode_inputs(registered[fmt])
    ref = pool.clone()
    paged.quantize_to_pages(k, v, ref, pids, slots, spec, side)
    mv = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    pool, side = mv(pool), mv(side)
    Q.quantize_to_pages(mv(k), mv(v), pool, mv(pids), mv(slots), spec, side)
    assert torch.equal(pool.cpu(), ref)
    got = Q.dequantize_pages(pool, mv(table), spec, side, dtype=torch.float32)
    want = paged.dequantize_pages(ref, table, spec, None if side is None else side.cpu(),
                                  dtype=torch.float32)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    q = mv(torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1)).to(q_dtype(fmt)))
    expect = decode_reference(q, pool, mv(table), mv(lens), spec, 0, side).cpu()
    # unfused: dequantized to bf16 first, so bf16 rounding of K and V (as test_decode)
    for path, tol in ((decode_fused, KERNEL_REL_TOL), (decode_unfused, 2e-2)):
        out = path(q, pool, mv(table), mv(lens), spec, 0, side).cpu()
        rel = float((out - expect).norm() / expect.norm())
        assert rel < tol, (path.__name__, rel)


# ------------------------------------------------------------------ the CLI
def _format_help() -> str:
    from kvbench.cli import build_parser

    p = build_parser()
    run = next(a for a in p._subparsers._group_actions if a.choices).choices["run"]
    return next(a for a in run._actions if "--format" in a.option_strings).help


def test_cli_format_help_lists_every_registered_format(registered):
    text = _format_help()
    for name in FORMATS:  # including the ones this test registered
        assert name in text
    assert ", ".join(FORMATS) in text
