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
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from kvbench.bench import Benchmark, Case, RunContext, Skip, odirect_tier_or_skip
from kvbench.results import make_case, skipped_case, summarize
from kvbench.spec import PageSpec, get_format
from kvbench.units import GB, MiB

BENCH_KEY = "decode"
PLACEMENTS = ("hbm", "dram_prefetch", "dram_zero_copy", "nvme", "hot_window")
#: verification tolerance of kernel vs fp32 reference (relative Frobenius error): the
#: kernel rounds probabilities to bf16/fp16 for the p.V product, as FlashAttention does
REL_TOL = 2e-2


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def shapes(ctx: RunContext, placement: str) -> list[tuple[int, int]]:
    """(batch, context) pairs per placement. hbm: batch x context ~ 512k tokens (e.g.
    64 x 8k), so the cache fills a good part of an 80 GB GPU; tiers below HBM move the
    whole cache every step, so they get smaller shapes."""
    key = f"decode.{placement}.shapes"
    if key in ctx.options:
        def pair(text: str) -> tuple[int, int]:
            b, _, c = text.partition("x")
            return int(b), int(c)  # ValueError -> a one-line error naming the option
        return ctx.opt_list(key, [], pair)
    if not ctx.cuda:
        return [(2, 512)] if ctx.quick else [(4, 2048)]
    if placement == "hbm":
        ctxs = [1024, 8192, 32768] if ctx.quick else [1024, 8192, 32768, 131072]
        return [(max(1, 524288 // c), c) for c in ctxs]
    if placement in ("dram_prefetch", "hot_window"):
        return [(8, 8192)] if ctx.quick else [(8, 8192), (2, 32768)]
    if placement == "dram_zero_copy":  # reads over PCIe from the kernel: slow per step
        return [(4, 8192)]
    return [(2, 8192)]


# ------------------------------------------------------------------------- data
def _templates(spec: PageSpec, n: int, device: str, seed: int):
    """n pages of real encoded K/V (normal data, a few outlier key channels) for one
    layer region, and the model's side scales computed from them."""
    import torch

    from kvbench.formats.layout import side_shape
    from kvbench.formats.paged import quantize_to_pages, side_scales

    m = spec.model
    T, H, D = spec.tokens, m.kv_heads, m.head_dim
    g = torch.Generator(device="cpu").manual_seed(seed)
    k = torch.randn(n * T, H, D, generator=g)
    k[..., : max(1, D // 32)] *= 8.0  # outlier channels, as real keys have
    v = torch.randn(n * T, H, D, generator=g)
    shape = side_shape(m, spec.fmt)
    side = None
    if shape:
        side = torch.empty(shape)
        side[:] = side_scales(k, v, spec.fmt)
    layer_spec = PageSpec(m, spec.fmt, T, "layer")
    pool = torch.zeros(n, layer_spec.page_bytes, dtype=torch.uint8)
    ids = torch.arange(n).repeat_interleave(T)
    slots = torch.arange(T).repeat(n)
    quantize_to_pages(k, v, pool, ids, slots, layer_spec, side, layer=0, backend="torch")
    return pool.to(device), (side.to(device) if side is not None else None)


def _fill(dst, templates) -> None:
    """Tile template pages over dst rows ``[N, >= page_bytes]``."""
    n, pb = templates.shape
    for start in range(0, dst.shape[0], n):
        k = min(n, dst.shape[0] - start)
        dst[start: start + k, :pb].copy_(templates[:k])


class Cache:
    """A batch of sequences of one context length, layer layout, pages of every layer of
    sequence b at ids ``layer * B * P + b * P + p`` (each layer's pages contiguous, so a
    layer moves in one copy)."""

    def __init__(self, ctx: RunContext, fmt: str, batch: int, context: int):
        import torch

        if ctx.model.attention_type == "mla":
            raise Skip("decode attention for MLA (absorbed latent) is not modelled")
        from kvbench.kernels_loader import load_kernels

        try:
            load_kernels("paged_attention").check_shape(ctx.tokens_per_page, ctx.model.head_dim)
        except ValueError as exc:
            raise Skip(f"{ctx.model.name}: {exc}") from None
        self.spec = PageSpec(ctx.model, get_format(fmt), ctx.tokens_per_page, "layer")
        self.B, self.C = batch, context
        self.P = -(-context // self.spec.tokens)
        self.L = ctx.model.num_layers
        self.BP = batch * self.P
        dev = "cuda" if ctx.cuda else "cpu"
        self.lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
        hq = ctx.model.num_attention_heads
        g = torch.Generator(device="cpu").manual_seed(ctx.seed + 1)
        from kvbench.attention import q_dtype
        self.q = torch.randn(batch, hq, self.spec.model.head_dim, generator=g).to(dev, q_dtype(fmt))
        self.templates, self.side = _templates(self.spec, min(256, self.BP), dev, ctx.seed)

    @property
    def kv_bytes_per_step(self) -> int:
        """Bytes the kernels read per step: every page of every layer (payload)."""
        return self.L * self.BP * self.spec.page_bytes

    def table(self, base: int, device: str):
        import torch

        return (base + torch.arange(self.BP, dtype=torch.int32)).view(self.B, self.P).to(device)


# ------------------------------------------------------------------------- ceilings
def ceiling_case(ctx: RunContext, what: str) -> dict[str, Any]:
    """hbm: device-to-device copy counting bytes read plus written (the memory traffic a
    read-only kernel can reach); h2d: contiguous pinned host->device copy."""
    import torch

    from kvbench.tiers.dram import aligned_host_empty
    from kvbench.timing import time_cuda

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    nbytes = (512 if ctx.quick else 2048) * MiB
    if what == "hbm":
        a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 256)
        b = torch.empty_like(a)
        counted, note = 2 * nbytes, "device-to-device copy, bytes read + bytes written"
    else:
        a = aligned_host_empty(nbytes, pin=True).random_(0, 256)
        b = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        counted, note = nbytes, "pinned host->device contiguous copy, bytes counted once"
    secs = time_cuda(lambda: b.copy_(a, non_blocking=True), warmup=ctx.warmup,
                     samples=ctx.samples, stream=torch.cuda.Stream())
    torch.cuda.synchronize()
    if not torch.equal(a[-4096:].cuda(), b[-4096:]):
        raise AssertionError("ceiling copy moved wrong data")
    case = make_case(BENCH_KEY, f"ceiling/{what}", {"kind": "ceiling", "what": what, "bytes": nbytes},
                     samples={"gbps": [counted / s / GB for s in secs]}, units={"gbps": "GB/s"},
                     notes=[note])
    return case


# ------------------------------------------------------------------------- steps
def _layer_fn(cache: Cache, pool, table, unfused: bool, tile: Any, zero_copy: bool = False
              ) -> Callable[[], Any]:
    """One layer of decode attention over ``table``'s pages: prepared once when fused."""
    from kvbench.attention import decode_unfused, prepare_fused

    if unfused:
        return lambda: decode_unfused(cache.q, pool, table, cache.lens, cache.spec, 0,
                                      cache.side, tile=tile)
    return prepare_fused(cache.q, pool, table, cache.lens, cache.spec, 0, cache.side,
                         zero_copy, tile=tile)


def _kernel_step(cache: Cache, pool, tables, zero_copy: bool = False, unfused: bool = False,
                 layers_resident: int | None = None, tile: Any = None):
    """A callable running one decode step (all layers) on the current stream. Fused
    layers are prepared once (arguments, workspace, output), so a step only launches
    kernels; the unfused path allocates its bf16 copy per layer (in a CUDA graph, from
    the graph's pool)."""
    nres = layers_resident or cache.L
    ws: dict[str, Any] = {}
    launches = [_layer_fn(cache, pool, tables[i], unfused, tile, zero_copy) for i in range(nres)]

    def run():
        for layer in range(cache.L):
            ws["out"] = launches[layer % nres]()
        return ws["out"]
    return run, ws


def _tiles(ctx: RunContext) -> list[Any]:
    """Autotune candidates: ``--set decode.tiles=TxWxS,...`` (tokens per step x warps x
    stages) or every choice the kernel offers."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    if "decode.tiles" not in ctx.options:
        return pa.tile_choices(ctx.tokens_per_page)

    def tile(text: str):
        rows, w, st = (int(x) for x in text.split("x"))  # ValueError -> one line naming the option
        if rows < 16 or rows & (rows - 1) or w < 1 or w & (w - 1) or st < 1:
            raise ValueError(text)  # tl.dot needs >= 16 rows; warps a power of two
        return pa.DecodeTile(rows, w, st)
    return ctx.opt_list("decode.tiles", [], tile)


def _autotune(ctx: RunContext, make_layer: Callable[[Any], Callable[[], Any]]
              ) -> tuple[Any, dict[str, float]]:
    """The fastest tile for one layer of this case (CUDA events, 3 samples of 4 layers
    each behind a GPU sleep); returns it and every candidate's median seconds per layer."""
    from kvbench.timing import time_cuda

    timed: dict[str, float] = {}
    best, best_s = None, float("inf")
    for t in _tiles(ctx):
        # two warm-ups: the first compiles, the second sizes the GPU sleep
        secs = time_cuda(make_layer(t), warmup=2, samples=3, inner=4, ahead=True)
        med = summarize(secs)["median"] / 4
        timed["x".join(map(str, t.describe().values()))] = med
        if med < best_s:
            best, best_s = t, med
    return best, timed


def _graph(step: Callable[[], Any]) -> tuple[Callable[[], Any], Any, str]:
    """(replay, graph, note): the step captured in a CUDA graph, replayed as device work;
    if capture fails, the eager step itself (said in the note)."""
    import torch

    from kvbench.timing import capture_graph

    try:
        graph = capture_graph(step)
    except Exception as exc:  # noqa: BLE001 - any capture failure: report, time eagerly
        torch.cuda.synchronize()
        return step, None, (f"CUDA graph capture failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); step_s is the "
                            "eager step (launch gaps included)")
    return graph.replay, graph, "step_s: the step replayed from a CUDA graph"


def _launch_overhead(res: Any) -> dict[str, float]:
    """eager_step_s and launch_overhead_s (median of per-pair eager minus graph)."""
    step, eager = res.arms["step"].seconds, res.arms["eager"].seconds
    return {"eager_step_s": summarize(eager)["median"],
            "launch_overhead_s": summarize([e - g for e, g in zip(eager, step)])["median"]}


def _step_note(note: str, info: dict[str, Any], graph: Any) -> str:
    from kvbench.timing import ahead_note

    return (f"{note}" + (f" ({ahead_note(info)})" if graph is not None and info else "")
            + "; eager_step_s: the same prepared launches issued from Python, launch gaps included, "
            "sampled alternately; launch_overhead_s: median of per-pair eager minus step")


_STEP_UNITS = {"eager_step_s": "s", "launch_overhead_s": "s"}


def _verify(cache: Cache, out, pool, table) -> float:
    """Relative error of the kernel's output vs the fp32 torch reference (first two
    sequences), outside the timed region."""
    from kvbench.attention import decode_reference

    n = min(2, cache.B)
    ref = decode_reference(cache.q[:n], pool, table[:n].to(pool.device), cache.lens[:n].to(pool.device),
                           cache.spec, 0, cache.side.to(pool.device) if cache.side is not None else None)
    err = float((out[:n].float().cpu() - ref.cpu()).norm() / ref.norm().clamp_min(1e-30))
    if not err < REL_TOL:
        raise AssertionError(f"decode output differs from the reference: rel err {err:.2e}")
    return err


def _finish(ctx: RunContext, name: str, cfg: dict, cache: Cache, res: Any, notes: list[str],
            extra: dict | None = None, percent: tuple[str, ...] = (),
            units: dict[str, str] | None = None) -> dict:
    """The case: step samples of the ``step`` arm, its paired ratios, then ratios to
    earlier cases for what was not paired (``_relate``)."""
    from kvbench.measure import paired

    secs = res.arms["step"].seconds
    kvb = cache.kv_bytes_per_step
    case = make_case(
        BENCH_KEY, name, cfg,
        samples={"step_s": secs, "tok_s": [cache.B / s for s in secs],
                 "kv_read_gbps": [kvb / s / GB for s in secs]},
        units={"step_s": "s", "tok_s": "tokens/s", "kv_read_gbps": "GB/s",
               "roofline_gbps": "GB/s", "roofline_tok_s": "tokens/s", "pct_of_roofline": "%",
               "kv_bytes_per_step": "B", "rel_err": "relative Frobenius error vs fp32 reference",
               "dequant_s": "s", **_STEP_UNITS, **(units or {})},
        metrics={"kv_bytes_per_step": kvb, **(extra or {})}, notes=notes)
    # headline figures from the median step time, so tok_s x step_s = batch exactly
    med = case["metrics"]["step_s"]
    case["metrics"]["tok_s"] = cache.B / med
    case["metrics"]["kv_read_gbps"] = kvb / med / GB
    paired.record(case, res, percent=percent)
    if "pct_of_roofline" in res.ratios:
        _roofline_from_pairs(case)
    _relate(ctx, case)
    return case


def _relate(ctx: RunContext, case: dict) -> None:
    """Ratios to earlier cases of this run (same placement and shape) that the case did
    not measure paired itself: speed-up vs fused fp16 and the unfused/fused time ratio,
    from the two cases' medians, said so in the notes."""
    cfg = case["config"]
    have = case.get("paired", {})
    for c in ctx.done:
        if c["bench"] != BENCH_KEY or c["status"] != "ok" or c["config"].get("kind") != "decode":
            continue
        o = c["config"]
        same = all(o.get(k) == cfg.get(k) for k in ("placement", "batch", "context", "device"))
        if not same:
            continue
        got = None
        if o["format"] == "fp16" and o["fused"] and cfg["format"] != "fp16" and "speedup_vs_fp16" not in have:
            got = "speedup_vs_fp16", case["metrics"]["tok_s"] / c["metrics"]["tok_s"]
        if o["format"] == cfg["format"] and o["fused"] and not cfg["fused"] \
                and "unfused_over_fused_time" not in have:
            got = "unfused_over_fused_time", case["metrics"]["step_s"] / c["metrics"]["step_s"]
        if got:
            case["metrics"][got[0]] = got[1]
            case["units"][got[0]] = "x (not paired: medians of two cases of this run)"
            case["notes"].append(f"{got[0]}: not paired, the medians of this case and {c['name']}")


def _cfg(ctx: RunContext, placement: str, fmt: str, batch: int, context: int, fused: bool,
         **extra: Any) -> dict[str, Any]:
    return {"kind": "decode", "placement": placement, "format": fmt, "batch": batch,
            "context": context, "fused": fused, "model": ctx.model.name,
            "tokens_per_page": ctx.tokens_per_page, "layout": "layer",
            "device": "cuda" if ctx.cuda else "cpu", **extra}


def _name(placement: str, fmt: str, batch: int, context: int, fused: bool) -> str:
    return f"{placement}/{fmt}/{batch}x{context}" + ("" if fused else "/unfused")


# ------------------------------------------------------------------------- GPU cases
def _hbm_step(ctx: RunContext, cache: Cache, fused: bool, budget: int) -> dict[str, Any]:
    """Pages of ``cache`` in HBM (as many layers as ``budget`` bytes hold, kernels cycling
    over them), its autotuned tile, and its step (all layers) captured in a CUDA graph."""
    import torch

    per_layer = cache.BP * cache.spec.page_bytes
    if budget < per_layer:
        raise Skip(f"one layer of {cache.B}x{cache.C} {cache.spec.fmt.name} ({per_layer / GB:.1f} GB) "
                   "does not fit in HBM")
    nres = max(1, min(cache.L, budget // per_layer))
    pool = torch.empty(nres * cache.BP, cache.spec.page_bytes, dtype=torch.uint8, device="cuda")
    _fill(pool, cache.templates)
    tables = [cache.table(l * cache.BP, "cuda") for l in range(nres)]
    tile, tuned = _autotune(ctx, lambda t: _layer_fn(cache, pool, tables[0], not fused, t))
    step, ws = _kernel_step(cache, pool, tables, unfused=not fused, layers_resident=nres, tile=tile)
    step()
    torch.cuda.synchronize()
    replay, graph, note = _graph(step)
    # what the graph writes: the eager arm's calls re-point ws["out"] (an unfused step
    # allocates its output per call), so the verification reads this one
    graph_out = ws["out"]
    return {"cache": cache, "pool": pool, "tables": tables, "nres": nres, "tile": tile, "tuned": tuned,
            "step": step, "ws": ws, "replay": replay, "graph": graph, "note": note, "out": graph_out}


def _hbm_arms(ctx: RunContext, fmt: str, fused: bool, main: dict, twin: dict | None, info: dict):
    """The arms an hbm case samples alternately, and the ratios taken per pair."""
    import torch

    from kvbench.measure.paired import cuda_arm

    cache = main["cache"]
    copies, keep = _copy_arms(ctx, with_h2d=False)
    arms = {"step": cuda_arm(main["replay"], cache.B, info=info),
            "eager": cuda_arm(main["step"], cache.B, ahead=False), **copies}
    kvb, copied = cache.kv_bytes_per_step, copies["hbm_copy"].work

    def pct_of_roofline(s: dict[str, float]) -> float:
        return (kvb / s["step"]) / (copied / s["hbm_copy"])
    ratios: dict[str, Any] = {"pct_of_roofline": pct_of_roofline}
    if twin is not None:
        arms["twin"] = cuda_arm(twin["replay"], cache.B)
        if fused:
            ratios["speedup_vs_fp16"] = ("step", "twin")
        else:
            ratios["unfused_over_fused_time"] = ("twin", "step")
    if not fused:
        from kvbench.formats.paged import dequantize_pages

        def dq_only():
            for layer in range(cache.L):
                dequantize_pages(main["pool"], main["tables"][layer % main["nres"]], cache.spec, cache.side,
                                 layer=0, dtype=torch.bfloat16, backend="triton", check=False)
        arms["dq"] = cuda_arm(dq_only, cache.B)
        ratios["dequant_share"] = ("step", "dq")
    return arms, ratios, keep


def hbm_case(ctx: RunContext, fmt: str, batch: int, context: int, fused: bool) -> dict:
    """Decode with every page in HBM, sampled alternately in the case with: the same
    step issued eagerly (launch overhead), a device-to-device copy (the roofline), and
    a twin (fused fp16 for a fused case: speed-up; the fused kernel of the same format
    for an unfused case: its cost) and the separate dequantization (unfused)."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    free = torch.cuda.mem_get_info()[0]
    m = ctx.model
    bf16_kv = 2 * cache.BP * cache.spec.tokens * m.kv_heads * m.head_dim * 2  # unfused K+V copy
    has_twin = not (fused and fmt == "fp16")
    budget = int((0.45 if has_twin else 0.55) * free) - (2 * bf16_kv if not fused else 0)
    main = _hbm_step(ctx, cache, fused, budget // (2 if has_twin else 1))
    twin = None
    if has_twin:
        twin = _hbm_step(ctx, Cache(ctx, "fp16", batch, context) if fused else cache, True,
                         budget // 2)
    info: dict[str, Any] = {}
    arms, ratios, keep = _hbm_arms(ctx, fmt, fused, main, twin, info)
    res = paired.interleave(arms, ratios, budget_s=_budget(ctx),
                            min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
    main["out"].fill_(float("nan"))
    main["replay"]()  # verify what the graph computes
    torch.cuda.synchronize()
    out = main["out"] if main["graph"] is not None else main["ws"]["out"]  # eager: its latest
    extra = {"rel_err": _verify(cache, out, main["pool"],
                                main["tables"][(cache.L - 1) % main["nres"]]), **_launch_overhead(res)}
    notes = [_step_note(main["note"], info, main["graph"]),
             f"{main['nres']} of {cache.L} layers resident (distinct pages), kernels cycle over them; "
             "every step still reads L x the per-layer bytes from HBM",
             "tile (tokens per step x warps x stages) chosen by a per-case autotune of one layer: "
             + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in main["tuned"].items()),
             "roofline: a device-to-device copy (bytes read + written) sampled alternately in this "
             "case; pct_of_roofline per pair"]
    if twin is not None:
        notes.append(("speedup_vs_fp16: per pair with fused fp16 of the same shape" if fused else
                      "unfused_over_fused_time: per pair with the fused kernel of the same format")
                     + ", sampled alternately in this case")
    cfg = _cfg(ctx, "hbm", fmt, batch, context, fused, layers_resident=main["nres"],
               tile=main["tile"].describe())
    res.release()
    del main, twin, arms, keep  # free before the next case allocates
    torch.cuda.empty_cache()
    if not fused:
        extra["dequant_s"] = summarize(res.arms["dq"].seconds)["median"]
    return _finish(ctx, _name("hbm", fmt, batch, context, fused), cfg, cache, res, notes, extra,
                   percent=("pct_of_roofline",),
                   units={"dequant_share": "fraction of step_s (per pair: dequantization alone / unfused step)"})


def _roofline_from_pairs(case: dict) -> None:
    """roofline_gbps (median over pairs of the KV-read rate the pair's copies allow) and
    roofline_tok_s; above_ceiling when the paired pct_of_roofline's interval is entirely
    above 100%."""
    from kvbench.measure import flag

    m, smp = case["metrics"], case["samples"]
    m["roofline_gbps"] = summarize([kv / (pct / 100.0) for kv, pct in
                                    zip(smp["kv_read_gbps"], smp["pct_of_roofline"])])["median"]
    m["roofline_tok_s"] = case["config"]["batch"] / (m["kv_bytes_per_step"] / (m["roofline_gbps"] * GB))
    pr = case["paired"]["pct_of_roofline"]
    if pr["ci_low"] > 100.0:
        flag(case, "above_ceiling", f"KV reads at {pr['median']:.0f}% of the paired roofline "
             f"({pr['ci_low']:.0f}-{pr['ci_high']:.0f}%): the copy did not bound the kernel")


def _host_pool(cache: Cache, pin: bool):
    from kvbench.tiers.dram import DramTier, aligned_host_empty

    need = cache.L * cache.BP * cache.spec.page_bytes
    free = DramTier(pinned=pin).free_bytes()
    if need > free:
        raise Skip(f"the cache ({need / GB:.1f} GB) does not fit in host memory ({free / GB:.1f} GB free)")
    pool = aligned_host_empty(need, pin=pin).view(cache.L * cache.BP, cache.spec.page_bytes)
    _fill(pool, cache.templates.cpu())
    return pool


def prefetch_case(ctx: RunContext, fmt: str, batch: int, context: int, placement: str,
                  window: int = 0) -> dict:
    """dram_prefetch / hot_window / nvme: a two-slot HBM staging ring fed per layer by a
    copy stream (from pinned DRAM, or from NVMe through pinned staging); sampled
    alternately with the copies its roofline is made of."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    pb = cache.spec.page_bytes
    hot_blocks = min(cache.P, -(-window // cache.spec.tokens)) if window else 0
    cold_blocks = cache.P - hot_blocks
    R = 2
    # HBM: [R staging slots of B x P pages | hot pages of every layer]; rows padded to the
    # file's 4 KiB stride for nvme, so a layer read from the file moves in one copy
    from kvbench.tiers.nvme import DIRECT_ALIGN
    from kvbench.units import align_up

    row = align_up(pb, DIRECT_ALIGN) if placement == "nvme" else pb
    hbm = torch.empty(R * cache.BP + cache.L * cache.B * hot_blocks, row, dtype=torch.uint8, device="cuda")
    _fill(hbm, cache.templates)
    hbm[: R * cache.BP].zero_()  # staging starts unlike any page: verification sees missed copies
    host = _host_pool(cache, pin=True) if placement != "nvme" else None
    # block tables: per slot, cold blocks in the slot, hot blocks in the layer's hot pages
    def table(slot: int, layer: int):
        t = cache.table(slot * cache.BP, "cpu")
        if hot_blocks:
            hot0 = R * cache.BP + layer * cache.B * hot_blocks
            hot = hot0 + torch.arange(cache.B * hot_blocks, dtype=torch.int32).view(cache.B, hot_blocks)
            t[:, cold_blocks:] = hot
        return t.cuda()
    tables = {(s, l): table(s, l) for s in range(R) for l in range(cache.L)}
    copy_s, comp_s = torch.cuda.Stream(), torch.cuda.Stream()
    copied = [torch.cuda.Event() for _ in range(R)]
    freed = [torch.cuda.Event() for _ in range(R)]
    tile = _tuned_tile(ctx, fmt)
    attend = {key: _layer_fn(cache, hbm, t, False, tile) for key, t in tables.items()}

    # bytes moved per layer: the cold blocks of every sequence (contiguous per sequence)
    def h2d(layer: int, slot: int, src=None):
        src = src if src is not None else host[layer * cache.BP: (layer + 1) * cache.BP]
        dst = hbm[slot * cache.BP: (slot + 1) * cache.BP]
        if hot_blocks:  # the cold blocks of each sequence: one contiguous copy each
            s3, d3 = src.view(cache.B, cache.P, -1), dst.view(cache.B, cache.P, -1)
            for b in range(cache.B):
                d3[b, :cold_blocks].copy_(s3[b, :cold_blocks], non_blocking=True)
        else:
            dst.copy_(src, non_blocking=True)

    out: dict[str, Any] = {}

    def enqueue_layer(layer: int, slot: int, src=None, also=None) -> None:
        """Copy stream: wait until the slot is free, move the layer in, mark it copied;
        compute stream: wait for the copy, attend, mark the slot free."""
        with torch.cuda.stream(copy_s):
            copy_s.wait_event(freed[slot])
            h2d(layer, slot, src)
            copied[slot].record(copy_s)
            if also is not None:
                also.record(copy_s)
        with torch.cuda.stream(comp_s):
            comp_s.wait_event(copied[slot])
            out["o"] = attend[(slot, layer)]()
            freed[slot].record(comp_s)

    extra_notes: list[str] = []
    cold_bytes = cache.L * cache.B * cold_blocks * pb
    info: dict[str, Any] = {}
    if placement == "nvme":
        step, cleanup, resid, seq_arm = _nvme_pipeline(ctx, cache, enqueue_layer, R)
        arms = {"step": paired.host_arm(step, cache.B, setup=cleanup["drop"]), "seq": seq_arm}
    else:
        def step():
            copy_s.wait_stream(comp_s)  # copies start after the step's start event
            for layer in range(cache.L):
                enqueue_layer(layer, layer % R)
            comp_s.wait_stream(copy_s)
        arms = {"step": paired.cuda_arm(step, cache.B, comp_s, info=info)}
        cleanup = {"close": lambda: None}
    copies, keep = _copy_arms(ctx)
    arms.update(copies)
    try:
        res = paired.interleave(arms, {"pct_of_roofline": _tier_roofline(cache, cold_bytes, arms)},
                                budget_s=_budget(ctx), min_pairs=paired.min_pairs_for(ctx.samples),
                                warmup=ctx.warmup)
    finally:
        cleanup["close"]()
    if placement == "nvme":
        worst = max(resid[ctx.warmup:] or [1.0])
        state = "cold" if worst <= 0.01 else "warm"
        extra_notes.append(f"{state}: at most {worst:.1%} of the file resident before each step")
    else:
        from kvbench.timing import ahead_note

        extra_notes.append(ahead_note(info))
    torch.cuda.synchronize()
    # verify the last layer against the reference computed from where its pages came from
    last = cache.L - 1
    if host is not None:
        ref_pool = hbm.clone()
        ref_pool[(last % R) * cache.BP: (last % R + 1) * cache.BP].copy_(host[last * cache.BP:(last + 1) * cache.BP])
        err = _verify(cache, out["o"], ref_pool, tables[(last % R, last)])
        del ref_pool
    else:
        err = _verify(cache, out["o"], hbm, tables[(last % R, last)])
    cfg = _cfg(ctx, placement, fmt, batch, context, True, hot_window_tokens=hot_blocks * cache.spec.tokens,
               staging_slots=R, bytes_from_tier_per_step=cold_bytes, tile=tile.describe())
    res.release()
    hbm = host = attend = None  # free before the next case allocates
    del keep
    torch.cuda.empty_cache()
    return _finish(ctx, _name(placement, fmt, batch, context, True), cfg, cache, res,
                   [f"roofline: {cold_bytes:,} B per step from the tier (a contiguous pinned "
                    "host->device copy" + (", and for nvme the file read sequentially, the slower"
                                           if placement == "nvme" else "")
                    + "), overlapped with HBM reads (a device-to-device copy), each sampled "
                    "alternately with the step; pct_of_roofline per pair"] + extra_notes,
                   {"rel_err": err}, percent=("pct_of_roofline",))


def _nvme_threads(ctx: RunContext) -> int:
    from kvbench.errors import KvbenchError

    n = ctx.opt("decode.nvme.threads", 4 if ctx.quick else 32, int)
    if n < 1:
        raise KvbenchError(f"--set decode.nvme.threads={n}: must be positive")
    return n


def _nvme_pipeline(ctx, cache, enqueue_layer, R):
    """A file holding every layer's pages, layer-contiguous; per layer: O_DIRECT threads
    read the layer's region (4 MiB requests) into a pinned slot, one H2D copy moves it
    to the HBM staging slot, attention runs; the next layer's read overlaps it."""
    import torch

    from kvbench import movers
    from kvbench.measure import staged
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    tier = odirect_tier_or_skip(ctx)
    pool = PagePool(tier, cache.spec, cache.L * cache.BP)
    stride = pool.stride
    region = cache.BP * stride
    f = pool.file()
    tp = ThreadPoolExecutor(_nvme_threads(ctx))
    pinned = [aligned_host_empty(region, pin=True).view(cache.BP, stride) for _ in range(R)]
    pinned[0].zero_()
    _fill(pinned[0], cache.templates.cpu())
    for layer in range(cache.L):  # every layer's region holds the same encoded pages
        movers.sequential_writer(f, region, pinned[0], 64 * MiB, tp, offset=layer * region)()
    h2d_done = [torch.cuda.Event() for _ in range(R)]

    def hand_on(c: staged.Chunk):
        # chunk = layer c.index in pinned slot c.slot: H2D copy, then attention
        enqueue_layer(c.index, c.slot, src=pinned[c.slot], also=h2d_done[c.slot])
        return h2d_done[c.slot]  # the pinned slot is free once its H2D copy has finished
    reader = staged.StagedReader(staged.region_chunks(
        f, region, [layer * region for layer in range(cache.L)], pinned, "odirect", tp, 4 * MiB),
        R, hand_on)
    resid: list[float] = []

    def step():
        reader()
        torch.cuda.synchronize()  # the last layers' attention too

    def close():
        tp.shutdown()
        pool.close()
        tier.close()

    try:
        from kvbench.measure.paired import host_arm

        seq_out = aligned_host_empty(min(f.nbytes, 4 * region), pin=True)
        n_seq = seq_out.numel()
        seq_arm = host_arm(movers.sequential_reader(f, n_seq, seq_out, 4 * MiB, "odirect", tp), n_seq,
                           setup=f.drop_cache)
    except BaseException:
        close()
        raise
    return step, {"drop": lambda: resid.append(f.drop_cache()), "close": close}, resid, seq_arm


def _copy_arms(ctx: RunContext, with_h2d: bool = True) -> tuple[dict[str, Any], Any]:
    """Arms for a roofline: a device-to-device copy (counted read + written) and a
    contiguous pinned host->device copy, 128 MiB quick / 512 MiB full; and the buffers."""
    import torch

    from kvbench.measure.paired import cuda_arm
    from kvbench.tiers.dram import aligned_host_empty

    nbytes = (128 if ctx.quick else 512) * MiB
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 256)
    b = torch.empty_like(a)
    stream = torch.cuda.Stream()
    arms = {"hbm_copy": cuda_arm(lambda: b.copy_(a), 2 * nbytes, stream)}
    host = None
    if with_h2d:
        host = aligned_host_empty(nbytes, pin=True).random_(0, 256)
        arms["h2d"] = cuda_arm(lambda: b.copy_(host, non_blocking=True), nbytes, stream)
    return arms, (host, a, b)


def _tier_roofline(cache: Cache, cold_bytes: int, arms: dict[str, Any]) -> Callable[[dict[str, float]], float]:
    """Per pair: the roofline step time over the measured one. The roofline moves the
    tier's bytes at the tier's rate (the H2D copy's; for nvme the slower of it and the
    file's sequential read) overlapped with every KV byte at HBM's rate (``hbm_copy``;
    absent for zero-copy, whose kernel reads the host pages over the link directly)."""
    kvb = cache.kv_bytes_per_step
    work = {k: a.work for k, a in arms.items()}

    def pct_of_roofline(sec: dict[str, float]) -> float:
        tier = work["h2d"] / sec["h2d"]
        if "seq" in sec:
            tier = min(tier, work["seq"] / sec["seq"])
        t_roof = cold_bytes / tier
        if "hbm_copy" in sec:
            t_roof = max(t_roof, kvb / (work["hbm_copy"] / sec["hbm_copy"]))
        return t_roof / sec["step"]
    return pct_of_roofline


def zero_copy_case(ctx: RunContext, fmt: str, batch: int, context: int) -> dict:
    """The kernel reads pinned host pages over PCIe (unified addressing); sampled
    alternately with the eager step (launch overhead) and a contiguous H2D copy (the
    roofline: every KV byte at the link's rate)."""
    import torch

    from kvbench.measure import paired

    if not ctx.cuda:
        raise Skip("needs a CUDA device (none here)")
    cache = Cache(ctx, fmt, batch, context)
    host = _host_pool(cache, pin=True)
    tables = [cache.table(l * cache.BP, "cuda") for l in range(cache.L)]
    tile = _tuned_tile(ctx, fmt)
    step, ws = _kernel_step(cache, host, tables, zero_copy=True, tile=tile)
    step()
    torch.cuda.synchronize()
    replay, graph, note = _graph(step)
    graph_out = ws["out"]  # what the graph writes (fused: the prepared output)
    info: dict[str, Any] = {}
    copies, keep = _copy_arms(ctx)
    arms = {"step": paired.cuda_arm(replay, cache.B, info=info),
            "eager": paired.cuda_arm(step, cache.B, ahead=False), "h2d": copies["h2d"]}
    res = paired.interleave(arms, {"pct_of_roofline": _tier_roofline(cache, cache.kv_bytes_per_step, arms)},
                            budget_s=_budget(ctx), min_pairs=paired.min_pairs_for(ctx.samples),
                            warmup=ctx.warmup)
    graph_out.fill_(float("nan"))
    replay()  # verify what the graph computes
    torch.cuda.synchronize()
    extra = {"rel_err": _verify(cache, graph_out, host, tables[-1].cpu()), **_launch_overhead(res)}
    cfg = _cfg(ctx, "dram_zero_copy", fmt, batch, context, True, tile=tile.describe())
    step_note = _step_note(note, info, graph)
    res.release()
    host = step = ws = graph = replay = graph_out = None
    del keep
    return _finish(ctx, _name("dram_zero_copy", fmt, batch, context, True), cfg, cache, res,
                   ["the kernel loads pinned host pages over PCIe (unified addressing)", step_note,
                    "roofline: every KV byte at the rate of a contiguous pinned host->device copy "
                    "sampled alternately with the step; pct_of_roofline per pair"], extra,
                   percent=("pct_of_roofline",))


def _tuned_tile(ctx: RunContext, fmt: str) -> Any:
    """The tile the hbm autotune chose for this format in this run (its largest batch),
    else the kernel's default: placements below HBM are bound by the link, not the tile."""
    from kvbench.kernels_loader import load_kernels

    pa = load_kernels("paged_attention")
    tuned = [c for c in ctx.done if c["bench"] == BENCH_KEY and c["status"] == "ok"
             and c["config"].get("placement") == "hbm" and c["config"].get("format") == fmt
             and c["config"].get("fused") and c["config"].get("tile")]
    if not tuned:
        return pa.DEFAULT_TILE
    return pa.DecodeTile(**max(tuned, key=lambda c: c["config"]["batch"])["config"]["tile"])


# ------------------------------------------------------------------------- CPU reference
def _cpu_step(ctx: RunContext, fmt: str, batch: int, context: int, placement: str):
    """(cache, step, setup, close, resid) of the torch reference decode on the CPU, KV
    read from pageable DRAM or layer by layer from an NVMe file (O_DIRECT, cold)."""
    from kvbench import movers
    from kvbench.attention import decode_reference

    cache = Cache(ctx, fmt, batch, context)
    host = _host_pool(cache, pin=False)
    tables = [cache.table(l * cache.BP, "cpu") for l in range(cache.L)]
    resid: list[float] = []
    out: dict[str, Any] = {}
    if placement == "dram":
        def step():
            for layer in range(cache.L):
                out["o"] = decode_reference(cache.q, host, tables[layer], cache.lens, cache.spec, 0, cache.side)
        return cache, step, None, lambda: None, resid
    from kvbench.store import PagePool
    from kvbench.tiers.dram import aligned_host_empty

    tier = odirect_tier_or_skip(ctx)
    pool = PagePool(tier, cache.spec, cache.L * cache.BP)
    pool.write_pages(list(range(cache.L * cache.BP)), host, method="odirect")
    f = pool.file()
    f.sync()
    stage = aligned_host_empty(cache.BP * pool.stride, pin=False).view(cache.BP, pool.stride)
    readers = [movers.file_reader(f, pool.stride, list(range(l * cache.BP, (l + 1) * cache.BP)),
                                  stage, "odirect", None, cache.spec.page_bytes)
               for l in range(cache.L)]
    local = cache.table(0, "cpu")

    def step_nvme():
        for layer in range(cache.L):
            readers[layer]()
            out["o"] = decode_reference(cache.q, stage, local, cache.lens, cache.spec, 0, cache.side)

    def close():
        pool.close()
        tier.close()
    return cache, step_nvme, lambda: resid.append(f.drop_cache()), close, resid


def cpu_reference_case(ctx: RunContext, fmt: str, batch: int, context: int, placement: str) -> dict:
    """The torch reference decode on the CPU, KV read from pageable DRAM or from an NVMe
    file (O_DIRECT, cold) layer by layer; a quantized format is sampled alternately with
    fp16 at the same placement and shape (speedup_vs_fp16, per pair). CPU reference
    numbers, not GPU figures."""
    from kvbench.measure import paired

    notes = ["CPU reference numbers (torch gather + fp32 softmax attention), not GPU figures"]
    closers = []
    try:
        cache, step, setup, close, resid = _cpu_step(ctx, fmt, batch, context, placement)
        closers.append(close)
        arms = {"step": paired.host_arm(step, cache.B, setup)}
        ratios = {}
        if fmt != "fp16":
            _, step16, setup16, close16, _ = _cpu_step(ctx, "fp16", batch, context, placement)
            closers.append(close16)
            arms["fp16"] = paired.host_arm(step16, cache.B, setup16)
            ratios["speedup_vs_fp16"] = ("step", "fp16")
            notes.append("speedup_vs_fp16: per pair of this step and an fp16 step of the same "
                         "placement and shape, sampled alternately in this case")
        res = paired.interleave(arms, ratios, budget_s=_budget(ctx),
                                min_pairs=paired.min_pairs_for(ctx.samples), warmup=ctx.warmup)
    finally:
        for c in closers:
            c()
    if resid:
        worst = max(resid[ctx.warmup:] or [1.0])
        notes.append(f"{'cold' if worst <= 0.01 else 'warm'}: at most {worst:.1%} of the file "
                     "resident before each step")
    cfg = _cfg(ctx, placement, fmt, batch, context, True, implementation="torch reference")
    return _finish(ctx, _name(placement, fmt, batch, context, True) + "/cpu-reference", cfg,
                   cache, res, notes)


def _budget(ctx: RunContext) -> float:
    """Seconds a case may sample its paired figures for."""
    return ctx.opt_seconds("decode.budget_s", 3.0 if ctx.quick else 15.0)


def kernel_check_case(ctx: RunContext, fmt: str) -> dict:
    """The Triton kernel (fused and, for quantized formats, unfused) against the torch
    reference at a small size: compiled on CUDA, interpreted on the CPU."""
    import torch

    from kvbench.attention import decode_fused, decode_reference, decode_unfused

    if ctx.model.attention_type == "mla":
        raise Skip("decode attention for MLA (absorbed latent) is not modelled")
    cache = Cache(ctx, fmt, 2, 3 * ctx.tokens_per_page - 5)
    dev = "cuda" if ctx.cuda else "cpu"
    pool = torch.empty(cache.BP, cache.spec.page_bytes, dtype=torch.uint8, device=dev)
    _fill(pool, cache.templates)
    t = cache.table(0, dev)
    ref = decode_reference(cache.q, pool, t, cache.lens, cache.spec, 0, cache.side)
    metrics = {}
    for fused, fn in ((True, decode_fused), (False, decode_unfused)):
        if not fused and not get_format(fmt).quantized:
            continue
        o = fn(cache.q, pool, t, cache.lens, cache.spec, 0, cache.side)
        err = float((o.float() - ref).norm() / ref.norm())
        if not err < REL_TOL:
            raise AssertionError(f"{'fused' if fused else 'unfused'} kernel differs from the reference: {err:.2e}")
        metrics["rel_err" if fused else "unfused_rel_err"] = err
    return make_case(BENCH_KEY, f"kernel-check/{fmt}",
                     {"kind": "kernel_check", "format": fmt, "device": dev, "model": ctx.model.name,
                      "interpreted": not ctx.cuda},
                     metrics=metrics, units={k: "relative Frobenius error" for k in metrics},
                     notes=["Triton kernel vs fp32 torch reference" + ("" if ctx.cuda else
                            " (Triton interpreter: correctness only)")])


# ------------------------------------------------------------------------- plan
def plan(ctx: RunContext) -> list[Case]:
    for p in ("hbm", "dram_prefetch", "dram_zero_copy", "nvme", "dram"):
        shapes(ctx, p)  # a malformed --set decode.<placement>.shapes fails before anything runs
    if "decode.tiles" in ctx.options:
        _tiles(ctx)  # so does a malformed --set decode.tiles
    _nvme_threads(ctx)  # and a thread count below 1
    _budget(ctx)  # and a budget that is not a positive number of seconds
    cases: list[Case] = []
    add = lambda name, fn: cases.append(Case(name, {}, fn))  # noqa: E731
    fmts = ctx.formats
    for f in fmts:
        add(f"kernel-check/{f}", lambda c, f=f: kernel_check_case(c, f))
    if not ctx.cuda:
        from kvbench.tiers.hbm import cuda_status
        why = f"needs a CUDA device: {cuda_status()[1]}"
        for p in ("hbm", "dram_prefetch", "dram_zero_copy", "hot_window"):
            add(f"{p}/*", lambda c, p=p, why=why: skipped_case(
                BENCH_KEY, f"{p}/*", {"kind": "decode", "placement": p}, why))
        for p in ("dram", "nvme"):
            for f in fmts:
                for b, n in shapes(ctx, p):
                    add(f"{p}/{f}/{b}x{n}", lambda c, f=f, b=b, n=n, p=p: cpu_reference_case(c, f, b, n, p))
        return cases
    add("ceiling/hbm", lambda c: ceiling_case(c, "hbm"))
    add("ceiling/h2d", lambda c: ceiling_case(c, "h2d"))
    ordered = sorted(fmts, key=lambda f: f != "fp16")  # fp16 first: the others relate to it
    for b, n in shapes(ctx, "hbm"):
        for f in ordered:
            add(f"hbm/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: hbm_case(c, f, b, n, True))
            if get_format(f).quantized:
                add(f"hbm/{f}/{b}x{n}/unfused", lambda c, f=f, b=b, n=n: hbm_case(c, f, b, n, False))
    window = ctx.opt("decode.hot_window", 1024, int)
    for f in ordered:
        for b, n in shapes(ctx, "dram_prefetch"):
            add(f"dram_prefetch/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "dram_prefetch"))
            add(f"hot_window/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "hot_window", window))
        for b, n in shapes(ctx, "dram_zero_copy"):
            add(f"dram_zero_copy/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: zero_copy_case(c, f, b, n))
        for b, n in shapes(ctx, "nvme"):
            add(f"nvme/{f}/{b}x{n}", lambda c, f=f, b=b, n=n: prefetch_case(c, f, b, n, "nvme"))
    return cases


BENCH = Benchmark(
    key=BENCH_KEY,
    description="decode tokens/s with the KV read from each tier and format, fused vs unfused dequantization",
    plan=plan,
    headline="tok_s",
    headline_unit="tokens/s",
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
