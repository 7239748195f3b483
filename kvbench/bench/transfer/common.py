"""The transfer benchmark's settings and helpers every case uses: directions and the
tier kinds at their ends, sample sizes, queue depths, page counts, seeded orders."""

from __future__ import annotations

import random
from typing import Any

from kvbench import movers
from kvbench.bench import RunContext
from kvbench.spec import PageSpec
from kvbench.tiers import tier_class


from kvbench.units import MiB

BENCH_KEY = "transfer"

GPU_DIRECTIONS = ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm", "nvme->hbm", "hbm->nvme")
FILE_DIRECTIONS = ("nvme->dram", "dram->nvme")
SWEEP_TOKENS = (16, 32, 64, 128, 256, 512, 1024)
SWEEP_TOKENS_QUICK = (16, 64, 256, 1024)

#: file cases sample each arm this many times in a row per round: 1, strict
#: alternation (on the CI VM's virtual disk, blocks of 4 pair kvbench with fio 5%
#: worse than strict alternation: the disk's state drifts within a second)
FILE_BLOCK = 1
#: request sizes a sequential read ceiling tries (with the page's own size), the best kept
SEQ_READ_REQUESTS = (1 * 2 ** 20, 4 * 2 ** 20)

#: bidirectional per_page copies alternate between the two streams every this many pages
PER_PAGE_CHUNK = 256




# ----------------------------------------------------------------------------- tiers
def _ends(direction: str) -> tuple[str, str]:
    """'dram->hbm' or 'dram<->hbm' -> ('dram', 'hbm')."""
    src, _, dst = direction.replace("<->", "->").partition("->")
    return src, dst


def _kinds(direction: str) -> tuple[str, str]:
    """The (source, destination) tier kinds of a direction: ('host', 'device')."""
    src, dst = _ends(direction)
    return tier_class(src).kind(), tier_class(dst).kind()


# ----------------------------------------------------------------------------- sizes
def sample_bytes(ctx: RunContext, direction: str) -> int:
    """Bytes moved per timed sample (enough that per-call overheads are visible but
    a sample lasts milliseconds, not seconds)."""
    if "file" in _kinds(direction):
        return file_bytes(ctx)
    return ctx.opt_size("transfer.bytes", (64 if ctx.quick else 512) * MiB,
                        ctx.host_memory_bytes(), "host memory")


def file_bytes(ctx: RunContext) -> int:
    """Bytes per sample to and from files: they live in a file on the nvme disk and in
    host memory, so at most the smaller of the disk's free space and host memory."""
    default = (32 if ctx.quick else 256) * MiB
    if "transfer.file_bytes" not in ctx.options:
        return default
    caps = [(c, w) for c, w in ((ctx.disk_free_bytes(), f"the free space of {ctx.nvme_dir}"),
                                (ctx.host_memory_bytes(), "host memory")) if c]
    cap, where = min(caps) if caps else (None, "")
    return ctx.opt_size("transfer.file_bytes", default, cap, where)


def ceiling_bytes(ctx: RunContext) -> int:
    """Bytes of a contiguous ceiling copy (both buffers may be in host memory)."""
    return ctx.opt_size("transfer.ceiling_bytes", (256 if ctx.quick else 1024) * MiB,
                        ctx.host_memory_bytes(), "host memory")


def depth_sweep(ctx: RunContext) -> list[int]:
    """Queue depths of O_DIRECT file I/O: requests in flight, one per thread."""
    return ctx.opt_list("transfer.queue_depths", [1, 4, 16, 64])


def fio_engine(method: str) -> str:
    """fio's ioengine for a file copy method's I/O (its registry entry's)."""
    return movers.copy_method(method).fio_engine


def _pages_for(spec: PageSpec, nbytes: int) -> int:
    return max(2, nbytes // spec.page_bytes)


def _rng(ctx: RunContext, *key: Any) -> random.Random:
    return random.Random(f"{ctx.seed}/{'/'.join(map(str, key))}")


def _cfg(ctx: RunContext, direction: str, spec: PageSpec, method: str, n: int, kind: str,
         depth: int | None = None) -> dict[str, Any]:
    src, dst = _ends(direction)
    cfg = {"kind": kind, "direction": direction, "src": src, "dst": dst, "method": method,
           "pages": n, "bytes": n * spec.page_bytes, "model": ctx.model.name, **spec.describe()}
    if depth is not None:
        cfg["queue_depth"] = depth
    return cfg


def _name(direction: str, spec: PageSpec, method: str, depth: int | None = None,
          cache: str | None = None, kind: str = "paged") -> str:
    """Unique within the bench: sweep cases carry their kind in front; pages of a model's
    other KV component (PageSpec.component) its name after the layout, ``tok`` then
    counting that component's entries per page."""
    comp = [spec.component] if spec.component else []
    parts = ([kind] if kind != "paged" else []) + [direction, spec.layout, *comp, spec.fmt.name,
                                                   f"{spec.tokens}tok", method]
    if depth is not None:
        parts.append(f"qd{depth}")
    if cache:
        parts.append(cache)
    return "/".join(parts)


def budget_s(ctx: RunContext) -> float:
    """Seconds a case may sample for before it stops short of its target interval."""
    return ctx.opt_seconds("transfer.budget_s", 6.0 if ctx.quick else 20.0)


def fio_wanted(ctx: RunContext) -> bool:
    """--set transfer.fio=on|off (default on: fio runs beside file cases where installed)."""
    from kvbench.errors import KvbenchError

    v = ctx.opt("transfer.fio", "on").strip().lower()
    if v not in ("on", "off"):
        raise KvbenchError(f"--set transfer.fio={v!r}: expected on or off")
    return v == "on"
