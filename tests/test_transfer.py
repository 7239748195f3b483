"""Transfer benchmark: the movers move the right bytes (every method, threads), the
gather kernel matches a torch gather, cold reads are labelled honestly, figures above
a physical limit are flagged, and the quick suite runs end to end."""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kvbench import movers
from kvbench.bench import RunContext
from kvbench.measure import check_limits, label_cache
from kvbench.kernels_loader import load_kernels
from kvbench.results import load, make_case
from kvbench.spec import PageSpec, get_format, load_model
from kvbench.store import PagePool
from kvbench.tiers import NvmeTier
from kvbench.tiers.dram import aligned_host_empty

MODEL = load_model("Llama-3.1-8B")


@pytest.mark.parametrize("page_bytes,stride", [(4096, 4096), (1152, 1280), (100, 103)])
def test_gather_kernel_matches_torch(page_bytes, stride, kernel_device):
    gather = load_kernels("gather")
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (9, stride), dtype=torch.uint8, generator=g).to(kernel_device)
    dst = torch.zeros(7, stride, dtype=torch.uint8, device=kernel_device)
    si = torch.tensor([8, 0, 3, 5], device=kernel_device)
    di = torch.tensor([1, 6, 0, 2], device=kernel_device)
    gather.page_copy(src, dst, si, di, page_bytes, block=64)
    expect = torch.zeros_like(dst)
    expect[di, :page_bytes] = src[si, :page_bytes]
    assert torch.equal(dst, expect)  # bytes beyond page_bytes untouched


def test_per_page_and_coalesced_movers():
    s = torch.randint(0, 256, (6, 64), dtype=torch.uint8)
    d = torch.zeros(6, 64, dtype=torch.uint8)
    movers.per_page(s, d, [5, 1], [0, 3], 60)()
    assert torch.equal(d[0, :60], s[5, :60]) and torch.equal(d[3, :60], s[1, :60])
    assert d[0, 60:].sum() == 0
    movers.coalesced(s, d, 128)()
    assert torch.equal(d[:2], s[:2])


@pytest.mark.parametrize("method", movers.FILE_READ_METHODS)
@pytest.mark.parametrize("threads", [1, 3])
def test_file_reader_and_writer(method, threads, nvme_dir):
    spec = PageSpec(MODEL, get_format("nvfp4"), 16, "layer")  # 18,432 B: stride padded
    with NvmeTier(nvme_dir) as tier:
        if method == "odirect" and not tier.odirect_status()[0]:
            pytest.skip(tier.odirect_status()[1])
        pool = PagePool(tier, spec, 10)
        ids = [7, 2, 9, 0, 4]
        data = torch.randint(0, 256, (5, spec.page_bytes), dtype=torch.uint8)
        src = aligned_host_empty(5 * pool.stride, pin=False).view(5, pool.stride)
        src[:, : spec.page_bytes] = data
        tp = ThreadPoolExecutor(threads) if threads > 1 else None
        wmethod = "odirect" if method == "odirect" else "buffered"
        movers.file_writer(pool.file(), pool.stride, ids, src, wmethod, tp, spec.page_bytes)()
        out = aligned_host_empty(5 * pool.stride, pin=False).view(5, pool.stride)
        pool.file().drop_cache()
        movers.file_reader(pool.file(), pool.stride, ids, out, method, tp, spec.page_bytes)()
        assert torch.equal(out[:, : spec.page_bytes], data)
        seq = aligned_host_empty(pool.file().nbytes, pin=False)
        movers.sequential_reader(pool.file(), pool.file().nbytes, seq, 8192, "buffered", tp)()
        assert torch.equal(seq.view(10, pool.stride)[ids, : spec.page_bytes], data)
        if tp:
            tp.shutdown()
        pool.close()


def test_cold_label_is_honest():
    c = make_case("transfer", "x", {}, samples={"gbps": [1.0]})
    label_cache(c, [0.0, 0.002], want="cold")
    assert c["config"]["cache_state"] == "cold"
    c = make_case("transfer", "x", {}, samples={"gbps": [1.0]})
    label_cache(c, [0.0, 0.5], want="cold")
    assert c["config"]["cache_state"] == "warm"
    assert any("labelled warm" in n for n in c["notes"])


def _ctx(env):
    return RunContext(cuda=False, quick=True, model=MODEL, formats=["fp16"], tokens_per_page=16,
                      layouts=["layer"], nvme_dir=None, warmup=0, samples=1, environment=env)


def test_above_physical_limit_is_an_error():
    ctx = _ctx({"gpus": [{"pcie_limit_gbps_per_direction": 63.0}]})
    ok = check_limits(ctx, make_case("transfer", "a", {"kind": "paged"}, samples={"gbps": [50.0]}), "dram->hbm")
    assert ok["status"] == "ok" and ok["metrics"]["pct_of_physical_limit"] == pytest.approx(100 * 50 / 63)
    bad = check_limits(ctx, make_case("transfer", "b", {"kind": "paged"}, samples={"gbps": [70.0]}), "dram->hbm")
    assert bad["status"] == "error" and "above the physical limit" in bad["reason"]
    both = check_limits(ctx, make_case("transfer", "c", {"kind": "paged"}, samples={"gbps": [120.0]}), "dram<->hbm")
    assert both["status"] == "ok"  # the sum of two directions may reach 2 x 63


def test_quick_transfer_suite_end_to_end(tmp_path):
    out = tmp_path / "t.json"
    r = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "transfer", "--format", "fp16",
         "--layout", "block", "--set", "transfer.file_bytes=4MiB", "--set", "transfer.queue_depths=1,2",
         "--set", "transfer.budget_s=0.05", "--samples", "2", "--warmup", "0", "--no-progress", "-o", str(out),
         "--nvme-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = load(out)
    cases = d["cases"]
    assert all(c["status"] in ("ok", "skipped") for c in cases), [c["reason"] for c in cases]
    from conftest import CUDA_OK
    if not CUDA_OK:
        skipped = [c for c in cases if c["status"] == "skipped"]
        assert {c["config"]["direction"] for c in skipped if "direction" in c["config"]} >= {
            "dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm", "nvme->hbm"}
        remote = [c for c in skipped if c["name"] == "remote/*"]  # measured by the remote benchmark
        assert len(remote) == 1 and "kvbench run --bench remote --ranks 2" in remote[0]["reason"]
        assert all("CUDA" in c["reason"] for c in skipped if c not in remote)
    ok = [c for c in cases if c["status"] == "ok"]
    dirs = {c["config"]["direction"] for c in ok}
    assert {"nvme->dram", "dram->nvme"} <= dirs
    for c in ok:
        assert c["units"]["gbps"] == "GB/s"
        assert len(c["samples"]["gbps"]) >= 2
        assert c["metrics"]["gbps"] > 0
        assert "pct_of_ceiling" in c["metrics"]
        if c["config"]["direction"] in ("nvme->dram", "dram->nvme"):
            # paired in the case: one ratio per pair of paged and ceiling samples
            pr = c["paired"]["pct_of_ceiling"]
            assert pr["n"] == len(c["samples"]["gbps"]) == len(c["samples"]["ceiling_gbps"])
            assert pr["ci_low"] <= pr["median"] <= pr["ci_high"]
            assert ("unstable" in c.get("flags", [])) == (not c["config"]["sampling"]["converged"])
            if c["name"].endswith("/warm"):  # asked warm (a cold case may be relabelled warm)
                assert any(n.startswith("fio reference: not run for warm reads") for n in c["notes"])
            elif shutil.which("fio"):
                assert len(c["samples"]["fio_gbps"]) == pr["n"] and "pct_of_fio" in c["metrics"]
            else:
                assert any("fio is not on PATH" in n for n in c["notes"])
        if c["config"]["direction"] == "nvme->dram":
            assert c["config"]["cache_state"] in ("cold", "warm")
    assert {c["config"]["cache_state"] for c in ok if c["config"]["direction"] == "nvme->dram"} >= {"warm"}
    assert any(c["config"]["kind"] == "sweep" for c in ok)
    json.dumps(d, allow_nan=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.gpu
def test_gpu_transfer_suite_small(tmp_path):
    """Every GPU direction and method at small sizes: ok or skipped with a reason, never an
    error, and no figure above the NVML PCIe limit."""
    from conftest import CUDA_OK, CUDA_WHY
    if not CUDA_OK:
        pytest.skip(f"needs CUDA: {CUDA_WHY}")
    out = tmp_path / "t.json"
    r = subprocess.run(
        [sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "transfer", "--format", "fp16",
         "--set", "transfer.bytes=16MiB", "--set", "transfer.file_bytes=8MiB",
         "--set", "transfer.ceiling_bytes=64MiB", "--set", "transfer.queue_depths=1,4",
         "--samples", "3", "--warmup", "1", "--no-progress", "-o", str(out), "--nvme-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = load(out)["cases"]
    assert not [c for c in cases if c["status"] == "error"], [(c["name"], c["reason"]) for c in cases if c["status"] == "error"]
    dirs = {c["config"]["direction"] for c in cases if c["status"] == "ok"}
    assert {"dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm", "nvme->hbm"} <= dirs
    methods = {c["config"]["method"] for c in cases if c["status"] == "ok" and c["config"]["direction"] == "dram->hbm"}
    assert {"per_page", "batched", "coalesced", "triton"} <= methods
    for c in cases:  # every case carries the same headline fields, ceilings included
        if c["status"] == "ok":
            assert c["samples"]["gbps"] and c["metrics"]["gbps"] > 0, c["name"]
            if c["config"].get("kind") != "ceiling":
                assert "pct_of_ceiling" in c["metrics"], c["name"]


def test_above_ceiling_beyond_noise_is_flagged_not_ok():
    ctx = _ctx({})
    # the case's p10 above the ceiling's p90: flagged
    c = make_case("transfer", "w", {"kind": "paged"},
                  samples={"gbps": [13.0, 13.6, 14.0], "ceiling_gbps": [4.0, 4.2, 4.4]})
    check_limits(ctx, c, "nvme->dram", ceiling=4.2)
    assert c["flags"] == ["above_ceiling"] and c["metrics"]["pct_of_ceiling"] > 300
    assert any(n.startswith("above_ceiling:") for n in c["notes"])
    # overlapping spreads: noise, not a flag
    c = make_case("transfer", "n", {"kind": "paged"},
                  samples={"gbps": [3.9, 4.3, 4.6], "ceiling_gbps": [4.0, 4.2, 4.4]})
    check_limits(ctx, c, "nvme->dram", ceiling=4.2)
    assert "flags" not in c
    # a run-level ceiling case (GPU directions) supplies its own spread
    ctx.done.append(make_case("transfer", "ceiling/dram->hbm", {"kind": "ceiling", "direction": "dram->hbm"},
                              samples={"gbps": [50.0, 51.0, 52.0]}))
    c = make_case("transfer", "p", {"kind": "paged"}, samples={"gbps": [53.0, 54.0, 55.0]})
    check_limits(ctx, c, "dram->hbm")
    assert c["flags"] == ["above_ceiling"] and c["metrics"]["ceiling_gbps"] == 51.0
