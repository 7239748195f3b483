"""kvbench's attention on CUDA (GPU only: skipped with the reason elsewhere; kept apart from
tests/test_hf.py, which CI runs in full against two transformers versions): the fused
paged-decode kernel reads the cache's hbm pages, alone and under an HBM window over DRAM."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import requires_cuda  # noqa: E402
from kvbench.hf import PagedCache  # noqa: E402
from test_hf import NEW, PROMPT, cache_kw, inputs, teacher_forced, tiny  # noqa: E402


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["fp16", "fp8_e4m3", "nvfp4"])
@pytest.mark.parametrize("hot", [None, "hbm"], ids=["all-hbm", "hbm-window+dram"])
def test_fused_paged_attention_on_cuda(fmt, hot):
    """On CUDA, kvbench's attention reads hbm pages with the fused decode kernel (and, with
    a hot window, cold dram pages staged into hbm). Teacher-forced greedy choices agree with
    DynamicCache's for fp16 (the kernel sums in another order than sdpa, so a near-tie of a
    random model may flip: >= 95%); fp8 and nvfp4 run and agree above chance."""
    from kvbench.hf.attention import use_paged_attention

    model = tiny("llama", torch.float16).to("cuda")
    ids, _ = inputs()
    ids = ids.to("cuda")
    mask = torch.ones_like(ids)  # no padding: the fused path takes none
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         pad_token_id=0, **cache_kw(model, transformers.DynamicCache()))[:, PROMPT:]
    kw = dict(tier="dram", hot_tier="hbm", hot_window=16) if hot else dict(tier="hbm")
    with PagedCache(model.config, fmt=fmt, tokens_per_page=16, **kw) as cache, use_paged_attention(model):
        got = teacher_forced(model, cache, ref, ids, mask)
        assert cache.attention_paths["fused"] >= NEW * 2, cache.attention_paths
    agree = (got == ref).float().mean().item()
    assert agree >= (0.95 if fmt == "fp16" else 0.2), agree
