"""A transformers ``Cache`` backed by kvbench's paged KV store (issue 13).

``PagedCache`` keeps every layer's K/V in kvbench pages on a tier (hbm, dram, nvme),
quantized with a kvbench format by the torch reference codecs. transformers is imported
only here (and in the modules below), never by the rest of kvbench.
"""

from kvbench.hf.cache import PagedCache, PagedLayer, model_spec_from_config

__all__ = ["PagedCache", "PagedLayer", "model_spec_from_config"]
