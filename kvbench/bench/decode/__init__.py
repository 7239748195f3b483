"""Decode benchmark: tokens/s when every step reads the whole live KV from a tier.

One decode step = attention of one query token per sequence over its whole context,
for every layer of the model (attention only: weights and MLP are not part of this
measurement, so the figures isolate KV reads). Placements:

``hbm``             all pages in device memory;
``dram_prefetch``   pages in pinned host memory, each layer's pages (contiguous per
                    layer) copied into an HBM staging ring on a copy stream while the
                    previous layer's attention runs;
``dram_zero_copy``  the kernel reads pinned host pages in place (unified addressing);
``nvme``            each layer's pages read with O_DIRECT threads into pinned staging
                    (cold: page cache dropped and checked before every step), then as
                    ``dram_prefetch``;
``hot_window``      the most recent W tokens of every sequence in HBM, the rest in
                    pinned DRAM, prefetched per layer.

Each case reports tokens/s (batch / step time), step time, achieved KV-read bandwidth
(KV bytes read per step / step time, GB = 1e9) and the roofline of its placement: KV
bytes per step over min(tier bandwidth, HBM bandwidth), both measured in the same run.
For quantized formats an ``unfused`` variant dequantizes the pages to bf16 with their
own kernel first; it reports the share of its step time that the dequantization takes.

Timing: every layer's launch is prepared once (arguments, workspace, output). hbm and
dram_zero_copy steps are captured in a CUDA graph and the replay is timed (device work
only); the same step issued from Python is timed too (``eager_step_s``) and the
difference is reported as ``launch_overhead_s``. The pipelined placements are timed
eagerly behind a GPU sleep that outlasts their host enqueue (checked per sample, see
``kvbench.timing.time_cuda(ahead=True)``). The decode kernel's tile (tokens per loop
step, warps, stages) is chosen per hbm case by timing each candidate on one layer;
the lower placements reuse the tile chosen for their format.
Without CUDA the dram and nvme placements run the torch reference on the CPU, labelled
as CPU reference numbers; hbm and GPU-only placements are skipped with the reason.

Layout of this package: ``common`` (key, options, case names), ``cache`` (the batch and
its pages: a ``kvbench.store.PagedKVStore`` over a ``PagePool`` of the placement's tier,
allocated layer-major), ``steps`` (prepared launches, autotune, CUDA graphs, roofline
copies), ``record`` (verification and the result case), ``hbm``, ``lower`` (the
placements below HBM) and ``cpu`` (the CPU reference and the kernel check). The parts
import one another, never another benchmark.
"""

from __future__ import annotations

from kvbench.bench import Benchmark, Case, Plot, RunContext
from kvbench.bench.decode import footprint as fp
from kvbench.bench.decode import plots
from kvbench.bench.decode.common import BENCH_KEY, PLACEMENTS, _budget, _hot_window, _nvme_threads, _tiles, shapes
from kvbench.bench.decode.cpu import cpu_reference_case, kernel_check_case
from kvbench.bench.decode.hbm import hbm_case
from kvbench.bench.decode.lower import prefetch_case, zero_copy_case
from kvbench.bench.decode.record import _finish, _relate, _tier_roofline
from kvbench.bench.decode.steps import ceiling_case
from kvbench.results import skipped_case
from kvbench.spec import get_format

#: what the registry reads (BENCH), and the parts the tests call directly
__all__ = ["BENCH", "BENCH_KEY", "PLACEMENTS", "plan", "shapes", "_finish", "_relate", "_tier_roofline"]


# ------------------------------------------------------------------------- plan
def plan(ctx: RunContext) -> list[Case]:
    for p in ("hbm", "dram_prefetch", "dram_zero_copy", "nvme", "dram"):
        shapes(ctx, p)  # a malformed --set decode.<placement>.shapes fails before anything runs
    if "decode.tiles" in ctx.options:
        _tiles(ctx)  # so does a malformed --set decode.tiles
    _nvme_threads(ctx)  # and a thread count below 1
    _budget(ctx)  # and a budget that is not a positive number of seconds
    _hot_window(ctx)  # and a window below 1 token (read here on a CPU machine too)
    cases: list[Case] = []
    add = lambda name, fn, size=None: cases.append(Case(name, {}, fn, footprint=size))  # noqa: E731
    fmts = ctx.formats
    for f in fmts:
        add(f"kernel-check/{f}", lambda c, f=f: kernel_check_case(c, f), lambda c, f=f: fp.kernel_check(c, f))
    if not ctx.cuda:
        from kvbench.tiers.hbm import cuda_status
        why = f"needs a CUDA device: {cuda_status()[1]}"
        for p in ("hbm", "dram_prefetch", "dram_zero_copy", "hot_window"):
            add(f"{p}/*", lambda c, p=p, why=why: skipped_case(
                BENCH_KEY, f"{p}/*", {"kind": "decode", "placement": p}, why))
        for p in ("dram", "nvme"):
            for f in fmts:
                for b, n in shapes(ctx, p):
                    add(f"{p}/{f}/{b}x{n}", lambda c, f=f, b=b, n=n, p=p: cpu_reference_case(c, f, b, n, p),
                        lambda c, f=f, b=b, n=n, p=p: fp.cpu_reference(c, f, b, n, p))
        return cases
    add("ceiling/hbm", lambda c: ceiling_case(c, "hbm"), lambda c: fp.ceiling(c, "hbm"))
    add("ceiling/h2d", lambda c: ceiling_case(c, "h2d"), lambda c: fp.ceiling(c, "h2d"))
    ordered = sorted(fmts, key=lambda f: f != "fp16")  # fp16 first: the others relate to it
    for b, n in shapes(ctx, "hbm"):
        for f in ordered:
            add(f"hbm/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: hbm_case(c, f, b, n, True),
                lambda c, f=f, b=b, n=n: fp.hbm(c, f, b, n, True))
            if get_format(f).quantized:
                add(f"hbm/{f}/{b}x{n}/unfused", lambda c, f=f, b=b, n=n: hbm_case(c, f, b, n, False),
                    lambda c, f=f, b=b, n=n: fp.hbm(c, f, b, n, False))
    window = _hot_window(ctx)
    for f in ordered:
        for b, n in shapes(ctx, "dram_prefetch"):
            add(f"dram_prefetch/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "dram_prefetch"),
                lambda c, f=f, b=b, n=n: fp.prefetch(c, f, b, n, "dram_prefetch"))
            add(f"hot_window/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "hot_window", window),
                lambda c, f=f, b=b, n=n: fp.prefetch(c, f, b, n, "hot_window", window))
        for b, n in shapes(ctx, "dram_zero_copy"):
            add(f"dram_zero_copy/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: zero_copy_case(c, f, b, n),
                lambda c, f=f, b=b, n=n: fp.zero_copy(c, f, b, n))
        for b, n in shapes(ctx, "nvme"):
            add(f"nvme/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "nvme"),
                lambda c, f=f, b=b, n=n: fp.prefetch(c, f, b, n, "nvme"))
    return cases


BENCH = Benchmark(
    key=BENCH_KEY,
    description="decode tokens/s with the KV read from each tier and format, fused vs unfused dequantization",
    plan=plan,
    headline="tok_s",
    headline_unit="tokens/s",
    columns=("step_s", "kv_read_gbps", "pct_of_roofline", "roofline_tok_s", "speedup_vs_fp16",
             "dequant_share", "unfused_rel_err"),
    plots=(Plot("decode_tok_s.png", plots.plot_tok_s),),
    highlights=plots.highlights,
    options={
        'decode.hbm.shapes': 'batch x context pairs for placement hbm, e.g. 64x8192,16x32768',
        'decode.dram_prefetch.shapes': 'batch x context pairs for placement dram_prefetch, e.g. 64x8192,16x32768',
        'decode.dram_zero_copy.shapes': 'batch x context pairs for placement dram_zero_copy, e.g. 64x8192,16x32768',
        'decode.nvme.shapes': 'batch x context pairs for placement nvme, e.g. 64x8192,16x32768',
        'decode.dram.shapes': 'batch x context pairs for placement dram, e.g. 64x8192,16x32768',
        'decode.nvme.threads': 'O_DIRECT reader threads for placement nvme (default 4 quick, 32 full)',
        'decode.budget_s': 'seconds a case samples its paired figures for (default 3 quick, 15 full)',
        'decode.hot_window': 'tokens per sequence kept in HBM for placement hot_window (default 1024)',
        'decode.tiles': 'decode-kernel tiles the hbm autotune tries, tokens-per-step x warps x stages, '
                        'e.g. 16x4x3,64x8x2 (default: every choice the kernel offers)',
    },
)
