"""transformers integration (issue 13): a ``Cache`` backed by kvbench's paged store and an
attention that reads its pages.

``PagedCache`` keeps every layer's K/V in kvbench pages, quantized with a kvbench format
by the torch reference codecs, on one tier (hbm, dram, nvme, ...) or as a hot window of
recent tokens on one tier with the rest on another (``kvbench.hf.pages``).
``kvbench.hf.attention`` registers ``kvbench_paged`` with transformers' attention
interface: the model's attention reads the pages itself (fused paged decode on CUDA).
``kvbench.hf.e2e`` builds models and times generation for ``kvbench run --bench e2e``.
transformers is imported only here (and in the modules below), never by the rest of
kvbench.
"""

from kvbench.hf.attention import ATTENTION_NAME, register, use_paged_attention
from kvbench.hf.cache import PagedCache, PagedLayer, model_spec_from_config

__all__ = ["ATTENTION_NAME", "PagedCache", "PagedLayer", "model_spec_from_config", "register",
           "use_paged_attention"]
