"""Ahead-of-time compile of every Triton kernel kvbench launches, for the GPUs it runs on.

Triton's interpreter (the CPU CI) accepts programs that the compiler rejects or that
cannot launch (too much shared memory, a layout the backend cannot lower). This test
compiles, on a machine without a GPU, each ``@triton.jit`` kernel that kernels/*.py
launch, with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``,
through PTX and ptxas to a cubin (Triton bundles ptxas), and checks what came out.

The variants are not written down here: the test calls the real host code
(``kvbench.attention.prepare_fused`` / ``decode_unfused``, ``quantize_to_pages``,
``dequantize_pages``, ``page_copy``) on CPU tensors with the kernels swapped for
recorders, and turns every recorded launch into the signature, constexprs and options
Triton's JIT would build for it (``jit_type``: tensors -> ``*dtype``, ints -> i32/i64,
an int equal to 1 -> constexpr 1, 16-aligned pointers and multiples of 16 -> the
divisibility attribute, as ``triton.runtime.jit.native_specialize_impl`` does). So a new
constexpr or a changed launch in the host code is followed without editing this file.

Matrix (sm_90 = H100/H200; sm_100 = B200 where cheap), about 220 variants:

* ``_paged_decode_kernel``: the default shape, Llama-3.1-8B (8 KV heads, head_dim 128,
  32 query heads) at 16 tokens/page: every format x every ``tile_choices(16)`` tile x
  2 splits, plus 1 split (``num_splits`` is then a constexpr to the JIT) on the default
  tile, plus the unfused path (bf16 after ``dequantize_pages``). gpt-oss-120b (head_dim
  64, 64 query heads) at 16 tokens/page: every format on the default tile, every tile
  for nvfp4. The transfer benchmark's quick page-size sweep, 64, 256 and 1024 tokens/page
  (the kernel reads a large page in tiles of at most 64 rows): every format for Llama
  on the default tile and every tile for nvfp4, bf16 for gpt-oss. Sizes the host
  refuses before launching (``check_shape``) are printed and recorded as not launched.
  sm_100: every format, default shape and tile.
* ``_merge_kernel``: split counts 1, 2, 4 .. MAX_SPLITS (SP = 2..64), head_dim 128, 64.
* quant kernels: Llama, every format, native converts (the GPU default) x input
  fp16/bf16/fp32 and output fp32/fp16/bf16, integer-exact converts (``native_cvt=False``)
  with fp16; fp16 with layout "block" (layer 1), gpt-oss and DeepSeek-V3 (MLA: one
  576-element latent). sm_100: Llama, native, fp16.
* ``_page_copy_kernel``: 8/4/2/1-byte words (the word size follows the page size),
  int64 and int32 page ids.

Integer arguments are specialised from the values of these representative launches
(64-page block tables, 2 sequences); other values can give other integer
specialisations, which are not enumerated. Checks: every variant compiles; shared
memory <= 227 KiB (the per-block limit of compute capability 9.0 and 10.0, CUDA C++
Programming Guide, "Technical Specifications per Compute Capability"; a kernel above it
raises OutOfResources at launch); spill stores <= SPILL_LIMIT; the decode kernel uses
tensor-core MMA for every format; the native-convert fp8/nvfp4 paths contain the
hardware e4m3 converts and the integer-exact paths none.

Compiles run in a subprocess (this file run as a script) without TRITON_INTERPRET, in
a process pool, with a fresh Triton cache so ptxas's ``-v`` report is produced. When
shared memory is already over the limit after the LLVM stage, PTX and ptxas are not run
(the variant fails anyway; that saves minutes per variant).

.ci/run runs this file twice: with the newest Triton (in the README's test command) and
with Triton 3.6.0, the GPU machine's, from a venv (``--system-site-packages`` plus
``triton==3.6.0``). ``KVBENCH_COMPILE_REPORT=path`` writes every record (shared
memory, registers, spills, MMA and convert instructions, seconds per stage) as JSON;
``-s`` prints a table. Without Triton's NVIDIA backend or ptxas the compile tests skip
with the reason, unless ``KVBENCH_REQUIRE_COMPILE=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

#: every @triton.jit kernel that kvbench launches (``name[grid](...)``), per module of
#: kernels/; device helpers called from kernels are not launched and not listed
LAUNCHED = {
    "quant": ("_quant16_kernel", "_dequant16_kernel", "_quant_fp8_kernel",
              "_dequant_fp8_kernel", "_quant_fp4_kernel", "_dequant_fp4_kernel"),
    "gather": ("_page_copy_kernel",),
    "paged_attention": ("_paged_decode_kernel", "_merge_kernel"),
}
TARGETS = (90, 100)
#: max shared memory per thread block, bytes: 227 KiB on compute capability 9.0 and
#: 10.0 (CUDA C++ Programming Guide, technical specifications per compute capability)
SMEM_LIMIT = {90: 227 * 1024, 100: 227 * 1024}
#: spill stores per thread, bytes, above which a variant fails: 1 KiB is a whole
#: thread's register file (255 x 4 B). Spilling that much means ptxas moved entire
#: tiles to local memory, so the kernel's traffic is its spills rather than the KV it
#: reads and a benchmark would time the spill; a few spilled registers cost little and
#: are only reported.
SPILL_LIMIT = 1024
#: PTX instructions that run on tensor cores
MMA_RE = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync|tcgen05\.mma)[\w.]*")
#: PTX converts to or from the 8- and 4-bit float types (hardware converts, sm_89+)
CVT_RE = re.compile(r"\bcvt(?:\.\w+)*\.(?:e4m3|e5m2|e2m1|ue8m0)x?\d?(?:\.\w+)*")

#: tokens per page: the default, and the decode kernel at the points of the transfer
#: benchmark's quick page-size sweep (kvbench/bench/transfer/common.py SWEEP_TOKENS_QUICK);
#: sizes the host refuses (check_shape) are reported, not compiled
SMALL_PAGE = 16
PAGE_SWEEP = (64, 256, 1024)
#: gpt-oss's formats at the PAGE_SWEEP sizes (Llama: every format): bf16, the kernel of
#: every format's unfused path
PAGE_SWEEP_FORMATS = ("bf16",)
#: outside the default shape, every tile is compiled for this format (the heaviest
#: load path: FP4 codes, e4m3 block scales and a per-tensor scale), the default tile for
#: every format
TILE_SWEEP_FORMAT = "nvfp4"


# ============================================================ the JIT's specialisation
_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
           "uint8": "u8", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
           "bool": "i1", "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5"}


def jit_type(value: Any) -> tuple[str, bool]:
    """(Triton signature type, 16-divisible) of a runtime argument, as Triton's JIT
    specialises it: tensors (anything with data_ptr and dtype) -> ``*dtype`` and
    pointer % 16; ints -> ``constexpr`` when 1, else i32 / i64 / u64 by range and
    value % 16; floats -> fp32; bools -> u1."""
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return "*" + _DTYPES[str(value.dtype).removeprefix("torch.")], value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        kind = "i32" if -2**31 <= value < 2**31 else "i64" if -2**63 <= value < 2**63 else "u64"
        return kind, value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    if value is None:
        return "constexpr", False
    raise TypeError(f"no Triton type for {type(value).__name__}")


# ============================================================ capturing the launches
def _params(kernel: Any) -> list[tuple[str, bool]]:
    """(name, is_constexpr) of a @triton.jit kernel's parameters (JIT or interpreted)."""
    import inspect

    raw = getattr(kernel, "fn", kernel)
    out = []
    for p in inspect.signature(raw).parameters.values():
        ann = p.annotation
        const = ann is not inspect.Parameter.empty and "constexpr" in (
            ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann)))
        out.append((p.name, const))
    return out


class _Recorder:
    """Stands in for a kernel: ``rec[grid](*args, **kw)`` records the launch."""

    def __init__(self, module: str, name: str, kernel: Any, sink: list) -> None:
        self.module, self.name, self.kernel, self.sink = module, name, kernel, sink
        self.case: dict[str, Any] = {}

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(_variant(self, args, kwargs))
        return launch


def _variant(rec: _Recorder, args: tuple, kwargs: dict) -> dict[str, Any]:
    params = _params(rec.kernel)
    names = [n for n, _ in params]
    bound = dict(zip(names, args))
    options = {}
    for k, v in kwargs.items():
        if k in names:
            bound[k] = v
        else:
            options[k] = v  # num_warps, num_stages, ...
    missing = [n for n in names if n not in bound]
    if missing:
        raise TypeError(f"{rec.name}: launch without {missing}")
    signature, constexprs, divisible = {}, {}, []
    for i, (name, const) in enumerate(params):
        v = bound[name]
        if const:
            signature[name] = "constexpr"
            constexprs[name] = v
            continue
        kind, div = jit_type(v)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = v
        elif div:
            divisible.append(i)
    return {"module": rec.module, "kernel": rec.name, "signature": signature,
            "constexprs": constexprs, "divisible": divisible, "options": options,
            "declared": [n for n, const in params if const], "case": dict(rec.case)}


@contextlib.contextmanager
def capturing(sink: list):
    """Swap every launched kernel for a recorder and make the host code build the
    arguments of compiled CUDA (not the interpreter's); yields the recorders."""
    from kvbench.kernels_loader import load_kernels

    saved = []
    recs = {}
    try:
        for mod_name, kernels in LAUNCHED.items():
            mod = load_kernels(mod_name)
            for name in kernels:
                saved.append((mod, name, getattr(mod, name)))
                recs[name] = _Recorder(mod_name, name, getattr(mod, name), sink)
                setattr(mod, name, recs[name])
            if hasattr(mod, "interpreting"):
                saved.append((mod, "interpreting", mod.interpreting))
                mod.interpreting = lambda: False
        yield recs
    finally:
        for mod, name, obj in reversed(saved):
            setattr(mod, name, obj)


def _tag(recs: dict, **case: Any) -> None:
    for r in recs.values():
        r.case = case


def _decode_inputs(model, fmt: str, tokens: int, batch: int = 2, pages: int = 64):
    import torch

    from kvbench.attention import q_dtype
    from kvbench.formats.paged import unit_side
    from kvbench.spec import PageSpec, get_format

    spec = PageSpec(model, get_format(fmt), tokens, "layer")
    stride = -(-spec.page_bytes // 256) * 256
    pool = torch.zeros(2, stride, dtype=torch.uint8)
    q = torch.zeros(batch, model.num_attention_heads, model.head_dim, dtype=q_dtype(fmt))
    table = torch.zeros(batch, pages, dtype=torch.int32)
    lens = torch.full((batch,), pages * tokens - 5, dtype=torch.int32)
    return spec, q, pool, table, lens, unit_side(model, fmt)


def _decode_launches(recs, models, refused: list) -> None:
    from kvbench.attention import decode_unfused, prepare_fused
    from kvbench.errors import KvbenchError
    from kvbench.kernels_loader import load_kernels
    from kvbench.spec import FORMATS

    pa = load_kernels("paged_attention")
    llama = models["Llama-3.1-8B"]
    for mname in ("Llama-3.1-8B", "gpt-oss-120b"):
        m = models[mname]
        for tokens in (SMALL_PAGE, *PAGE_SWEEP):
            fmts = FORMATS if tokens == SMALL_PAGE or m is llama else PAGE_SWEEP_FORMATS
            for fmt in fmts:
                spec, q, pool, table, lens, side = _decode_inputs(m, fmt, tokens)
                for tile in pa.tile_choices(tokens):
                    default = m is llama and tokens == SMALL_PAGE and tile == pa.DEFAULT_TILE
                    outside = m is not llama or tokens != SMALL_PAGE
                    if outside and tile != pa.DEFAULT_TILE and fmt != TILE_SWEEP_FORMAT:
                        continue  # outside the default shape: every tile for one format
                    for s in (1, 2) if default else (2,):
                        name = f"{tile.tile_tokens}t{tile.num_warps}w{tile.num_stages}s"
                        case = dict(model=mname, tokens=tokens, format=fmt, splits=s,
                                    tile=name)
                        _tag(recs, **case, targets=list(TARGETS) if default and s == 2 else [90])
                        try:
                            prepare_fused(q, pool, table, lens, spec, 0, side, tile=tile,
                                          num_splits=s)()
                        except (ValueError, KvbenchError) as exc:
                            # the host refuses the shape before any launch: nothing to
                            # compile, and nothing that can reach a GPU
                            refused.append({"kernel": "_paged_decode_kernel", **case,
                                            "reason": str(exc)})
    # the unfused path: dequantize to bf16, then bf16 attention over the copy
    for fmt in ("fp8_e4m3", "nvfp4"):
        spec, q, pool, table, lens, side = _decode_inputs(llama, fmt, SMALL_PAGE, pages=8)
        _tag(recs, model=llama.name, tokens=SMALL_PAGE, format=fmt, path="unfused",
             splits=2, targets=[90])
        decode_unfused(q, pool, table, lens, spec, 0, side, num_splits=2)


def _merge_launches(recs, models, sink) -> None:
    from kvbench.attention import prepare_fused
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    for mname in ("Llama-3.1-8B", "gpt-oss-120b"):
        spec, q, pool, table, lens, side = _decode_inputs(models[mname], "bf16", SMALL_PAGE)
        s = 1
        while s <= pa.MAX_SPLITS:
            _tag(recs, model=mname, splits=s, targets=list(TARGETS) if s == 2 else [90])
            start = len(sink)
            prepare_fused(q, pool, table, lens, spec, 0, side, num_splits=s)()
            # keep the merge launch; the decode variants of this sweep differ from the
            # ones above only in integer specialisation
            sink[start:] = [v for v in sink[start:] if v["kernel"] == "_merge_kernel"]
            s *= 2


def _quant_launches(recs, models) -> None:
    import torch

    from kvbench.formats.paged import unit_side
    from kvbench.kernels_loader import load_kernels
    from kvbench.spec import FORMATS, PageSpec, get_format

    Q = load_kernels("quant")
    f16 = (torch.float16,)
    every = (torch.float16, torch.bfloat16, torch.float32)
    # (model, layout, layer, [(native converts, input dtypes, output dtypes)]): the GPU
    # default (native) with every dtype on the default shape; the integer-exact converts
    # (native_cvt=False, pre-sm_89 GPUs) and the other shapes with fp16
    plans = [("Llama-3.1-8B", "layer", 0, [(True, every, every), (False, f16, f16)]),
             ("Llama-3.1-8B", "block", 1, [(True, f16, f16)]),
             ("gpt-oss-120b", "layer", 0, [(True, f16, f16)]),
             ("DeepSeek-V3", "layer", 0, [(True, f16, f16)])]
    for mname, layout, layer, runs in plans:
        m = models[mname]
        for fmt in FORMATS:
            spec = PageSpec(m, get_format(fmt), SMALL_PAGE, layout)
            stride = -(-spec.page_bytes // 256) * 256
            pool = torch.zeros(4, stride, dtype=torch.uint8)
            side = unit_side(m, fmt)
            n = SMALL_PAGE
            ids = torch.arange(n) % 4
            slots = torch.arange(n)
            table = torch.tensor([[0, 3], [2, 1]])
            for native, ins, outs in runs:
                base = dict(model=mname, format=fmt, layout=layout, native=native)
                both = mname == "Llama-3.1-8B" and layout == "layer" and native
                for dt in ins:
                    _tag(recs, **base, input=str(dt).removeprefix("torch."),
                         targets=list(TARGETS) if both and dt == torch.float16 else [90])
                    k = torch.zeros(n, m.kv_heads, m.head_dim, dtype=dt)
                    v = None if m.kv_factor == 1 else torch.zeros_like(k)
                    Q.quantize_to_pages(k, v, pool, ids, slots, spec, side, layer=layer,
                                        check=False, native_cvt=native)
                for dt in outs:
                    _tag(recs, **base, output=str(dt).removeprefix("torch."),
                         targets=list(TARGETS) if both and dt == torch.float16 else [90])
                    Q.dequantize_pages(pool, table, spec, side, layer=layer, dtype=dt,
                                       check=False, native_cvt=native)


def _gather_launches(recs) -> None:
    import torch

    from kvbench.kernels_loader import load_kernels

    g = load_kernels("gather")
    # page sizes whose widest dividing word is 8, 4, 2 and 1 bytes
    for page_bytes in (65536, 65540, 65538, 65537):
        src = torch.zeros(4, page_bytes, dtype=torch.uint8)
        dst = torch.zeros(4, page_bytes, dtype=torch.uint8)
        for idt in (torch.int64, torch.int32):
            ids = torch.tensor([2, 0, 3], dtype=idt)
            _tag(recs, page_bytes=page_bytes, ids=str(idt).removeprefix("torch."),
                 targets=list(TARGETS) if page_bytes == 65536 and idt == torch.int64 else [90])
            g.page_copy(src, dst, ids, ids, page_bytes)


def build_matrix() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every distinct (kernel, target, signature, constexprs, options) the launch sites
    produce for the shapes above (``cases``: the host calls that produced each), and
    the host calls that refused their shape before launching anything."""
    from kvbench.spec import load_model

    models = {n: load_model(n) for n in ("Llama-3.1-8B", "gpt-oss-120b", "DeepSeek-V3")}
    sink: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    with capturing(sink) as recs:
        _decode_launches(recs, models, refused)
        _merge_launches(recs, models, sink)
        _quant_launches(recs, models)
        _gather_launches(recs)
    out: dict[str, dict[str, Any]] = {}
    for v in sink:
        targets = v["case"].pop("targets")
        for arch in targets:
            key = json.dumps([v["kernel"], arch, v["signature"], v["constexprs"],
                              v["divisible"], v["options"]], sort_keys=True)
            if key not in out:
                out[key] = {**v, "arch": arch, "cases": []}
                del out[key]["case"]
            out[key]["cases"].append(v["case"])
    variants = list(out.values())
    for i, v in enumerate(variants):
        v["id"] = i
    return variants, refused


# ============================================================ compiling (subprocess)
class SharedMemoryExceeded(Exception):
    pass


_STAGE_SECS: dict[str, float] = {}


def _install_stage_hook() -> bool:
    """Time each compile stage, and stop before PTX when shared memory (known after
    the LLVM stage) is over the target's limit. Wraps the CUDA backend's add_stages
    (the same signature in Triton 3.6 and 3.9); without it compiles run in full."""
    try:
        from triton.backends.nvidia import compiler as nv

        orig = nv.CUDABackend.add_stages
    except (ImportError, AttributeError):
        return False

    def add_stages(self, stages, options, *rest, **kw):
        orig(self, stages, options, *rest, **kw)
        limit = SMEM_LIMIT.get(self.target.arch)
        for name, fn in list(stages.items()):
            def timed(src, metadata, fn=fn, name=name):
                if name == "ptx" and limit and metadata.get("shared", 0) > limit:
                    raise SharedMemoryExceeded(
                        f"out of resource: shared memory, Required: {metadata['shared']}, "
                        f"Hardware limit: {limit} (PTX and cubin not built)")
                t = time.perf_counter()
                try:
                    return fn(src, metadata)
                finally:
                    _STAGE_SECS[name] = round(time.perf_counter() - t, 2)
            stages[name] = timed
    nv.CUDABackend.add_stages = add_stages
    return True


def _ptxas_facts(log: str) -> dict[str, int]:
    out = {}
    for key, pat in (("registers", r"Used (\d+) registers"),
                     ("stack_bytes", r"(\d+) bytes stack frame"),
                     ("spill_stores", r"(\d+) bytes spill stores"),
                     ("spill_loads", r"(\d+) bytes spill loads")):
        m = re.search(pat, log)
        if m:
            out[key] = int(m.group(1))
    return out


def _ptxas_log(ptx: str, arch: int) -> str:
    """Fallback when Triton did not print ptxas's report: run its ptxas -v ourselves."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a", str(src),
                            "-o", str(Path(d) / "k.cubin")], capture_output=True, text=True)
        return r.stdout + r.stderr


def _compile_one(v: dict[str, Any]) -> dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kvbench.kernels_loader import load_kernels

    rec: dict[str, Any] = {k: v[k] for k in ("id", "kernel", "arch")}
    fn = getattr(load_kernels(v["module"]), v["kernel"])
    src = ASTSource(fn=fn, signature=v["signature"], constexprs=v["constexprs"],
                    attrs={(i,): [["tt.divisibility", 16]] for i in v["divisible"]})
    _STAGE_SECS.clear()
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf):
            k = triton.compile(src, target=GPUTarget("cuda", v["arch"], 32), options=v["options"])
    except SharedMemoryExceeded as exc:
        shared = int(re.search(r"Required: (\d+)", str(exc)).group(1))
        rec.update(ok=False, error=str(exc), shared=shared)
    except Exception as exc:  # noqa: BLE001 - every compiler error is a finding
        rec.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:3000]}")
    else:
        ptx = k.asm["ptx"]
        log = buf.getvalue()
        facts = _ptxas_facts(log)
        if "registers" not in facts:
            facts = _ptxas_facts(_ptxas_log(ptx, v["arch"]))
        rec.update(ok=True, shared=int(k.metadata.shared), **facts,
                   mma=sorted(set(MMA_RE.findall(ptx))), cvt=sorted(set(CVT_RE.findall(ptx))),
                   cubin_bytes=len(k.asm["cubin"]))
    rec["secs"] = round(time.perf_counter() - t0, 2)
    rec["stage_secs"] = dict(_STAGE_SECS)
    return rec


def _probe() -> str | None:
    """None when this Triton can compile for sm_90 here, else why not."""
    try:
        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        @triton.jit
        def _copy(x, y, BLOCK: tl.constexpr):
            o = tl.arange(0, BLOCK)
            tl.store(y + o, tl.load(x + o))

        k = triton.compile(ASTSource(fn=_copy, signature={"x": "*fp32", "y": "*fp32",
                                                          "BLOCK": "constexpr"},
                                     constexprs={"BLOCK": 128}),
                           target=GPUTarget("cuda", 90, 32))
        if not k.asm.get("cubin"):
            return "triton.compile produced no cubin"
    except Exception as exc:  # noqa: BLE001
        return f"Triton cannot compile for sm_90 here: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def _worker_init() -> None:
    sys.path.insert(0, str(REPO))
    _install_stage_hook()


def worker_main(inp: str, outp: str) -> int:
    """Compile the variants in ``inp`` (JSON) in a process pool; write records to outp."""
    import concurrent.futures as cf
    import multiprocessing as mp

    sys.path.insert(0, str(REPO))
    env: dict[str, Any] = {"python": sys.version.split()[0]}
    why = _probe()
    if why:
        Path(outp).write_text(json.dumps({"unavailable": why}))
        return 0
    import triton
    from triton.backends.nvidia.compiler import get_ptxas, get_ptxas_version

    env["triton"] = triton.__version__
    for arch in TARGETS:
        try:
            env[f"ptxas_sm{arch}"] = {"path": get_ptxas(arch).path,
                                      "version": get_ptxas_version(arch).strip().splitlines()[-1]}
        except Exception as exc:  # noqa: BLE001
            env[f"ptxas_sm{arch}"] = f"unknown: {exc}"
    variants = json.loads(Path(inp).read_text())
    # longest first (rows x head_dim of the decode tile), so the pool ends together
    def cost(v):
        c = v["constexprs"]
        return (c.get("TILE", 1) * c.get("D", 1), v["kernel"])
    order = sorted(variants, key=cost, reverse=True)
    jobs = max(1, min(len(order), os.cpu_count() or 1))
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                initializer=_worker_init) as ex:
        records = list(ex.map(_compile_one, order))
    env["wall_secs"] = round(time.perf_counter() - t0, 1)
    env["jobs"] = jobs
    Path(outp).write_text(json.dumps({"env": env, "records": records}))
    return 0


def run_compiles(variants: list[dict[str, Any]], workdir: Path, timeout: float = 1800) -> dict:
    """Run this file as a compile worker in a clean environment (no TRITON_INTERPRET,
    a fresh Triton cache, ptxas's report on)."""
    inp, outp = workdir / "variants.json", workdir / "records.json"
    inp.write_text(json.dumps(variants))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(TRITON_CACHE_DIR=str(workdir / "triton-cache"), TRITON_DUMP_PTXAS_LOG="1",
               PYTHONPATH=path)
    r = subprocess.run([sys.executable, __file__, "--compile", str(inp), str(outp)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not outp.exists():
        raise RuntimeError(f"compile worker failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(outp.read_text())


# ============================================================ report
def _label(v: dict[str, Any]) -> str:
    """Short name of a variant: its constexprs, options and integer specialisation
    (``=1:`` ints the JIT made constexpr 1; ``odd:`` ints that are no multiple of 16)."""
    c = dict(v["constexprs"])
    sig = list(v["signature"].items())
    ones = [n for n, t in sig if t == "constexpr" and n not in v["declared"]]
    odd = [n for i, (n, t) in enumerate(sig) if t in ("i32", "i64", "u64")
           and i not in v["divisible"]]
    spec = (f" =1:{','.join(ones)}" if ones else "") + (f" odd:{','.join(odd)}" if odd else "")
    for n in ones:
        c.pop(n)
    opts = v["options"]
    w = f" {opts.get('num_warps', 4)}w{opts.get('num_stages', 3)}s" if opts else ""
    if v["kernel"] == "_paged_decode_kernel":
        fmt = "/".join(sorted({x.get("format") for x in v["cases"]}))
        path = " unfused" if any(x.get("path") for x in v["cases"]) else ""
        return f"T{c['T']} D{c['D']} G{c['G']} {fmt}{path} tile{c['TILE']}{w}{spec}"
    keys = " ".join(f"{n}={int(x) if isinstance(x, bool) else x}" for n, x in c.items())
    ptrs = ",".join(dict.fromkeys(t[1:] for t in v["signature"].values() if t.startswith("*")))
    return f"{keys} [{ptrs}]{w}{spec}"


def table(variants: list[dict[str, Any]], records: dict[int, dict[str, Any]]) -> str:
    rows = [("sm", "kernel", "variant", "smem", "regs", "spill st/ld", "mma", "cvt", "s")]
    for v in sorted(variants, key=lambda v: (v["arch"], v["kernel"], _label(v))):
        r = records[v["id"]]
        mma = ",".join(sorted({".".join(m.split(".")[:2]) for m in r.get("mma", [])})) or "-"
        cvt = ",".join(sorted({re.sub(r"^cvt\.(rn\.)?(satfinite\.)?", "", c)
                               for c in r.get("cvt", [])})) or "-"
        spill = (f"{r['spill_stores']}/{r['spill_loads']}" if "spill_stores" in r else "-")
        rows.append((str(v["arch"]), v["kernel"].strip("_"), _label(v),
                     str(r.get("shared", "-")), str(r.get("registers", "-")), spill,
                     mma, cvt if r.get("ok") else "FAIL", f"{r['secs']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows)


# ============================================================ tests
def _kernel_sources() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted((REPO / "kernels").glob("*.py"))}


def _is_jit(dec: ast.expr) -> bool:
    d = dec.func if isinstance(dec, ast.Call) else dec
    return (isinstance(d, ast.Attribute) and d.attr == "jit") or (
        isinstance(d, ast.Name) and d.id == "jit")


def jit_functions() -> dict[str, set[str]]:
    """@triton.jit functions per module of kernels/."""
    return {mod: {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  and any(_is_jit(d) for d in n.decorator_list)}
            for mod, tree in _kernel_sources().items()}


def launched_kernels() -> dict[str, set[str]]:
    """@triton.jit functions of each module of kernels/ that appear launched,
    ``name[grid](...)`` (or ``module.name[grid](...)``), anywhere in kernels/,
    kvbench/ or scripts/."""
    jit = jit_functions()
    owner = {name: mod for mod, names in jit.items() for name in names}
    files = [p for d in ("kernels", "kvbench", "scripts")
             for p in sorted((REPO / d).rglob("*.py"))]
    found: dict[str, set[str]] = {}
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript):
                f = n.func.value
                name = (f.id if isinstance(f, ast.Name)
                        else f.attr if isinstance(f, ast.Attribute) else None)
                if name in owner:
                    found.setdefault(owner[name], set()).add(name)
    return found


def test_every_launched_kernel_is_compiled():
    """Coverage: each kernel launched as ``name[grid](...)`` is in LAUNCHED (so the
    compile test captures and compiles it), and LAUNCHED names only existing kernels."""
    launched = launched_kernels()
    listed = {m: set(k) for m, k in LAUNCHED.items()}
    missing = {m: sorted(k - listed.get(m, set())) for m, k in launched.items()
               if k - listed.get(m, set())}
    assert not missing, f"launched kernels the compile test does not know: {missing}"
    jit = jit_functions()
    stale = {m: sorted(k - jit.get(m, set())) for m, k in listed.items() if k - jit.get(m, set())}
    assert not stale, f"LAUNCHED names kernels that no longer exist: {stale}"
    unlaunched = {m: sorted(k - launched.get(m, set())) for m, k in listed.items()
                  if k - launched.get(m, set())}
    assert not unlaunched, f"LAUNCHED names kernels nothing launches: {unlaunched}"


def test_coverage_check_finds_launches(tmp_path):
    """The AST pattern sees a launch through a module attribute and ignores helpers."""
    src = ("import triton\n@triton.jit\ndef helper(x):\n    return x\n"
           "@triton.jit\ndef _k(x):\n    helper(x)\n"
           "def host(m):\n    m._k[(1,)](0)\n")
    tree = ast.parse(src)
    calls = [n for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)]
    assert [c.func.value.attr for c in calls] == ["_k"]
    assert {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and any(_is_jit(d) for d in n.decorator_list)} == {"helper", "_k"}


def _require(why: str) -> None:
    if os.environ.get("KVBENCH_REQUIRE_COMPILE", "") not in ("", "0"):
        pytest.fail(f"KVBENCH_REQUIRE_COMPILE is set but: {why}")
    pytest.skip(why)


def test_signature_rules_match_triton():
    """jit_type agrees with the JIT's own specialisation where Triton exposes it."""
    import torch

    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend
    except ImportError as exc:
        _require(f"needs triton's NVIDIA backend: {exc}")
    try:
        from triton.runtime.jit import native_specialize_impl
    except ImportError as exc:
        pytest.skip(f"this Triton does not expose native_specialize_impl: {exc}")
    backend = CUDABackend(GPUTarget("cuda", 90, 32))
    t = torch.zeros(64, dtype=torch.bfloat16)
    for value in (t, t[1:], torch.zeros(8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64),
                  1, 0, 16, 7, -3, 2**31, 2**40 + 16, 0.5):
        try:  # (backend, arg, is_const, specialize_value, align) in Triton 3.6 and 3.9
            kind, div = native_specialize_impl(backend, value, False, True, True)
        except TypeError as exc:
            pytest.skip(f"this Triton's native_specialize_impl takes other arguments: {exc}")
        assert jit_type(value) == (kind, div == "D"), value


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        _require(f"triton is not installed: {exc}")
    variants, refused = build_matrix()
    t0 = time.perf_counter()
    out = run_compiles(variants, tmp_path_factory.mktemp("compile"))
    if "unavailable" in out:
        _require(out["unavailable"])
    out["env"]["total_secs"] = round(time.perf_counter() - t0, 1)
    records = {r["id"]: r for r in out["records"]}
    report = os.environ.get("KVBENCH_COMPILE_REPORT")
    if report:
        Path(report).write_text(json.dumps(
            {"env": out["env"], "smem_limit": SMEM_LIMIT, "spill_limit": SPILL_LIMIT,
             "variants": [{**v, "label": _label(v), **records[v["id"]]} for v in variants],
             "refused_by_host": refused},
            indent=1, default=str))
    print(f"\ncompiled {len(variants)} kernel variants with Triton {out['env']['triton']} in "
          f"{out['env']['total_secs']} s ({out['env']['jobs']} processes)")
    print(table(variants, records))
    for r in refused:
        print(f"not launched (the host refuses it): {r['kernel']} {r['model']} "
              f"{r['tokens']} tokens/page {r['format']}: {r['reason']}")
    return variants, records, out["env"]


def _of(compiled, kernel: str, arch: int):
    variants, records, _ = compiled
    return [(v, records[v["id"]]) for v in variants if v["kernel"] == kernel and v["arch"] == arch]


def _cases(v) -> str:
    return "; ".join(", ".join(f"{k}={x}" for k, x in c.items()) for c in v["cases"][:2])


ALL_KERNELS = [k for ks in LAUNCHED.values() for k in ks]


def test_matrix_covers_every_launched_kernel(compiled):
    variants, _, _ = compiled
    for arch in TARGETS:
        have = {v["kernel"] for v in variants if v["arch"] == arch}
        assert have == set(ALL_KERNELS), (arch, set(ALL_KERNELS) - have)


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_kernel_compiles_and_fits(compiled, kernel, arch):
    """Every captured variant compiles to a cubin, within the shared memory limit and
    without large spills."""
    bad = []
    for v, r in _of(compiled, kernel, arch):
        if not r["ok"]:
            why = r["error"][:600]
        elif r["shared"] > SMEM_LIMIT[arch]:
            why = f"shared memory {r['shared']} B > {SMEM_LIMIT[arch]} B"
        elif r.get("spill_stores", 0) > SPILL_LIMIT:
            why = (f"{r['spill_stores']} B spill stores per thread (> {SPILL_LIMIT}), "
                   f"{r['registers']} registers, {r.get('stack_bytes')} B stack")
        else:
            continue
        bad.append(f"{_label(v)} ({_cases(v)}): {why}")
    if bad:
        pytest.fail(f"{kernel} on sm_{arch}:\n" + "\n".join(bad), pytrace=False)


@pytest.mark.parametrize("arch", TARGETS)
def test_decode_runs_on_tensor_cores(compiled, arch):
    """Both products of the decode kernel (q.K^T, p.V) are MMA instructions, for every
    format (FP8/FP4 are dequantized to bf16 first)."""
    got = _of(compiled, "_paged_decode_kernel", arch)
    assert got
    scalar = [_label(v) for v, r in got if r["ok"] and not r["mma"]]
    assert not scalar, f"decode variants without MMA on sm_{arch}: {scalar}"


@pytest.mark.parametrize("arch", TARGETS)
def test_native_converts_are_hardware_converts(compiled, arch):
    """NATIVE=True fp8 (and the NVFP4 e4m3 block scale) use cvt to/from e4m3; the
    integer-exact paths (NATIVE=False, MXFP4's power-of-two scales) contain none."""
    checked = 0
    for kernel, want in (("_quant_fp8_kernel", "cvt.rn.satfinite.e4m3x2.f32"),
                         ("_quant_fp4_kernel", "cvt.rn.satfinite.e4m3x2.f32"),
                         ("_dequant_fp8_kernel", "cvt.rn.f16x2.e4m3x2")):
        for v, r in _of(compiled, kernel, arch):
            if not r["ok"]:
                continue  # reported by test_kernel_compiles_and_fits
            c = v["constexprs"]
            hw = c["NATIVE"] and not c.get("MX", False)
            assert (want in r["cvt"]) == hw, (kernel, _label(v), r["cvt"])
            if not hw:
                assert not r["cvt"], (kernel, _label(v), r["cvt"])
            checked += 1
    assert checked


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compile":
        sys.exit(worker_main(sys.argv[2], sys.argv[3]))
    sys.exit("usage: test_kernels_compile.py --compile VARIANTS.json RECORDS.json")
