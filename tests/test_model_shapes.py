"""Compressed and indexed attention as model shapes (issue 15, part 2): DeepSeek-V3.2 and
GLM-5 (MLA plus the lightning indexer's keys), DeepSeek-V4-Pro and -Flash (a sliding window
of shared K=V entries, CSA entries one per 4 tokens plus indexer keys, HCA entries one per
128 tokens, fixed compressor state). Every golden number is worked out by hand below from
the config fields in configs/models/*.yaml (their provenance blocks cite each field)."""

import json

import pytest

from kvbench.cli import main
from kvbench.errors import KvbenchError
from kvbench.kvcomponents import STORED_LAYOUTS
from kvbench.spec import FORMATS, load_model, model_from_dict

M = 1_048_576  # "1M": DeepSeek-V4's max_position_embeddings

# Stored bytes of one vector, as shipped (kvbench/kvcomponents.py STORED_LAYOUTS):
V32_LATENT = 512 * 1 + (512 // 128) * 4 + 64 * 2  # 656: e4m3 + 4 fp32 scales + bf16 RoPE (FlashMLA)
V32_INDEX = 128 * 1 + 4                           # 132: e4m3 + one fp32 scale per 128
V4_ENTRY = 448 * 1 + (448 // 64) * 1 + 64 * 2 + 1  # 584: e4m3 + 7 e8m0 + bf16 RoPE + 1 pad (MODEL1)
V4_INDEX = 128 // 2 + 128 // 32                   # 68: mxfp4, e2m1 pairs + e8m0 per 32


def test_stored_layouts_are_the_published_byte_counts():
    assert STORED_LAYOUTS["ds_mla_fp8"].vector_bytes(576) == V32_LATENT == 656
    assert STORED_LAYOUTS["fp8_e4m3_b128"].vector_bytes(128) == V32_INDEX == 132
    assert STORED_LAYOUTS["ds_v4_fp8"].vector_bytes(512) == V4_ENTRY == 584
    assert FORMATS["mxfp4"].vector_bytes(128) == V4_INDEX == 68
    with pytest.raises(KvbenchError, match="holds 512-element vectors, not 576"):
        STORED_LAYOUTS["ds_v4_fp8"].vector_bytes(576)


# ---------------------------------------------------------------------- DeepSeek-V3.2
def test_v32_components_and_bytes():
    m = load_model("DeepSeek-V3.2")
    assert m.attention_type == "mla" and [c.name for c in m.components] == ["latent", "indexer_keys"]
    # 61 layers x (656 latent + 132 indexer key) = 61 x 788 = 48,068 B per token, as shipped
    assert m.kv_bytes_per_token("shipped") == 61 * 788 == 48_068
    # bf16: 61 x (576 + 128) x 2 = 85,888; fp8_e4m3 (per-tensor scale, none in page): half
    assert m.kv_bytes_per_token("bf16") == 61 * 704 * 2 == 85_888
    assert m.kv_bytes_per_token("fp8_e4m3") == 42_944
    # no window, no state: a sequence is tokens x bytes/token, exactly
    for n in (1, 4096, M):
        assert m.kv_bytes_for_sequence(n, "shipped") == 48_068 * n
        assert m.kv_bytes_per_sequence_constant("shipped") == 0
    # pages hold the primary component, the latent (61 layers of 576 elements, one vector)
    assert (m.kv_heads, m.head_dim, m.kv_factor) == (1, 576, 1)
    assert m.attention_gap("decode").startswith("decode attention for MLA")


def test_glm5_components_and_no_shipped_format():
    m = load_model("GLM-5")
    assert [c.name for c in m.components] == ["latent", "indexer_keys"]
    assert [len(c.layers) for c in m.components] == [78, 78]  # indexer_types default: all "full"
    # 78 layers x (512 + 64 + 128) elements x 2 B (bf16)
    assert m.kv_bytes_per_token("bf16") == 78 * 704 * 2 == 109_824
    with pytest.raises(KvbenchError, match="no shipped format is known for component latent"):
        m.kv_bytes_per_token("shipped")


def test_shared_indexer_layers_cache_no_keys():
    data = {"name": "x", "attention_type": "mla", "source_url": "u", "retrieved": "2026-12-02",
            "config": {"num_hidden_layers": 4, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
                       "index_head_dim": 128, "indexer_types": ["full", "shared", "shared", "full"]}}
    m = model_from_dict(data)
    assert m.components[1].layers == (0, 3)
    assert m.kv_bytes_per_token("bf16") == 4 * 576 * 2 + 2 * 128 * 2


# ---------------------------------------------------------------------- DeepSeek-V4
def test_v4_layer_schedules_from_compress_ratios():
    pro, flash = load_model("DeepSeek-V4-Pro"), load_model("DeepSeek-V4-Flash")
    count = {m.name: {t: m.layer_types.count(t) for t in set(m.layer_types)} for m in (pro, flash)}
    assert count["DeepSeek-V4-Pro"] == {"compressed_sparse_attention": 30, "heavily_compressed_attention": 31}
    assert count["DeepSeek-V4-Flash"] == {"sliding_attention": 2, "compressed_sparse_attention": 21,
                                          "heavily_compressed_attention": 20}
    assert (flash.kv_heads, flash.head_dim, flash.kv_factor, flash.sliding_window) == (1, 512, 1, 128)
    assert "no kernel yet" in flash.attention_gap("decode")
    assert "not modelled" in flash.attention_gap("prefill")


def v4_by_hand(layers, csa, hca, n, entry=V4_ENTRY, index=V4_INDEX):
    """One sequence of n tokens: a 128-entry window on every layer, floor(n / 4) CSA entries
    and indexer keys, floor(n / 128) HCA entries, and the fixed fp32 compressor state."""
    window = layers * min(n, 128) * entry
    csa_b = csa * (n // 4) * (entry + index)
    hca_b = hca * (n // 128) * entry
    # kv_state + score_state, fp32: CSA [2 x 4, 2 x 512] each = 16 rows x 1024 x 4 B;
    # its indexer's [8, 256] each = 16 x 256 x 4 B; HCA [128, 512] each = 256 x 512 x 4 B
    state = csa * (16 * 1024 * 4 + 16 * 256 * 4) + hca * 256 * 512 * 4
    return window + csa_b + hca_b + state


@pytest.mark.parametrize("n", [1, 100, 1000, 4096, 10_000, M])
def test_v4_sequence_bytes_are_exact(n):
    pro, flash = load_model("DeepSeek-V4-Pro"), load_model("DeepSeek-V4-Flash")
    assert pro.kv_bytes_for_sequence(n, "shipped") == v4_by_hand(61, 30, 31, n)
    assert flash.kv_bytes_for_sequence(n, "shipped") == v4_by_hand(43, 21, 20, n)
    # a kvbench format applied uniformly: bf16 = 2 B per element, the state stays fp32
    assert flash.kv_bytes_for_sequence(n, "bf16") == v4_by_hand(43, 21, 20, n, 1024, 256)


def test_v4_golden_numbers():
    pro, flash = load_model("DeepSeek-V4-Pro"), load_model("DeepSeek-V4-Flash")
    # slope: Pro 30 x (584 + 68) / 4 + 31 x 584 / 128 = 4,890 + 141.4375
    assert pro.kv_bytes_per_token("shipped") == 5_031.4375
    # Flash 21 x 652 / 4 + 20 x 584 / 128 = 3,423 + 91.25
    assert flash.kv_bytes_per_token("shipped") == 3_514.25
    # per sequence: Pro window 61 x 128 x 584 = 4,559,872 + state 30 x 81,920 + 31 x 524,288
    assert pro.kv_bytes_per_sequence_constant("shipped") == 4_559_872 + 18_710_528 == 23_270_400
    # Flash window 43 x 128 x 584 = 3,214,336 + state 21 x 81,920 + 20 x 524,288
    assert flash.kv_bytes_per_sequence_constant("shipped") == 3_214_336 + 12_206_080 == 15_420_416
    # at 1M tokens, written out:
    # Pro:   4,559,872 + 30 x 262,144 x 652 + 31 x 8,192 x 584 + 18,710,528 = 5,299,115,008
    # Flash: 3,214,336 + 21 x 262,144 x 652 + 20 x 8,192 x 584 + 12,206,080 = 3,700,378,624
    assert pro.kv_bytes_for_sequence(M, "shipped") == 5_299_115_008
    assert flash.kv_bytes_for_sequence(M, "shipped") == 3_700_378_624
    # at 1,000 tokens: Pro 4,559,872 + 30 x 250 x 652 + 31 x 7 x 584 + 18,710,528
    assert pro.kv_bytes_for_sequence(1000, "shipped") == 28_287_128
    # the growing part per token at a context: exact, floor(n / m) entries
    assert pro.kv_bytes_per_token_at(1000, "shipped") == (30 * 250 * 652 + 31 * 7 * 584) / 1000


def test_claim_v4_needs_a_tenth_of_v32s_kv_at_1m_tokens(capsys):
    """'In a 1M-token context, DeepSeek-V4-Pro requires only 10% of the KV cache of
    DeepSeek-V3.2, V4-Flash 7%': kvbench's ratio from the shapes, each as shipped."""
    v32 = load_model("DeepSeek-V3.2").kv_bytes_for_sequence(M, "shipped")
    assert v32 == 48_068 * M == 50_402_951_168
    pro = load_model("DeepSeek-V4-Pro").kv_bytes_for_sequence(M, "shipped") / v32
    flash = load_model("DeepSeek-V4-Flash").kv_bytes_for_sequence(M, "shipped") / v32
    assert pro == 5_299_115_008 / 50_402_951_168   # 0.10514
    assert flash == 3_700_378_624 / 50_402_951_168  # 0.07342
    bf16 = {n: load_model(n).kv_bytes_for_sequence(M, "bf16") for n in
            ("DeepSeek-V3.2", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash")}
    with capsys.disabled():
        print(f"\n  1M tokens, as shipped: V4-Pro / V3.2 = {pro:.2%} (claim 10%), "
              f"V4-Flash / V3.2 = {flash:.2%} (claim 7%); in bf16 throughout: "
              f"{bf16['DeepSeek-V4-Pro'] / bf16['DeepSeek-V3.2']:.2%} and "
              f"{bf16['DeepSeek-V4-Flash'] / bf16['DeepSeek-V3.2']:.2%}")


def test_existing_shapes_keep_their_arithmetic():
    for name, per_token in (("Llama-3.1-8B", 131_072), ("DeepSeek-V3", 70_272)):
        m = load_model(name)
        assert len(m.components) == 1 and m.kv_bytes_per_token_at(777, "fp16") == per_token
        assert m.kv_bytes_for_sequence(777) == 777 * per_token
    g = load_model("gpt-oss-120b")
    assert [c.name for c in g.components] == ["kv", "kv_window"]
    assert g.kv_bytes_for_sequence(10_000) == 10_000 * 36_864 + 4_718_592
    assert g.attention_gap("decode") == g.attention_gap("prefill") == ""


def test_model_file_errors_name_the_field():
    base = {"name": "x", "attention_type": "hybrid_compressed", "source_url": "u", "retrieved": "2026-12-02",
            "config": {"num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": 512,
                       "sliding_window": 128, "index_head_dim": 128, "compress_ratios": [4, 128],
                       "compress_rates": {"compressed_sparse_attention": 4,
                                          "heavily_compressed_attention": 128}}}
    assert model_from_dict(base).kv_bytes_per_token("bf16") == (1024 + 256) / 4 + 1024 / 128
    cfg = {k: v for k, v in base["config"].items() if k != "compress_rates"}
    with pytest.raises(KvbenchError, match="compress_rates"):
        model_from_dict(dict(base, config=cfg))
    with pytest.raises(KvbenchError, match=r"compress_ratios has \[8\]"):
        model_from_dict(dict(base, config=dict(base["config"], compress_ratios=[4, 8])))
    with pytest.raises(KvbenchError, match="2 layer types for num_hidden_layers 3"):
        model_from_dict(dict(base, config=dict(base["config"], num_hidden_layers=3)))
    with pytest.raises(KvbenchError, match="names \\['latent'\\], not components"):
        model_from_dict(dict(base, kvbench={"shipped_formats": {"latent": "ds_mla_fp8"}}))
    with pytest.raises(KvbenchError, match="neither a KV format nor a stored layout"):
        model_from_dict(dict(base, kvbench={"shipped_formats": {"window": "fp5"}}))
    with pytest.raises(KvbenchError, match="holds 576-element vectors, not 512"):
        model_from_dict(dict(base, kvbench={"shipped_formats": {"window": "ds_mla_fp8"}}))


def test_every_new_file_cites_its_fields():
    for name in ("DeepSeek-V3.2", "GLM-5", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash"):
        m = load_model(name)
        assert m.source_url.startswith("https://") and m.retrieved == "2026-12-02"
        assert m.provenance and all(p["source"] and p["retrieved"] for p in m.provenance)


# ---------------------------------------------------------------------- kvbench info
def test_info_shows_components_and_the_context_total(capsys):
    assert main(["info", "--model", "DeepSeek-V4-Flash", "--format", "shipped,bf16",
                 "--context", str(M)]) == 0
    out = capsys.readouterr().out
    for text in ("csa_indexer_keys", "hca_compressor_state", "last 128", "1 per 4 tokens",
                 "3,514.25", "15,420,416", "3,700,378,624", "ds_v4_fp8", "584 B", "hbm"):
        assert text in out, text


def test_info_json_has_the_components(capsys):
    assert main(["info", "--model", "DeepSeek-V3.2", "--context", "1000", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kv_bytes_per_token"]["shipped"] == 48_068
    assert [c["name"] for c in d["kv_components"]] == ["latent", "indexer_keys"]
    assert d["kv_components"][0]["bytes"]["shipped"]["entry_bytes"] == 656
    assert d["kv_bytes_at_context"]["shipped"]["total_bytes"] == 48_068_000


@pytest.mark.parametrize("args,msg", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--model", "DeepSeek-V4-Pro", "--format", "fp7"], "unknown KV format 'fp7'"),
    (["--model", "GLM-5", "--format", "shipped"], "no shipped format is known"),
    (["--model", "DeepSeek-V4-Pro", "--context", "0"], "positive whole number of tokens"),
    (["--model", "DeepSeek-V4-Pro", "--context", "1M"], "positive whole number of tokens"),
    (["--context", "1000"], "give --model"),
])
def test_info_bad_input_is_one_line_and_exit_2(args, msg, capsys):
    assert main(["info", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvbench: error:") and msg in err[0]


# ---------------------------------------------------------------------- kvbench size
def test_size_resizes_a_scenario_for_another_model(capsys):
    assert main(["size", "--scenario", "ms-chatgpt-2026", "--model", "DeepSeek-V4-Pro",
                 "--format", "shipped", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    q = d["sizing"]["quantities"]
    # exact at the scenario's 6,667 tokens/request: 1,666 CSA windows, 52 HCA windows
    assert q["kv_bytes_per_token"]["value"] == (30 * 1666 * 652 + 31 * 52 * 584) / 6667
    # windows and compressor state: a per-sequence constant in live KV
    assert q["kv_bytes_per_sequence_constant"]["value"] == 23_270_400
    assert d["scenario"]["inputs"]["model_name"] == "DeepSeek-V4-Pro"
    assert d["scenario"]["published_tib"] == {}  # the source's figures describe its own model


def test_size_compare_models_side_by_side(capsys):
    models = "DeepSeek-V3.2,DeepSeek-V4-Pro,DeepSeek-V4-Flash"
    assert main(["size", "--scenario", "ms-chatgpt-2026", "--compare-models", models,
                 "--format", "shipped", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["model"]: r for r in d["models"]}
    assert rows["DeepSeek-V3.2"]["kv_bytes_per_token"] == 48_068
    assert rows["DeepSeek-V4-Flash"]["kv_bytes_per_sequence_constant"] == 15_420_416
    dram = {k: r["corrected_totals_tib"]["dram"] for k, r in rows.items()}
    assert dram["DeepSeek-V4-Flash"] < dram["DeepSeek-V4-Pro"] < dram["DeepSeek-V3.2"]
    assert main(["size", "--scenario", "ms-chatgpt-2026", "--compare-models", models]) == 0
    out = capsys.readouterr().out
    assert "DeepSeek-V4-Pro" in out and "rack SSD" in out and "TiB" in out


@pytest.mark.parametrize("args,msg", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--format", "fp7"], "unknown KV format 'fp7'"),
    (["--compare-models", "GLM-5,DeepSeek-V3.2", "--format", "shipped"], "no shipped format is known"),
    (["--compare-models", ","], "--compare-models is empty"),
])
def test_size_bad_model_or_format_is_one_line(args, msg, capsys):
    assert main(["size", "--scenario", "ms-chatgpt-2026", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_size_refuses_weights_from_a_parameter_count_the_model_lacks(capsys):
    assert main(["size", "--scenario", "llama-3.1-70b-fp8-chat", "--model", "DeepSeek-V4-Flash"]) == 2
    assert "kvbench.params_total" in capsys.readouterr().err


# ------------------------------------------------------------- component pages
def test_component_pages_are_their_entries_bytes():
    """DeepSeek-V4-Pro (configs/models: head_dim 512, one KV head, index_head_dim 128,
    compress_rates CSA 4 / HCA 128; 30 CSA and 31 HCA layers): a page of 16 CSA entries
    of one layer in fp16 is 16 x 512 x 2 = 16,384 B and spans 16 x 4 = 64 tokens; its
    indexer keys 16 x 128 x 2 = 4,096 B; a block page of HCA entries covers the 31 HCA
    layers: 31 x 16,384 = 507,904 B. 1M tokens need 1e6 / 4 / 16 = 15,625 spans of CSA
    entries on each of 30 layers (468,750 layer pages) and 1e6 // 128 = 7,812 HCA entries,
    489 pages of 16 on each of 31 layers (15,159)."""
    from kvbench.spec import PageSpec, get_format

    m, fp16 = load_model("DeepSeek-V4-Pro"), get_format("fp16")
    csa = PageSpec(m, fp16, 16, "layer", "csa_entries")
    assert csa.page_bytes == 16 * 512 * 2 and csa.pages_for_tokens(10 ** 6) == 15_625 * 30
    assert {k: csa.describe()[k] for k in ("component", "tokens_per_entry", "entries_per_page",
                                           "tokens_per_page")} == {"component": "csa_entries",
                                                                   "tokens_per_entry": 4, "entries_per_page": 16,
                                                                   "tokens_per_page": 64}
    assert PageSpec(m, fp16, 16, "layer", "csa_indexer_keys").page_bytes == 16 * 128 * 2
    hca = PageSpec(m, fp16, 16, "block", "hca_entries")
    assert hca.page_bytes == 31 * 16 * 512 * 2 and hca.pages_for_tokens(10 ** 6) == 489
    assert PageSpec(m, fp16, 16, "layer", "hca_entries").pages_for_tokens(10 ** 6) == 489 * 31
    # the primary component's pages are what they were (no component named)
    assert PageSpec(m, fp16, 16, "layer").describe().get("component") is None
    with pytest.raises(KvbenchError, match="has no KV component 'kv'; known: window, csa_entries"):
        PageSpec(m, fp16, 16, "layer", "kv")


def test_component_pages_round_trip_through_the_store(tmp_path):
    import torch

    from kvbench.spec import PageSpec, get_format
    from kvbench.store import PagePool, move_pages
    from kvbench.tiers import DramTier, NvmeTier

    nvme = NvmeTier(tmp_path)
    try:
        for model, comp in (("DeepSeek-V4-Pro", "csa_indexer_keys"), ("DeepSeek-V4-Flash", "hca_entries"),
                            ("DeepSeek-V3.2", "indexer_keys")):
            spec = PageSpec(load_model(model), get_format("fp8_e4m3"), 16, "block", comp)
            with PagePool(DramTier(pinned=False), spec, 8) as a, PagePool(nvme, spec, 8) as b:
                data = torch.randint(0, 256, (3, spec.page_bytes), dtype=torch.uint8)
                a.write_pages([5, 0, 2], data)
                move_pages(a, [5, 0, 2], b, [1, 7, 3])
                move_pages(b, [1, 7, 3], a, [4, 6, 1])
                assert torch.equal(a.read_pages([4, 6, 1]), data), (model, comp)
    finally:
        nvme.close()


def test_round_trips_cover_every_growing_component(tmp_path):
    from kvbench.bench import RunContext
    from kvbench.bench import roundtrip as R

    ctx = RunContext(cuda=False, quick=True, model=load_model("DeepSeek-V4-Pro"), formats=["fp16"],
                     tokens_per_page=16, layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1)
    names = [c.name for c in R.plan(ctx) if c.name.startswith("dram<->nvme/")]
    assert names == ["dram<->nvme/layer", "dram<->nvme/layer/csa_entries", "dram<->nvme/layer/csa_indexer_keys",
                     "dram<->nvme/layer/hca_entries"]  # compressor state is fixed-size: not paged
    case = next(c for c in R.plan(ctx) if c.name == "dram<->nvme/layer/hca_entries").run(ctx)
    assert case["status"] == "ok" and case["config"]["component"] == "hca_entries"
    assert case["config"]["tokens_per_page"] == 16 * 128 and case["config"]["page_bytes"] == 16 * 512 * 2


def test_transfer_reads_each_growing_components_pages(tmp_path):
    from kvbench.bench import RunContext
    from kvbench.bench import transfer as T

    def ctx(model):
        return RunContext(cuda=False, quick=True, model=load_model(model), formats=["fp8_e4m3"], tokens_per_page=16,
                          layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=2,
                          options={"transfer.budget_s": "0.2", "transfer.file_bytes": "1MiB", "transfer.fio": "off"})
    comp = [c for c in T.plan(ctx("DeepSeek-V3.2")) if "/indexer_keys/" in c.name]
    assert [c.name for c in comp] == ["nvme->dram/layer/indexer_keys/fp8_e4m3/16tok/odirect/qd64/cold"]
    assert not [c for c in T.plan(ctx("Llama-3.1-8B")) if "/kv/" in c.name]  # one component: none extra
    case = comp[0].run(ctx("DeepSeek-V3.2"))
    if case["status"] == "skipped":  # a folder without O_DIRECT (tmpfs)
        assert "O_DIRECT" in case["reason"]
        return
    assert case["status"] == "ok" and case["name"] == comp[0].name, case.get("reason")
    # 16 indexer keys of index_head_dim 128 in fp8_e4m3 (1 B each, plus the format's scales)
    cfg = case["config"]
    assert cfg["component"] == "indexer_keys" and cfg["entries_per_page"] == 16 and cfg["tokens_per_entry"] == 1
    assert cfg["page_bytes"] == 16 * get_format_bytes("fp8_e4m3", 128)


def get_format_bytes(fmt: str, n: int) -> int:
    from kvbench.spec import get_format

    return get_format(fmt).vector_bytes(n)
