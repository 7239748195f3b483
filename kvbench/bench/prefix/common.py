"""The prefix benchmark's settings: sources, prefix lengths, options, budgets, the
timer it uses for unpaired cases, case configs and names."""

from __future__ import annotations

import time
from typing import Any, Callable

from kvbench.bench import RunContext
from kvbench.errors import KvbenchError
from kvbench.spec import PageSpec, get_format
from kvbench.units import MiB

BENCH_KEY = "prefix"

SOURCES = ("recompute", "dram", "nvme")

TOKENS_FULL = (1024, 2048, 4096, 8192, 16384, 32768)

#: a full Llama-3.1-8B layer in fp32 on 2 CPU cores takes about 1 s at 128 tokens and
#: 3-4 s at 512 (this repository's CI machine): two points keep the quick run short
TOKENS_QUICK = (128, 512)

CPU_NOTE = "CPU reference numbers, not GPU figures"

#: warm-up and samples stop early once a case has spent this long (seconds) on them
BUDGET_FULL_S = 3.0

BUDGET_QUICK_S = 2.0

#: never fewer timed samples than this (unless --samples asks for fewer)
MIN_SAMPLES = 3

#: Published: time to first token with the prefix loaded from CPU memory vs recomputed,
#: "2-22x faster", Llama-3.1-8B on H100 (/work/shared/reference/limits-and-anchors.md,
#: "KV offload systems (published)"). A TTFT figure: it includes the rest of the
#: prefill, which this benchmark does not time.
PUBLISHED_CPU_LOAD_SPEEDUP = (2.0, 22.0)

PUBLISHED_MODEL = "Llama-3.1-8B"


def tokens_sweep(ctx: RunContext) -> list[int]:
    return ctx.opt_list("prefix.tokens", list(TOKENS_QUICK if ctx.quick else TOKENS_FULL))


def sources(ctx: RunContext) -> list[str]:
    chosen = [s.strip() for s in ctx.opt("prefix.sources", ",".join(SOURCES)).split(",") if s.strip()]
    if not chosen:
        raise KvbenchError(f"--set prefix.sources: no sources given; known: {', '.join(SOURCES)}")
    for s in chosen:
        if s not in SOURCES:
            raise KvbenchError(f"--set prefix.sources: unknown source {s!r}; known: {', '.join(SOURCES)}")
    return [s for s in SOURCES if s in chosen]  # recompute first: loads compare with it


def _threads(ctx: RunContext) -> int:
    return ctx.opt_int("prefix.threads", 16 if ctx.cuda else 4)


def _chunk_bytes(ctx: RunContext) -> int:
    return ctx.opt_size("prefix.chunk_bytes", (32 if ctx.cuda else 8) * MiB,
                        ctx.host_memory_bytes(), "host memory")


def _budget(ctx: RunContext) -> float:
    return ctx.opt_seconds("prefix.budget_s", BUDGET_QUICK_S if ctx.quick else BUDGET_FULL_S)


def _timed(ctx: RunContext, fn: Callable[[], Any], *, budget_s: float, stream: Any = None,
           setup: Callable[[], Any] | None = None, warmup_cap: int | None = None
           ) -> tuple[list[float], int]:
    """(seconds per timed sample, warm-up runs done). CUDA events on ``stream`` when
    given, else the host clock. Warm-up runs stop once they have taken half the budget;
    samples are capped so they fit in the budget, but never fewer than MIN_SAMPLES
    (or --samples, if smaller). ``setup`` runs before every run, untimed."""
    from kvbench.timing import time_cuda, time_host

    def timer(warmup: int, samples: int) -> list[float]:
        if stream is not None:
            return time_cuda(fn, warmup=warmup, samples=samples, stream=stream, setup=setup)
        return time_host(fn, warmup=warmup, samples=samples, setup=setup)

    want_warm = ctx.warmup if warmup_cap is None else min(ctx.warmup, warmup_cap)
    t0, warm = time.perf_counter(), 0
    while warm < want_warm:
        timer(1, 0)
        warm += 1
        if time.perf_counter() - t0 > budget_s / 2:
            break
    first = timer(0, 1)
    floor = min(MIN_SAMPLES, ctx.samples)
    n = max(floor, min(ctx.samples, int(budget_s / max(first[0], 1e-9))))
    return first + (timer(0, n - 1) if n > 1 else []), warm


def _method_config(ctx: RunContext, cfg: dict[str, Any], notes: list[str], secs: list[float],
                   warm: int, warmup_cap: int | None = None) -> None:
    cfg["warmup"] = warm
    cfg["samples"] = len(secs)
    want_warm = ctx.warmup if warmup_cap is None else min(ctx.warmup, warmup_cap)
    if len(secs) < ctx.samples or warm < want_warm:
        notes.append(f"{warm} warm-up runs and {len(secs)} samples (asked {ctx.warmup} and "
                     f"{ctx.samples}): capped by a per-case time budget of {_budget(ctx):g} s "
                     "(--set prefix.budget_s)")


def _spec(ctx: RunContext) -> PageSpec:
    return PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, "block")


def _base_cfg(ctx: RunContext, source: str, tokens: int) -> dict[str, Any]:
    return {"source": source, "prefix_tokens": tokens, "model": ctx.model.name,
            "format": ctx.formats[0], "device": ctx.device,
            "kv_bytes": ctx.model.kv_bytes_for_sequence(tokens, ctx.formats[0])}


def _load_cfg(ctx: RunContext, source: str, tokens: int, spec: PageSpec, n: int) -> dict[str, Any]:
    cfg = _base_cfg(ctx, source, tokens)
    cfg.update(spec.describe(), pages=n, bytes=n * spec.page_bytes)
    return cfg


def _name(tokens: int, source: str) -> str:
    return f"{tokens}tok/{source}"
