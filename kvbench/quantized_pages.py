"""Quantize K/V into a page pool and dequantize pages back, with a chosen backend: the
torch reference (``kvbench.formats.paged``) or the Triton kernels (``kernels/quant.py``,
loaded as ``kvbench_kernels.quant``). Both write and read the same bytes.

This module sits above both (formats are the ground layer and import no kernels);
callers that want "the fast path where there is one" use it, callers that want the
reference import ``kvbench.formats.paged`` directly.
"""

from __future__ import annotations

import torch

from kvbench.errors import KvbenchError
from kvbench.formats import paged
from kvbench.spec import PageSpec

#: "torch": the reference; "triton": the kernels (compiled on CUDA, interpreted on the
#: CPU under TRITON_INTERPRET=1); "auto": the kernels for CUDA pools, else the reference
BACKENDS = ("auto", "torch", "triton")


def pick_backend(backend: str, pool: torch.Tensor) -> str:
    """The backend that serves ``pool``: "torch" or "triton"."""
    if backend not in BACKENDS:
        raise KvbenchError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if pool.is_cuda else "torch"
    return backend


def _kernels():
    from kvbench.kernels_loader import load_kernels

    return load_kernels("quant")


def quantize_to_pages(k: torch.Tensor, v: torch.Tensor | None, pool: torch.Tensor,
                      page_ids: torch.Tensor, slots: torch.Tensor, spec: PageSpec,
                      side: torch.Tensor | None = None, *, layer: int = 0,
                      backend: str = "auto") -> None:
    """Quantize N tokens of one layer into their (page, slot) positions of a pool.

    Arguments as ``kvbench.formats.paged.quantize_to_pages`` (k, v ``[N, H, D]``, pool
    uint8 ``[num_pages, stride]``, page_ids / slots int ``[N]``, side fp32
    ``[num_layers, kv_factor, S]`` or None); backend: one of BACKENDS.
    """
    if pick_backend(backend, pool) == "triton":
        _kernels().quantize_to_pages(k, v, pool, page_ids, slots, spec, side, layer=layer)
        return
    paged.quantize_to_pages(k, v, pool, page_ids, slots, spec, side, layer=layer)


def dequantize_pages(pool: torch.Tensor, block_table: torch.Tensor, spec: PageSpec,
                     side: torch.Tensor | None = None, *, layer: int = 0,
                     dtype: torch.dtype = torch.float16, backend: str = "auto",
                     check: bool = True):
    """Read and dequantize pages of one layer: ``(k, v)``, each ``[..., P*T, H, D]`` in
    ``dtype`` (v None for MLA), as ``kvbench.formats.paged.dequantize_pages``.
    check=False skips the Triton path's page-id range check (a device-to-host sync):
    timed loops pass it once the table is known good."""
    if pick_backend(backend, pool) == "triton":
        return _kernels().dequantize_pages(pool, block_table, spec, side, layer=layer,
                                           dtype=dtype, check=check)
    return paged.dequantize_pages(pool, block_table, spec, side, layer=layer, dtype=dtype)
