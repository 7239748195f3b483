"""What each transfer case holds at once (kvbench.footprint): upper bounds read off the
cases' code in ``files`` and ``gpu``, in bytes by kind (device / pinned / pageable /
file). Host rows a case allocates with ``pin=ctx.cuda`` are pinned with CUDA and
pageable without; buffers it allocates pinned always (GPU cases only run with CUDA)
are pinned. Temporaries are summed with what they coexist with, never netted out, so
a figure may exceed the true peak by a few buffers, never fall below it. Pure
arithmetic: no torch import."""

from __future__ import annotations

from kvbench.bench import RunContext
from kvbench.bench.transfer.common import _pages_for, ceiling_bytes, sample_bytes
from kvbench.footprint import on_tier, total
from kvbench.spec import PageSpec, get_format
from kvbench.tiers import tier_class
from kvbench.units import MiB, align_up

#: O_DIRECT row alignment of a file pool (kvbench.tiers.nvme.DIRECT_ALIGN)
FILE_ALIGN = 4096
#: a bf16 4096 x 4096 matmul's input and output (gpu.overlap_case)
OVERLAP_MATMUL_BYTES = 2 * 4096 * 4096 * 2


def _host(ctx: RunContext) -> str:
    """The kind of host rows allocated with ``pin=ctx.cuda``."""
    return "pinned" if ctx.cuda else "pageable"


def _file_pages(ctx: RunContext, fmt: str, layout: str, tokens: int, direction: str, component: str = ""):
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout, component)
    n = _pages_for(spec, sample_bytes(ctx, direction))
    return n, spec.page_bytes, align_up(spec.page_bytes, FILE_ALIGN)


def file_read(ctx: RunContext, fmt: str, layout: str, tokens: int, cache: str, component: str = "") -> dict[str, int]:
    """files.file_read_case, n pages of ``transfer.file_bytes``: the file pool of 2n
    rows of the 4 KiB-aligned stride; the n-row ``out`` buffer (pinned with CUDA); on
    pageable memory the fill data (2n pages, then the n read back kept to compare), and
    either the warm copy of the whole file (warm) or the ceiling's own n-row destination
    (cold). The page cache the file occupies is the kernel's to reclaim: not counted."""
    n, pb, stride = _file_pages(ctx, fmt, layout, tokens, "nvme->dram", component)
    extra = 2 * n * stride if cache == "warm" else n * stride
    return total({"file": 2 * n * stride, _host(ctx): n * stride},
                 {"pageable": 2 * n * pb + n * pb + extra})


def file_write(ctx: RunContext, fmt: str, layout: str) -> dict[str, int]:
    """files.file_write_case, n pages of ``transfer.file_bytes``: the file pool of 2n
    strided rows; the n-row ``src`` (pinned with CUDA); on pageable memory the n random
    pages, the 2n pages the file is filled with and the n rows read back to verify."""
    n, pb, stride = _file_pages(ctx, fmt, layout, ctx.tokens_per_page, "dram->nvme")
    return total({"file": 2 * n * stride, _host(ctx): n * stride},
                 {"pageable": n * pb + 2 * n * pb + n * stride})


def _contiguous(src: str, dst: str, nbytes: int) -> dict[str, int]:
    """gpu._contiguous_buffers: ``nbytes`` on each end (host ends pinned), plus the
    random source generated on the device when the source is device memory."""
    dev_src = tier_class(src).device_memory
    return total(on_tier(src, nbytes, True), on_tier(dst, nbytes, True),
                 {"device": nbytes if dev_src else 0})


def _pools(ctx: RunContext, src: str, dst: str, n: int, pb: int) -> dict[str, int]:
    """gpu._Pools and its verify: 2n pages on each tier, the n random pages on the
    device, their pageable copy when written to a host pool, and the n pages read back
    (on the destination, then moved to the device to compare: 2 x n on the device
    covers the contiguous-span check's two device copies too)."""
    host_src = not tier_class(src).device_memory
    return total(on_tier(src, 2 * n * pb, ctx.cuda), on_tier(dst, 2 * n * pb, ctx.cuda),
                 {"device": n * pb + 2 * n * pb, "pageable": n * pb if host_src else 0},
                 on_tier(dst, n * pb, ctx.cuda))


def gpu_paged(ctx: RunContext, direction: str, fmt: str, layout: str, tokens: int) -> dict[str, int]:
    """gpu.gpu_paged_case, n pages of ``transfer.bytes``: the pools (``_pools``) and the
    contiguous ceiling pair of the same n pages' bytes (``_contiguous``); for
    ``dram<->hbm`` both directions' pools and pairs at once."""
    spec = PageSpec(ctx.model, get_format(fmt), tokens, layout)
    n, pb = _pages_for(spec, sample_bytes(ctx, direction)), spec.page_bytes
    legs = [("dram", "hbm"), ("hbm", "dram")] if direction == "dram<->hbm" else [tuple(direction.split("->"))]
    return total(*(total(_pools(ctx, s, d, n, pb), _contiguous(s, d, n * pb)) for s, d in legs))


def ceiling(ctx: RunContext, direction: str) -> dict[str, int]:
    """gpu.ceiling_case, ``transfer.ceiling_bytes`` each: the contiguous pair(s) and, to
    verify, a pageable copy of each device-memory end (both directions at once compare
    4 KiB slices only)."""
    nb = ceiling_bytes(ctx)
    if direction == "dram<->hbm":
        return total(_contiguous("dram", "hbm", nb), _contiguous("hbm", "dram", nb))
    src, dst = direction.split("->")
    ends = sum(tier_class(t).device_memory for t in (src, dst))
    return total(_contiguous(src, dst, nb), {"pageable": ends * nb})


def nvme_to_hbm(ctx: RunContext, fmt: str, layout: str) -> dict[str, int]:
    """gpu.nvme_to_hbm_case, n pages of ``transfer.file_bytes``: the file pool (2n
    strided rows); on the device the 2n-page destination pool, two staging chunks
    (at most 8 MiB of rows or one row each), the page ids and the n pages read back;
    pinned, two staging chunks; pageable, the fill data (2n pages, n kept), the
    ceiling's n-row destination and the n pages read back to compare."""
    n, pb, stride = _file_pages(ctx, fmt, layout, ctx.tokens_per_page, "nvme->hbm")
    chunk = max(1, min(n, (8 * MiB) // stride)) * stride
    return {"file": 2 * n * stride, "device": 2 * n * pb + 2 * chunk + 8 * n + n * pb,
            "pinned": 2 * chunk, "pageable": 3 * n * pb + n * stride + n * pb}


def gds_read(ctx: RunContext, fmt: str, layout: str) -> dict[str, int]:
    """gds.gds_read_case, n pages of ``transfer.file_bytes``: the file pool (2n strided
    rows); on the device the 2n-row destination pool (at the file's stride), the staged
    pipeline's two chunks (at most 8 MiB of rows or one row each) and page ids, and the
    n pages read back; pinned, the pipeline's two staging chunks; pageable, the fill data
    (2n pages, n kept), the ceiling's n-row destination and the n pages read back."""
    n, pb, stride = _file_pages(ctx, fmt, layout, ctx.tokens_per_page, "nvme->hbm")
    chunk = max(1, min(n, (8 * MiB) // stride)) * stride
    return {"file": 2 * n * stride, "device": 2 * n * stride + 2 * chunk + 8 * n + n * pb,
            "pinned": 2 * chunk, "pageable": 3 * n * pb + n * stride + n * pb}


def gds_write(ctx: RunContext, fmt: str, layout: str) -> dict[str, int]:
    """gds.gds_write_case, n pages of ``transfer.file_bytes``: the file pool (2n strided
    rows); on the device the n-row source pool (at the file's stride) and the n random
    pages; pinned, the ceiling's n-row source; pageable, the 2n pages the file is filled
    with, the n rows read back and the n pages they are compared with."""
    n, pb, stride = _file_pages(ctx, fmt, layout, ctx.tokens_per_page, "hbm->nvme")
    return {"file": 2 * n * stride, "device": n * stride + n * pb, "pinned": n * stride,
            "pageable": 2 * n * pb + n * stride + n * pb}


def overlap(ctx: RunContext, direction: str) -> dict[str, int]:
    """gpu.overlap_case: the pools of n pages of ``transfer.bytes`` (``_pools``) and
    the bf16 matmul's 4096 x 4096 input and output on the device."""
    spec = PageSpec(ctx.model, get_format(ctx.formats[0]), ctx.tokens_per_page, "layer")
    n = _pages_for(spec, sample_bytes(ctx, direction))
    src, dst = direction.split("->")
    return total(_pools(ctx, src, dst, n, spec.page_bytes), {"device": OVERLAP_MATMUL_BYTES})
