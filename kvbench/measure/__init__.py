"""The measurement layer every benchmark uses, and benchmarks never import each other:

- ``limits``: GB/s arithmetic, physical limits, ceilings, flags, page-cache labels;
- ``stats``: summaries, the confidence interval of a median, paired ratios;
- ``paired``: interleaved, adaptive sampling of the figures a ratio is taken from;
- ``fio``: fio run on the same file as an external reference;
- ``staged``: the one file -> (pinned) staging -> destination reader pipeline.

GB = 1e9 bytes throughout. ``limits``, ``stats``, ``paired`` and ``fio`` import no torch."""

from kvbench.measure.limits import (  # noqa: F401
    CEILING_BENCH, CEILING_TOLERANCE, COLD_RESIDENT_MAX, above_ceiling, ceiling_case_for,
    ceiling_for, check_limits, flag, gbps, label_cache, pcie_limit, physical_limit)
from kvbench.measure.stats import median_ci, paired_ratio, summarize  # noqa: F401
