"""kvbench.hf.PagedCache against transformers' DynamicCache: tiny random-weight Llama,
Qwen3 and Mistral models (2 layers, hidden 64, 4 heads, 2 KV heads, vocab 128), greedy
generation of a left-padded batch of 2 on the dram and nvme tiers."""

import contextlib
import inspect
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvbench.errors import KvbenchError  # noqa: E402
from kvbench.hf import PagedCache  # noqa: E402
from kvbench.hf.pages import LEVEL  # noqa: E402

NEW = 64
PROMPT = 11
PAD = 4  # left padding of row 0
MODELS = ("llama", "qwen3", "mistral")


def tiny(kind: str, dtype: torch.dtype):
    """A random-weight model of ``kind`` in ``dtype`` (CPU, sdpa attention)."""
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, attn_implementation="sdpa")
    cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM")}[kind]
    extra = {"sliding_window": None} if kind == "mistral" else {}
    cfg = getattr(transformers, cls[0])(**common, **extra)
    torch.manual_seed(0)
    return getattr(transformers, cls[1])(cfg).to(dtype).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :PAD], mask[0, :PAD] = 0, 0
    return ids, mask


def cache_kw(model, cache):
    """``cache=`` where the model takes it (transformers >= 5.2x), else ``past_key_values=``."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def generate(model, cache):
    ids, mask = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=False, pad_token_id=0, **cache_kw(model, cache))
    return out[:, PROMPT:]


def teacher_forced(model, cache, tokens, ids=None, mask=None):
    """Per step, the model's greedy choice given the reference's tokens so far: [2, NEW]
    (prompt: ``inputs()`` unless ``ids``/``mask`` are given)."""
    if ids is None:
        ids, mask = inputs()
    picks = []
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = model(ids, attention_mask=mask, position_ids=pos, **cache_kw(model, cache))
        for step in range(NEW):
            picks.append(out.logits[:, -1].argmax(-1))
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(tokens[:, step:step + 1], attention_mask=mask, position_ids=pos,
                        **cache_kw(model, cache))
    return torch.stack(picks, dim=1)


LOSSLESS = [("fp16", torch.float16), ("bf16", torch.bfloat16)]


@pytest.mark.parametrize("tier", ["dram", "nvme"])
@pytest.mark.parametrize("fmt,dtype", LOSSLESS, ids=[f for f, _ in LOSSLESS])
@pytest.mark.parametrize("kind", MODELS)
def test_lossless_pages_generate_what_dynamic_cache_does(kind, fmt, dtype, tier, nvme_dir):
    model = tiny(kind, dtype)
    ref = generate(model, transformers.DynamicCache())
    with PagedCache(model.config, fmt=fmt, tier=tier, nvme_dir=nvme_dir) as cache:
        got = generate(model, cache)
        assert cache.get_seq_length() == PROMPT + NEW - 1
        assert cache.pool.tier.name == tier
    assert torch.equal(got, ref)
    assert not list(nvme_dir.iterdir())  # close() left no file behind


@pytest.mark.parametrize("tier", ["dram", "nvme"])
@pytest.mark.parametrize("fmt,dtype", LOSSLESS, ids=[f for f, _ in LOSSLESS])
def test_lossless_round_trip_is_bit_exact(fmt, dtype, tier, nvme_dir):
    """What update returns is what went in, bit for bit, across page boundaries."""
    model = tiny("llama", dtype)
    g = torch.Generator().manual_seed(2)
    chunks = [torch.randn(2, 2, n, 16, generator=g).to(dtype) for n in (13, 1, 1, 20)]
    with PagedCache(model.config, fmt=fmt, tier=tier, nvme_dir=nvme_dir, tokens_per_page=8) as cache:
        for layer in range(2):
            for i, c in enumerate(chunks):
                k, v = cache.update(c, -c, layer)
                want = torch.cat(chunks[: i + 1], dim=2)
                assert k.dtype == dtype and torch.equal(k.view(torch.int16), want.view(torch.int16))
                assert torch.equal(v.view(torch.int16), (-want).view(torch.int16))
        assert cache.get_seq_length() == 35 and len(cache.pages.tables[1][0]) == 5


@pytest.mark.parametrize("attention", ["copy", "paged"])
@pytest.mark.parametrize("tier,hot,window", [("nvme", "dram", 8), ("nvme", "dram", 21)],
                         ids=["window8", "window21"])
def test_hot_window_generates_what_dynamic_cache_does(tier, hot, window, attention, nvme_dir):
    """A hot window of recent tokens in dram, the rest on nvme: pages move to the cold tier as
    they age, and generation still equals DynamicCache's, with the model's attention over a
    copy and with kvbench's attention reading the pages."""
    from kvbench.hf.attention import use_paged_attention

    model = tiny("llama", torch.float16)
    ref = generate(model, transformers.DynamicCache())
    with PagedCache(model.config, fmt="fp16", tier=tier, hot_tier=hot, hot_window=window,
                    tokens_per_page=4, nvme_dir=nvme_dir) as cache:
        if attention == "paged":
            with use_paged_attention(model):
                got = generate(model, cache)
            assert cache.attention_paths["reference"] > 0 and not cache.attention_paths["copy"]
        else:
            got = generate(model, cache)
            assert cache.attention_paths["copy"] > 0
        d = cache.describe()
        assert d["hot_window_tokens"] == window and d["cold_pages_used"] > 0
        hot_pages_per_row = max(sum(1 for i in t if i < LEVEL) for t in cache.pages.tables[0])
        assert hot_pages_per_row <= -(-window // 4) + 1
    assert torch.equal(got, ref)
    assert model.config._attn_implementation == "sdpa"  # switched back
    assert not list(nvme_dir.iterdir())


@pytest.mark.parametrize("kind", MODELS)
def test_paged_attention_generates_what_dynamic_cache_does(kind, nvme_dir):
    """kvbench's attention (registered with transformers) over dram pages, left-padded batch."""
    from kvbench.hf.attention import use_paged_attention

    model = tiny(kind, torch.float16)
    ref = generate(model, transformers.DynamicCache())
    with PagedCache(model.config, fmt="fp16", tier="dram") as cache, use_paged_attention(model):
        got = generate(model, cache)
        assert set(cache.attention_paths) == {"reference"}  # no CUDA here: the torch reference
    assert torch.equal(got, ref)


@pytest.fixture
def second_host_tier():
    """A second host-memory tier (a DramTier under another name) for a three-tier chain on
    a machine whose only tiers are dram and nvme; unregistered after the test."""
    from kvbench.tiers import TIERS, DramTier, register_tier

    cls = type("SecondDram", (DramTier,), {"name": "dram_b"})
    register_tier(cls)
    yield "dram_b"
    del TIERS["dram_b"]


@pytest.mark.parametrize("attention", ["copy", "paged"])
def test_three_tiers_by_age(second_host_tier, attention, nvme_dir):
    """A chain of three tiers: the newest 8 tokens on the first, the next 12 on the second,
    the rest on nvme. Pages land on the level their age gives (a prompt's old pages go
    straight to nvme), and generation equals DynamicCache's."""
    from kvbench.hf.attention import use_paged_attention

    model = tiny("llama", torch.float16)
    ref = generate(model, transformers.DynamicCache())
    chain = [("dram", 8), (second_host_tier, 12), ("nvme", 0)]
    with PagedCache(model.config, fmt="fp16", placement=chain, tokens_per_page=4, nvme_dir=nvme_dir) as cache:
        with use_paged_attention(model) if attention == "paged" else contextlib.nullcontext():
            got = generate(model, cache)
        length = cache.get_seq_length()  # PROMPT + NEW - 1 = 74 tokens
        levels = [r // LEVEL for r in cache.pages.tables[0][1]]
        # page p (tokens 4p..4p+3) is below level 0 once 4(p+1) <= 74 - 8, below level 1
        # once 4(p+1) <= 74 - 20: pages 0-12 on nvme, 13-15 on the second tier, 16-18 first
        assert levels == [2] * ((length - 20) // 4) + [1] * ((length - 8) // 4 - (length - 20) // 4) \
            + [0] * (len(levels) - (length - 8) // 4)
        d = cache.describe()
        assert [lv["window_tokens"] for lv in d["placement"]] == [8, 12, None]
    assert torch.equal(got, ref)
    assert not list(nvme_dir.iterdir())


def test_hot_window_round_trip_is_bit_exact(nvme_dir):
    model = tiny("llama", torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randn(2, 2, n, 16, generator=g).to(torch.bfloat16) for n in (13, 1, 1, 20, 3)]
    with PagedCache(model.config, fmt="bf16", tier="nvme", hot_tier="dram", hot_window=6,
                    tokens_per_page=4, nvme_dir=nvme_dir) as cache:
        for i, c in enumerate(chunks):
            for layer in range(2):
                k, v = cache.update(c, -c, layer)
                want = torch.cat(chunks[: i + 1], dim=2)
                assert torch.equal(k.view(torch.int16), want.view(torch.int16))
                assert torch.equal(v.view(torch.int16), (-want).view(torch.int16))
        table = cache.pages.tables[1][0]
        assert len(table) == 10 and sum(i >= LEVEL for i in table) == (38 - 6) // 4
        cache.reset()
        assert all(pool.num_used == 0 for pool in cache.pages.pools)


def test_quantized_formats_agree_in_order_of_precision():
    """fp8_e4m3 and nvfp4 run through generate; fp8's token agreement with DynamicCache is at
    least nvfp4's. Free-running greedy agreement of a random-weight model is chance once
    the two runs part (its logit margins are ~1e-3), so the order is asserted on the
    teacher-forced agreement (each step's choice given the reference's tokens), summed over
    the three models; the free-running figure is reported beside it."""
    free = {"fp8_e4m3": [], "nvfp4": []}
    forced = {"fp8_e4m3": [], "nvfp4": []}
    for kind in MODELS:
        model = tiny(kind, torch.float16)
        ref = generate(model, transformers.DynamicCache())
        assert torch.equal(teacher_forced(model, transformers.DynamicCache(), ref), ref)
        for fmt in free:
            with PagedCache(model.config, fmt=fmt) as cache:
                free[fmt].append((generate(model, cache) == ref).float().mean().item())
            with PagedCache(model.config, fmt=fmt) as cache:
                forced[fmt].append((teacher_forced(model, cache, ref) == ref).float().mean().item())
    mean = {f: sum(x) / len(x) for f, x in forced.items()}
    print(f"\ntoken agreement with DynamicCache, {MODELS}: free-running {free}; teacher-forced {forced}")
    assert mean["fp8_e4m3"] >= mean["nvfp4"], (forced, free)
    assert mean["fp8_e4m3"] > 0.5


def test_mask_sizes_take_a_length_or_cache_positions():
    model = tiny("qwen3", torch.float16)
    cache = PagedCache(model.config)
    cache.update(torch.zeros(2, 2, 5, 16, dtype=torch.float16), torch.zeros(2, 2, 5, 16, dtype=torch.float16), 0)
    layer = cache.layers[0]
    assert layer.get_mask_sizes(3) == (8, 0) == layer.get_mask_sizes(torch.arange(5, 8))
    assert cache.get_mask_sizes(1, 0) == (6, 0)
    assert layer.get_max_length() == -1 and not layer.is_sliding and not cache.is_compileable
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.pool.num_used == 0
    cache.close()


def test_refusals():
    model = tiny("llama", torch.float16)
    cache = PagedCache(model.config)
    x = torch.zeros(2, 2, 3, 16, dtype=torch.float16)
    cache.update(x, x, 0)
    with pytest.raises(KvbenchError, match="batch of 2"):
        cache.update(torch.zeros(3, 2, 1, 16, dtype=torch.float16), torch.zeros(3, 2, 1, 16, dtype=torch.float16), 1)
    with pytest.raises(NotImplementedError):
        cache.layers[0].reorder_cache(torch.tensor([1, 0]))
    cache.close()
    sliding = transformers.MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16, sliding_window=8,
                                         layer_types=["sliding_attention"] * 2)
    with pytest.raises(KvbenchError, match="full-attention"):
        PagedCache(sliding)
    with pytest.raises(KvbenchError, match="side"):
        PagedCache(model.config, side="bogus")
    with pytest.raises(KvbenchError, match="hot"):
        PagedCache(model.config, tier="dram", hot_tier="dram", hot_window=8)
    with pytest.raises(KvbenchError, match="hot_window"):
        PagedCache(model.config, tier="nvme", hot_tier="dram", hot_window=0)
    x = torch.zeros(2, 2, 3, 16, dtype=torch.float16)
    for chain, msg in (([("dram", 0), ("nvme", 0)], "positive window"), ([("dram", 8), ("dram", 0)], "once"),
                       ([("nvme", 8), ("dram", 0)], "must be local memory")):
        with pytest.raises(KvbenchError, match=msg):
            PagedCache(model.config, placement=chain).update(x, x, 0)
