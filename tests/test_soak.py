"""Soak benchmark: a short soak through the real CLI is ok with no page corrupted; a
mover that flips a byte, or misplaces pages, is caught with the page ids; RSS and
file-descriptor growth is flagged beyond its tolerance; bad options fail at plan time."""

import subprocess
import sys

import pytest

from kvbench.bench import DEFAULT_BENCHES, RunContext, registry
from kvbench.bench import soak as S
from kvbench.errors import KvbenchError
from kvbench.results import load
from kvbench.runner import run_case
from kvbench.spec import load_model
from conftest import CUDA_OK

LLAMA = load_model("Llama-3.1-8B")


def ctx_for(nvme_dir, formats=("fp16",), **opts):
    return RunContext(cuda=CUDA_OK, quick=True, model=LLAMA, formats=list(formats), tokens_per_page=16,
                      layouts=["layer", "block"], nvme_dir=nvme_dir, warmup=0, samples=1,
                      options={f"soak.{k}": str(v) for k, v in opts.items()})


def run_pair(ctx, pair="dram<->nvme/fp16"):
    cases = {c.name: c for c in S.plan(ctx)}
    return run_case(S.BENCH, cases[pair], ctx)


def test_registered_but_not_in_a_default_run():
    b = registry()["soak"]
    assert b is S.BENCH and "soak" not in DEFAULT_BENCHES
    assert b.headline == "pages_moved" and b.headline_unit == "pages"
    assert {"pages_corrupted", "rss_growth_bytes", "fds_growth"} <= set(b.columns)
    assert {"soak.pages", "soak.rounds"} <= set(b.options)
    assert "kvbench run --bench soak --full" in S.__doc__


def test_short_soak_through_the_cli_is_ok(tmp_path, nvme_dir):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, "-m", "kvbench", "run", "--bench", "soak", "--format", "fp16,nvfp4",
                        "--set", "soak.pages=2000", "--set", "soak.rounds=4", "--nvme-dir", str(nvme_dir),
                        "--no-progress", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = load(out)
    cases = {c["name"]: c for c in doc["cases"]}
    assert set(cases) == {f"{p}/{f}" for p in ("hbm<->dram", "hbm<->nvme", "dram<->nvme")
                          for f in ("fp16", "nvfp4")}
    for fmt in ("fp16", "nvfp4"):
        c = cases[f"dram<->nvme/{fmt}"]
        assert c["status"] == "ok", c["reason"]
        m = c["metrics"]
        assert m["pages_moved"] == 2000 and m["pages_corrupted"] == 0
        assert m["fds_growth"] == 0 and m["rss_growth_bytes"] <= 32 * 2**20
        assert m["pages_checked"] >= 2000 + 4 * c["config"]["live_pages"]  # every move + every sweep
        assert len(c["samples"]["rss_bytes"]) == 4 and len(c["samples"]["open_fds"]) == 4
        assert c["config"]["layout"] == "layer" and c["config"]["tokens_per_page"] == 1
        assert any("not a bandwidth benchmark" in n for n in c["notes"])
    # formats change the page size only
    assert cases["dram<->nvme/nvfp4"]["config"]["page_bytes"] < cases["dram<->nvme/fp16"]["config"]["page_bytes"]
    for name, c in cases.items():
        if name.startswith("hbm") and not CUDA_OK:
            assert c["status"] == "skipped" and "hbm" in c["reason"]
    assert list(nvme_dir.iterdir()) == []  # the pools' files are gone


def _flip_once(monkeypatch, seen):
    """Replace the mover with one that moves, then flips a byte past the id header of
    the first page of its first call, recording that page's id and where it is."""
    real = S.move

    def move(src, src_ids, dst, dst_ids):
        real(src, src_ids, dst, dst_ids)
        if seen:
            return
        row = dst.read_pages([dst_ids[0]]).to("cpu").clone()
        seen.append((S._header_id(row[0].numpy()), dst.tier.name, dst_ids[0]))
        row[0, -1] ^= 0xFF
        dst.write_pages([dst_ids[0]], row)

    monkeypatch.setattr(S, "move", move)


def test_a_flipped_byte_is_an_error_naming_the_page(monkeypatch, nvme_dir):
    seen = []
    _flip_once(monkeypatch, seen)
    res = run_pair(ctx_for(nvme_dir, pages=600, rounds=3))
    (page, tier, slot), = seen
    assert res["status"] == "error"
    assert res["metrics"]["pages_corrupted"] == 1 and res["metrics"]["pages_moved"] == 600
    assert f"1 of {res['config']['live_pages']} pages corrupted: ids {page}" in res["reason"]
    assert f"corrupted page ids: {page}" in res["notes"]
    assert any(n.startswith(f"page {page} at {tier}[{slot}] after its move") and "id bytes are intact" in n
               for n in res["notes"]), res["notes"]
    assert list(nvme_dir.iterdir()) == []


def test_misplaced_pages_are_caught_with_what_they_hold(monkeypatch, nvme_dir):
    """A mover that swaps the destinations of the first two pages of a call: both pages
    fail their checks, each holding the other's id."""
    real = S.move
    done = []

    def move(src, src_ids, dst, dst_ids):
        if not done and len(dst_ids) >= 2:
            dst_ids = [dst_ids[1], dst_ids[0], *dst_ids[2:]]
            done.append(1)
        real(src, src_ids, dst, dst_ids)

    monkeypatch.setattr(S, "move", move)
    res = run_pair(ctx_for(nvme_dir, pages=300, rounds=1))
    assert res["status"] == "error" and res["metrics"]["pages_corrupted"] == 2
    held = [n for n in res["notes"] if "holds page" in n]
    assert len(held) == 2, res["notes"]


@pytest.mark.parametrize("series,tol,want", [
    ([100, 100, 100, 100], 0, (0, False)),
    ([100, 101, 99, 100], 0, (0, False)),   # back where it began: no leak
    ([8, 9, 10, 11], 0, (3, True)),          # one fd a round
    ([8, 9, 10, 11], 3, (3, False)),
    ([2**28, 2**28 + 2**20], 32 * 2**20, (2**20, False)),
    ([2**28, 2**28 + 40 * 2**20], 32 * 2**20, (40 * 2**20, True)),
    ([5], 0, (None, False)),                 # one round: no growth to measure
    ([5, None, 7], 0, (None, False)),        # a missing figure
])
def test_growth_on_synthetic_numbers(series, tol, want):
    assert S.growth(series, tol) == want


def test_growth_in_a_case_is_an_error(monkeypatch, nvme_dir):
    fds = iter(range(10, 100))
    rss = iter(range(2**28, 2**31, 50 * 2**20))
    monkeypatch.setattr(S, "open_fds", lambda: next(fds))
    monkeypatch.setattr(S, "rss_bytes", lambda: next(rss))
    res = run_pair(ctx_for(nvme_dir, pages=300, rounds=3))
    assert res["status"] == "error" and res["metrics"]["pages_corrupted"] == 0
    assert res["metrics"]["fds_growth"] == 2 and res["metrics"]["rss_growth_bytes"] == 100 * 2**20
    assert "open file descriptors grew by 2" in res["reason"]
    assert "RSS grew 100.0 MiB" in res["reason"]
    # a looser tolerance lets the same RSS figures pass
    rss = iter(range(2**28, 2**31, 50 * 2**20))
    monkeypatch.setattr(S, "open_fds", lambda: 10)
    res = run_pair(ctx_for(nvme_dir, pages=300, rounds=3, rss_tolerance_mib=200))
    assert res["status"] == "ok", res["reason"]


def test_one_page_per_format_and_pair_in_the_plan(tmp_path):
    names = [c.name for c in S.plan(ctx_for(tmp_path, formats=("fp16", "fp8_e4m3")))]
    assert names == ["hbm<->dram/fp16", "hbm<->dram/fp8_e4m3", "hbm<->nvme/fp16", "hbm<->nvme/fp8_e4m3",
                     "dram<->nvme/fp16", "dram<->nvme/fp8_e4m3"]
    full = ctx_for(tmp_path)
    full.quick = False
    assert S.settings(full)["pages"] == 100_000 and S.settings(ctx_for(tmp_path))["pages"] == 20_000


@pytest.mark.parametrize("opts,msg", [
    ({"pages": 0}, "soak.pages=0: must be positive"),
    ({"rounds": -2}, "soak.rounds=-2: must be positive"),
    ({"pages": "many"}, "soak.pages"),
    ({"pages": 5, "rounds": 10}, "more rounds than the 5 page moves"),
    ({"tokens_per_page": 0}, "soak.tokens_per_page=0: must be positive"),
    ({"rss_tolerance_mib": 0}, "soak.rss_tolerance_mib=0"),
])
def test_bad_options_fail_at_plan_time(opts, msg, tmp_path):
    with pytest.raises(KvbenchError, match=msg):
        S.plan(ctx_for(tmp_path, **opts))


def test_bad_option_through_the_cli_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kvbench", "run", "--bench", "soak", "--set", "soak.rounds=0",
                        "-o", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "kvbench: error: --set soak.rounds=0: must be positive"], r.stderr
    assert not (tmp_path / "x.json").exists()
