"""KV sizes from model configs and formats: golden numbers from the models' own
configs (shared/reference/limits-and-anchors.md) and the format table."""

import pytest

from kvbench.errors import KvbenchError
from kvbench.spec import FORMATS, PageSpec, get_format, list_models, load_model, model_from_dict

# FP16 bytes per token: 2 (K,V) x layers x KV heads x head dim x 2 B; MLA: layers x 576 x 2 B
GOLDEN_FP16 = {
    "Llama-3.1-8B": 131_072,
    "Llama-3.1-70B": 327_680,
    "Llama-3.1-405B": 516_096,   # 2 x 126 x 8 x 128 x 2
    "Qwen3-32B": 262_144,
    "Qwen3-235B-A22B": 192_512,  # 2 x 94 x 4 x 128 x 2
    "Mistral-7B": 131_072,
    "DeepSeek-V3": 70_272,       # 61 x (512 + 64) x 2, no factor 2
    "GLM-4.5": 376_832,          # 2 x 92 x 8 x 128 x 2
    "gpt-oss-120b": 36_864,      # 18 full layers x 2 x 8 x 64 x 2 (slope)
    "ms-reference": 393_216,
    # the growing components' slope (tests/test_model_shapes.py has the arithmetic)
    "DeepSeek-V3.2": 85_888,     # 61 x (576 latent + 128 indexer key) x 2
    "GLM-5": 109_824,            # 78 x (576 + 128) x 2
    "DeepSeek-V4-Pro": 9_848,    # 30 CSA x (512 + 128) x 2 / 4 + 31 HCA x 512 x 2 / 128
    "DeepSeek-V4-Flash": 6_880,  # 21 CSA x (512 + 128) x 2 / 4 + 20 HCA x 512 x 2 / 128
}


def test_every_model_config_has_a_golden_number():
    assert set(list_models()) == set(GOLDEN_FP16)


@pytest.mark.parametrize("name", sorted(GOLDEN_FP16))
def test_fp16_bytes_per_token(name):
    m = load_model(name)
    assert m.kv_bytes_per_token("fp16") == GOLDEN_FP16[name]
    assert m.kv_bytes_per_token("bf16") == GOLDEN_FP16[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_FP16))
def test_quantized_formats_scale_with_bits(name):
    m = load_model(name)
    fp16 = m.kv_bytes_per_token("fp16")
    assert m.kv_bytes_per_token("fp8_e4m3") * 2 == fp16
    assert m.kv_bytes_per_token("nvfp4") * 16 == fp16 * 4.5   # 4 bits + e4m3 per 16
    assert m.kv_bytes_per_token("mxfp4") * 16 == fp16 * 4.25  # 4 bits + e8m0 per 32
    # per token-and-head fp32 scale: 4 B per stored vector (per token: full layers x K,V x
    # KV heads for mha/gqa/mla; a compressed component's vectors count 1/m per token)
    vectors = m.kv_vectors_per_token()
    assert m.kv_bytes_per_token("fp8_e4m3_token_head") == fp16 // 2 + 4 * vectors


def test_bits_per_element_match_published_table():
    assert FORMATS["fp16"].bits_per_element(128) == 16
    assert FORMATS["fp8_e4m3_token_head"].bits_per_element(128) == 8.25
    assert FORMATS["nvfp4"].bits_per_element(128) == 4.5
    assert FORMATS["mxfp4"].bits_per_element(128) == 4.25


def test_sliding_window_model_is_constant_plus_slope():
    m = load_model("gpt-oss-120b")
    per_layer = 2 * 8 * 64 * 2
    assert m.sliding_layers == 18 and m.full_layers == 18
    assert m.kv_bytes_per_sequence_constant() == 18 * 128 * per_layer == 4_718_592
    assert m.kv_bytes_for_sequence(64) == 36 * 64 * per_layer
    assert m.kv_bytes_for_sequence(10_000) == 10_000 * 36_864 + 4_718_592


def test_out_of_page_scales():
    m = load_model("Llama-3.1-8B")
    assert m.tensor_scale_bytes("fp16") == 0
    assert m.tensor_scale_bytes("fp8_e4m3") == 32 * 2 * 4
    assert m.tensor_scale_bytes("fp8_e4m3_head") == 32 * 2 * 8 * 4
    assert m.tensor_scale_bytes("nvfp4") == 32 * 2 * 4


def test_page_bytes_both_layouts():
    m = load_model("Llama-3.1-8B")
    assert PageSpec(m, get_format("fp16"), 16, "layer").page_bytes == 16 * 4096
    assert PageSpec(m, get_format("fp16"), 16, "block").page_bytes == 16 * 131_072
    assert PageSpec(m, get_format("fp16"), 16, "layer").pages_for_tokens(17) == 2 * 32
    assert PageSpec(m, get_format("fp16"), 16, "block").pages_for_tokens(17) == 2


def test_names_are_case_insensitive_and_unknowns_are_clear():
    assert load_model("llama-3.1-8b").name == "Llama-3.1-8B"
    with pytest.raises(KvbenchError, match="unknown model 'nope'; known:"):
        load_model("nope")
    with pytest.raises(KvbenchError, match="unknown KV format 'fp7'"):
        get_format("fp7")


def test_model_file_validation_names_the_field():
    base = {"name": "x", "attention_type": "gqa", "source_url": "u", "retrieved": "2026-01-01",
            "config": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "head_dim": 64}}
    assert model_from_dict(base).kv_bytes_per_token() == 2 * 2 * 2 * 64 * 2
    for missing in ("source_url", "config", "attention_type"):
        bad = {k: v for k, v in base.items() if k != missing}
        with pytest.raises(KvbenchError, match=missing):
            model_from_dict(bad)
    bad = dict(base, config=dict(base["config"], num_key_value_heads=0))
    with pytest.raises(KvbenchError, match="num_key_value_heads"):
        model_from_dict(bad)
    with pytest.raises(KvbenchError, match="attention_type"):
        model_from_dict(dict(base, attention_type="linear"))


def test_block_formats_need_divisible_head_dim():
    with pytest.raises(KvbenchError, match="multiple of its 32-element block"):
        FORMATS["mxfp4"].vector_bytes(48)
