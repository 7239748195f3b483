"""The pieces every GPU placement times with: one layer's prepared kernel launch, a
decode step over all layers, the tile autotune, CUDA graph capture, and the copies a
roofline is made of (``ceiling_case`` measures the same copies as cases of their own)."""

from __future__ import annotations

from typing import Any, Callable

from kvbench.bench import RunContext, Skip
from kvbench.bench.decode.cache import Cache
from kvbench.bench.decode.common import BENCH_KEY, _tiles
from kvbench.results import make_case, summarize
from kvbench.units import GB, MiB


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
