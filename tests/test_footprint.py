"""Footprints: a case that cannot hold what it needs is refused with the numbers,
before anything is allocated (kvbench.footprint, Case.footprint, the runner)."""

import subprocess
import sys

import pytest

from kvbench import footprint
from kvbench.bench import Benchmark, Case, RunContext
from kvbench.footprint import DoesNotFit, check_footprint, refusal
from kvbench.results import make_case
from kvbench.runner import run_case
from kvbench.spec import load_model


def test_refusal_carries_the_numbers():
    err = refusal({"pageable": 24_100_000_000}, {"host": 22_600_000_000})
    assert isinstance(err, DoesNotFit)
    assert str(err) == "needs 24.1 GB of host memory at once (pageable), 22.6 GB free after the margin"
    assert (err.kind, err.need, err.free) == ("host", 24_100_000_000, 22_600_000_000)


def test_pinned_and_pageable_share_host_memory():
    err = refusal({"pinned": 12 * 10**9, "pageable": 12 * 10**9}, {"host": 20 * 10**9})
    assert "24.0 GB of host memory" in str(err) and "12.0 GB pinned + 12.0 GB pageable" in str(err)
    assert refusal({"pinned": 5, "file": 5}, {"host": 10, "file": 10}) is None


def test_an_unavailable_tier_is_left_to_the_case():
    assert refusal({"device": 10**12, "pageable": 10**12}, {"device": None, "host": 1}) is None


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError):
        refusal({"hbm": 1}, {})


def test_check_uses_the_tiers_free_bytes(monkeypatch, tmp_path):
    from kvbench.tiers.dram import DramTier

    monkeypatch.setattr(DramTier, "free_bytes", lambda self: 3 * 10**9)
    check_footprint({"pageable": 3 * 10**9}, tmp_path)
    with pytest.raises(DoesNotFit, match=r"needs 3.5 GB of host memory at once \(pageable\), 3.0 GB free"):
        check_footprint({"pageable": 35 * 10**8}, tmp_path)


def _ctx(tmp_path):
    return RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16"],
                      tokens_per_page=16, layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1)


def test_a_case_that_does_not_fit_is_skipped_and_the_others_run(monkeypatch, tmp_path):
    from kvbench.tiers.dram import DramTier

    monkeypatch.setattr(DramTier, "free_bytes", lambda self: 10**9)
    ran = []

    def body(name):
        def run(ctx):
            ran.append(name)
            return make_case("fake", name, {})
        return run

    bench = Benchmark("fake", "fake", plan=lambda ctx: [])
    cases = [Case("small", {}, body("small"), footprint=lambda c: {"pageable": 10**8}),
             Case("huge", {}, body("huge"), footprint=lambda c: {"pageable": 50 * 10**9}),
             Case("none", {}, body("none"))]
    ctx = _ctx(tmp_path)
    got = [run_case(bench, c, ctx) for c in cases]
    assert ran == ["small", "none"]
    assert [g["status"] for g in got] == ["ok", "skipped", "ok"]
    assert got[1]["reason"] == "needs 50.0 GB of host memory at once (pageable), 1.0 GB free after the margin"


def test_roundtrip_footprint_counts_both_pools():
    from kvbench.bench.roundtrip import footprint as rt_footprint
    from kvbench.spec import PageSpec, get_format

    ctx = _ctx(None)
    pb = PageSpec(ctx.model, get_format("fp16"), 16, "layer").page_bytes
    fp = rt_footprint(ctx, "dram", "nvme", "layer")
    assert fp == {"pageable": 2 * 16 * pb + 3 * 16 * pb, "file": 2 * 16 * max(pb, 4096)}


def test_huge_pages_refuse_the_run_before_anything_is_allocated(tmp_path):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    p = subprocess.run([sys.executable, "-m", "kvbench", "run", "--bench", "roundtrip",
                        "--tokens-per-page", "100000", "--nvme-dir", str(nvme),
                        "--output", str(tmp_path / "out.json")],
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and "of host memory at once" in lines[0], p.stderr
    assert list(nvme.iterdir()) == []
    assert not (tmp_path / "out.json").exists()


# ------------------------------------------------------------- the big benchmarks' footprints
SIZED = ("transfer", "prefix", "decode")


def _plan_ctx(tmp_path, cuda, quick=True, **options):
    from kvbench.cli import DEFAULT_FORMATS, DEFAULT_MODEL
    from kvbench.spec import LAYOUTS

    return RunContext(cuda=cuda, quick=quick, model=load_model(DEFAULT_MODEL), formats=list(DEFAULT_FORMATS),
                      tokens_per_page=16, layouts=list(LAYOUTS), nvme_dir=tmp_path, warmup=0, samples=1,
                      options={k.replace("__", "."): str(v) for k, v in options.items()})


def _planned(key, ctx):
    from kvbench.bench import registry

    return registry()[key].plan(ctx)


def _only_skips(case, ctx):
    """A case without a footprint holds nothing: it only reports a skip."""
    from kvbench.errors import Skip

    try:
        got = case.run(ctx)
    except Skip:
        return True
    return got.get("status") == "skipped"


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-plan", "gpu-plan"])
@pytest.mark.parametrize("key", SIZED)
def test_every_case_that_allocates_declares_a_footprint(key, cuda, tmp_path):
    ctx = _plan_ctx(tmp_path, cuda)
    cases = _planned(key, ctx)
    sized = [c for c in cases if c.footprint is not None]
    assert sized, key
    for c in cases:
        if c.footprint is None:
            assert _only_skips(c, ctx), f"{key}/{c.name} allocates but declares no footprint"
            continue
        fp = c.footprint(ctx)
        footprint.by_tier_kind(fp)  # known kinds only
        assert all(isinstance(v, int) and v >= 0 for v in fp.values()), (c.name, fp)
        if cuda:  # GPU plans: nothing big is pageable-only: device or pinned memory is named
            assert fp.get("device", 0) + fp.get("pinned", 0) + fp.get("file", 0) > 0, (c.name, fp)
        else:
            assert "device" not in fp and "pinned" not in fp, (c.name, fp)
            assert fp.get("pageable", 0) > 0, (c.name, fp)


def _by_name(key, ctx):
    return {c.name: c.footprint(ctx) for c in _planned(key, ctx) if c.footprint is not None}


def test_transfer_file_term_grows_with_file_bytes(tmp_path):
    small = _by_name("transfer", _plan_ctx(tmp_path, False, transfer__file_bytes="32MiB"))
    big = _by_name("transfer", _plan_ctx(tmp_path, False, transfer__file_bytes="64MiB"))
    files = [n for n in small if "file" in small[n] and not n.startswith("sweep/")]
    assert files
    for n in files:
        assert 1.95 < big[n]["file"] / small[n]["file"] < 2.05, n  # whole pages: about double
        assert big[n]["pageable"] > small[n]["pageable"], n
    # the file pool alone: 2n rows of the 4 KiB-aligned page stride
    from kvbench.spec import PageSpec, get_format
    from kvbench.units import MiB, align_up

    spec = PageSpec(load_model("Llama-3.1-8B"), get_format("fp16"), 16, "layer")
    n = max(2, 32 * MiB // spec.page_bytes)
    name = next(x for x in files if x.startswith("dram->nvme/layer/fp16/"))
    assert small[name]["file"] == 2 * n * align_up(spec.page_bytes, 4096)


def test_transfer_gpu_terms_grow_with_bytes(tmp_path):
    a = _by_name("transfer", _plan_ctx(tmp_path, True, transfer__bytes="64MiB", transfer__ceiling_bytes="256MiB"))
    b = _by_name("transfer", _plan_ctx(tmp_path, True, transfer__bytes="128MiB", transfer__ceiling_bytes="512MiB"))
    paged = [n for n in a if n.startswith(("dram->hbm/", "hbm->dram/", "dram<->hbm/", "hbm->hbm/", "overlap/"))]
    assert paged and any(n.startswith("ceiling/") for n in a)
    for n in paged + [n for n in a if n.startswith("ceiling/")]:
        assert b[n]["device"] > a[n]["device"], n
    assert b["ceiling/dram->hbm"] == {k: 2 * v for k, v in a["ceiling/dram->hbm"].items()}
    assert "file" in a["nvme->hbm/layer/fp16"] and a["nvme->hbm/layer/fp16"]["device"] > 0


def test_prefix_footprints_grow_with_tokens(tmp_path):
    for cuda in (False, True):
        a = _by_name("prefix", _plan_ctx(tmp_path, cuda, prefix__tokens="1024"))
        b = _by_name("prefix", _plan_ctx(tmp_path, cuda, prefix__tokens="4096"))
        for s in ("recompute", "dram", "nvme"):
            fa, fb = a[f"1024tok/{s}"], b[f"4096tok/{s}"]
            assert sum(fb.values()) > sum(fa.values()), (cuda, s)
        assert b["4096tok/nvme"]["file"] == 4 * a["1024tok/nvme"]["file"]
    # the recompute's weights alone (Llama-3.1-8B, fp32 on the CPU): one layer's worth
    m = load_model("Llama-3.1-8B")
    h, H, KV, D, w = m.hidden_size, m.num_attention_heads, m.kv_heads, m.head_dim, m.config["intermediate_size"]
    weights = (h * (H + 2 * KV) * D + H * D * h + 3 * h * w) * 4
    assert a["1024tok/recompute"]["device"] > weights // 2  # bf16 with CUDA
    cpu = _by_name("prefix", _plan_ctx(tmp_path, False, prefix__tokens="1024"))
    assert cpu["1024tok/recompute"]["pageable"] > weights
    # without recompute among the sources a load holds no prefill
    only = _by_name("prefix", _plan_ctx(tmp_path, False, prefix__tokens="1024", prefix__sources="dram"))
    assert only["1024tok/dram"]["pageable"] < cpu["1024tok/dram"]["pageable"] - weights


def test_decode_footprints_grow_with_shapes(tmp_path):
    a = _by_name("decode", _plan_ctx(tmp_path, False, decode__dram__shapes="2x512", decode__nvme__shapes="2x512"))
    b = _by_name("decode", _plan_ctx(tmp_path, False, decode__dram__shapes="4x512", decode__nvme__shapes="4x512"))
    from kvbench.spec import PageSpec, get_format

    spec = PageSpec(load_model("Llama-3.1-8B"), get_format("fp16"), 16, "layer")
    cache = 32 * 2 * (512 // 16) * spec.page_bytes  # L x B x P pages
    assert a["dram/fp16/2x512"]["pageable"] > cache
    assert a["nvme/fp16/2x512"]["file"] >= cache
    assert a["dram/nvfp4/2x512"]["pageable"] > cache  # its fp16 companion
    for n in a:
        if n.startswith(("dram/", "nvme/")):
            m = n.replace("2x512", "4x512")
            assert sum(b[m].values()) > sum(a[n].values()), n
    g = _by_name("decode", _plan_ctx(tmp_path, True))
    assert g["dram_prefetch/fp16/8x8192"]["pinned"] >= 32 * 8 * (8192 // 16) * spec.page_bytes
    assert g["hbm/fp16/512x1024"]["device"] >= 32 * 512 * (1024 // 16) * spec.page_bytes  # no free known: all L


def test_a_default_quick_cpu_run_fits_here(tmp_path):
    """Every planned case of `kvbench run --quick` (the default benchmarks) fits in what
    this machine's tiers have free, so the default run is neither refused nor thinned."""
    from kvbench.bench import select
    from kvbench.footprint import tier_free

    ctx = _plan_ctx(tmp_path, False)
    free = {k: tier_free(k, tmp_path) for k in ("host", "file")}
    for bench in select(None):
        for c in bench.plan(ctx):
            if c.footprint is not None:
                need = c.footprint(ctx)
                assert refusal(need, free) is None, (bench.key, c.name, need, free)
