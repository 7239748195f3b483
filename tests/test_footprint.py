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
