"""The measurement layer every benchmark uses, and benchmarks never import each other:

- ``limits``: GB/s arithmetic, physical limits, ceilings, flags, page-cache labels;
- ``kvbench.stats`` (below this layer, re-exported here): summaries, the confidence
  interval of a median, paired ratios;
- ``paired``: interleaved, adaptive sampling of the figures a ratio is taken from;
- ``fio``: fio run on the same file as an external reference;
- ``staged``: the one file -> (pinned) staging -> destination reader pipeline;
- ``speed``: the Triton quantize / dequantize kernels' GB/s next to a device copy (the
  accuracy benchmark's speed cases).

GB = 1e9 bytes throughout. ``limits``, ``paired`` and ``fio`` import no torch."""

from kvbench.measure.limits import (  # noqa: F401
    CEILING_BENCH, CEILING_TOLERANCE, COLD_RESIDENT_MAX, above_ceiling, ceiling_case_for,
    ceiling_for, check_limits, flag, gbps, label_cache, pcie_limit, physical_limit)
from kvbench.stats import median_ci, paired_ratio, summarize  # noqa: F401
