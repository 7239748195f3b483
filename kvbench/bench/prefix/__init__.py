"""Prefix benchmark: load a reused prefix's KV from DRAM or NVMe, or recompute it?

For a prefix of N tokens (N swept), three cases, in this order:
  ``recompute``  prefill of the N tokens through ``num_layers`` layers of the model's
                 shape (QKV projection, causal attention, output projection, gated MLP)
                 with random weights, writing each layer's K and V into a KV cache.
  ``dram``       the prefix's KV pages (block layout: one contiguous block per token
                 span, all layers) sit in a host page pool; one coalesced copy moves
                 them into the destination pool (HBM).
  ``nvme``       the same pages sit in a file page pool; cold (page cache dropped and
                 checked before every sample), read with a thread pool (O_DIRECT where
                 the folder allows it) into two staging buffers, each copied to the
                 destination while the other fills; host timer around the whole load,
                 final synchronisation included.
Each load case also reports ``break_even_gbps`` (KV bytes / recompute time of the same
N: the load bandwidth at which loading and recomputing take equally long) and
``speedup_vs_recompute`` (recompute time / load time).

Without a GPU every case runs the same code on the CPU and is labelled a CPU
reference: the destination pool is a second host pool standing in for HBM, and the
prefill runs in fp32, timing one layer of each distinct layer shape and scaling by
the number of layers of that shape.

Units: seconds, GB = 1e9 B, tokens/s. Bytes counted: payload bytes of the prefix's
pages, once. Weights are not counted as bytes.
"""

from __future__ import annotations

from kvbench.bench import Benchmark, Case, Plot, RunContext
from kvbench.bench.prefix.prefill import recompute_case
from kvbench.bench.prefix.footprint import FOOTPRINTS
from kvbench.bench.prefix.plots import highlights, plot_load_vs_recompute
from kvbench.bench.prefix.loads import dram_case, nvme_case
from kvbench.bench.prefix.common import (BENCH_KEY, _base_cfg, _budget, _chunk_bytes, _name, _threads, sources,
                                         tokens_sweep)


def plan(ctx: RunContext) -> list[Case]:
    # a malformed --set prefix.* fails before anything runs (one line, exit 2)
    _budget(ctx), _threads(ctx), _chunk_bytes(ctx)
    runners = {"recompute": recompute_case, "dram": dram_case, "nvme": nvme_case}
    cases = []
    for n in tokens_sweep(ctx):
        for s in sources(ctx):
            cases.append(Case(_name(n, s), _base_cfg(ctx, s, n),
                              lambda c, n=n, s=s: runners[s](c, n),
                              footprint=lambda c, n=n, s=s: FOOTPRINTS[s](c, n)))
    return cases


BENCH = Benchmark(
    key=BENCH_KEY,
    description="reused prefix: load its KV from dram / nvme vs recompute it; break-even GB/s and speed-up",
    plan=plan,
    headline="seconds",
    headline_unit="s",
    columns=("load_s", "recompute_s", "speedup_vs_recompute", "break_even_gbps", "gbps", "prefill_tok_s"),
    plots=(Plot("prefix_load_vs_recompute.png", plot_load_vs_recompute),),
    highlights=highlights,
    options={
        'prefix.tokens': 'prefix lengths, e.g. 1024,8192,32768',
        'prefix.sources': 'dram, nvme, recompute (default all)',
        'prefix.threads': 'O_DIRECT reader threads (default 16 GPU, 4 CPU)',
        'prefix.chunk_bytes': 'staging chunk size for nvme loads (default 32MiB GPU, 8MiB CPU)',
        'prefix.budget_s': 'time budget per case that caps warm-up and samples',
    },
)
