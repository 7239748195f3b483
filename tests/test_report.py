"""kvbench report / compare: tables, plots, HTML, warnings, one-line errors.

Documents named ``test input`` below are built with kvbench.results.make_case from
made-up sample values, to exercise an H100-vs-H200 comparison on a machine without
a GPU. They are not measurements and their figures mean nothing.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvbench.results import SCHEMA, make_case, skipped_case, write_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEST_NOTE = "test input: made-up samples, not a measurement"


# ------------------------------------------------------------------------------ helpers
def console():
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, width=220, highlight=False, color_system=None), buf


def cli(argv, capsys):
    """kvbench's real main()."""
    from kvbench import cli as kcli

    try:
        rc = kcli.main(argv)
    except SystemExit as exc:  # argparse errors and --help
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def made_up_doc(gpu: str, mem_gib: float, scale: float, *, run_id: str, version: str = "0.1.0",
                   quick: bool = False, mode: str = "gpu", tokens_per_page: int = 16,
                   extra_case: bool = False) -> dict:
    """A GPU-shaped result document (test input). Figures are `scale` x fixed samples."""
    def s(xs):
        return [x * scale for x in xs]

    n = [TEST_NOTE]
    cases = [
        make_case("transfer", "ceiling/dram->hbm", {"kind": "ceiling", "direction": "dram->hbm"},
                  samples={"gbps": s([50, 51, 52])}, units={"gbps": "GB/s"}, notes=n),
        make_case("transfer", "dram->hbm/layer/fp16/16tok/batched",
                  {"kind": "paged", "direction": "dram->hbm", "method": "batched", "format": "fp16",
                   "layout": "layer", "tokens_per_page": 16},
                  samples={"gbps": s([40, 41, 42])}, units={"gbps": "GB/s", "pct_of_ceiling": "%"},
                  metrics={"pct_of_ceiling": 80.0, "ceiling_gbps": 51 * scale}, notes=n),
        make_case("transfer", "dram->hbm/layer/fp16/16tok/per_page",
                  {"kind": "paged", "direction": "dram->hbm", "method": "per_page", "format": "fp16",
                   "layout": "layer", "tokens_per_page": 16},
                  samples={"gbps": s([10, 11, 12])}, units={"gbps": "GB/s"}, notes=n),
        # the sweep repeats a paged case's name, as transfer.py does
        make_case("transfer", "dram->hbm/layer/fp16/16tok/batched",
                  {"kind": "sweep", "direction": "dram->hbm", "method": "batched", "format": "fp16",
                   "layout": "layer", "tokens_per_page": 16},
                  samples={"gbps": s([20, 21, 22])}, units={"gbps": "GB/s"}, notes=n),
        make_case("transfer", "dram->hbm/layer/fp16/64tok/batched",
                  {"kind": "sweep", "direction": "dram->hbm", "method": "batched", "format": "fp16",
                   "layout": "layer", "tokens_per_page": 64},
                  samples={"gbps": s([30, 31, 32])}, units={"gbps": "GB/s"}, notes=n),
        skipped_case("transfer", "overlap/*", {"kind": "overlap"}, "test input: skipped on purpose"),
        make_case("decode", "hbm/fp16/8x4096", {"kind": "decode", "placement": "hbm", "format": "fp16",
                                                "batch": 8, "context": 4096, "fused": True},
                  samples={"tok_s": s([1000, 1010, 1020]), "step_s": [0.008, 0.008, 0.008]},
                  units={"tok_s": "tokens/s", "step_s": "s", "pct_of_roofline": "%"},
                  metrics={"pct_of_roofline": 70.0}, notes=n),
        make_case("decode", "hbm/nvfp4/8x4096", {"kind": "decode", "placement": "hbm", "format": "nvfp4",
                                                 "batch": 8, "context": 4096, "fused": True},
                  samples={"tok_s": s([2000, 2010, 2020])}, units={"tok_s": "tokens/s"},
                  metrics={"pct_of_roofline": 60.0, "speedup_vs_fp16": 2.0}, notes=n),
        make_case("accuracy", "synthetic/fp8_e4m3", {"format": "fp8_e4m3", "source": "synthetic"},
                  metrics={"k_rel_err": 0.02, "v_rel_err": 0.03, "attn_rel_err": 0.01, "bits_per_element": 8.1},
                  units={"k_rel_err": "fraction", "bits_per_element": "bits"}, notes=n),
        make_case("accuracy", "synthetic/nvfp4", {"format": "nvfp4", "source": "synthetic"},
                  metrics={"k_rel_err": 0.1, "v_rel_err": 0.12, "attn_rel_err": 0.05, "bits_per_element": 4.5},
                  units={"k_rel_err": "fraction", "bits_per_element": "bits"}, notes=n),
        make_case("prefix", "1024tok/recompute", {"source": "recompute", "prefix_tokens": 1024},
                  samples={"seconds": s([0.2, 0.21, 0.22])}, units={"seconds": "s"}, notes=n),
        make_case("prefix", "1024tok/dram", {"source": "dram", "prefix_tokens": 1024},
                  samples={"seconds": s([0.02, 0.021, 0.022])}, units={"seconds": "s"},
                  metrics={"speedup_vs_recompute": 10.0}, notes=n),
        make_case("prefix", "4096tok/dram", {"source": "dram", "prefix_tokens": 4096},
                  samples={"seconds": s([0.08, 0.081, 0.082])}, units={"seconds": "s"},
                  metrics={"speedup_vs_recompute": 12.0}, notes=n),
    ]
    if extra_case:
        cases.append(make_case("transfer", "hbm->hbm/layer/fp16/16tok/batched",
                               {"kind": "paged", "direction": "hbm->hbm", "method": "batched"},
                               samples={"gbps": s([900, 901, 902])}, units={"gbps": "GB/s"}, notes=n))
    return {
        "schema": SCHEMA,
        "run": {"id": run_id, "started_utc": "2026-11-22T00:00:00+00:00",
                "finished_utc": "2026-11-22T00:01:00+00:00", "status": "complete",
                "command": ["kvbench", "run", "(test input)"], "kvbench_version": version,
                "benches": ["transfer", "decode", "accuracy", "prefix"], "mode": mode, "quick": quick,
                "options": {"model": "Llama-3.1-8B", "formats": ["fp16", "nvfp4"],
                            "tokens_per_page": tokens_per_page, "layouts": ["layer"], "seed": 0, "set": {}},
                "model": {"name": "Llama-3.1-8B", "num_layers": 32, "kv_heads": 8, "head_dim": 128}},
        "environment": {
            "host": {"hostname": "testhost", "cpu_model": "Test CPU (test input)", "cpu_cores_physical": 64,
                     "cpu_cores_logical": 128, "memory_total_bytes": 2 * 1024**4, "numa_nodes": [{}, {}]},
            "gpus": [{"index": 0, "name": gpu, "memory_total_bytes": int(mem_gib * 2**30),
                      "pcie_gen_max": 5, "pcie_width_max": 16, "pcie_gen_current": 5, "pcie_width_current": 16,
                      "pcie_limit_gbps_per_direction": 63.0}],
            "nvml": {"available": True, "driver_version": "test"},
            "cuda": {"available": True, "torch_cuda_version": "12.8"},
            "software": {"python": "3.11.7", "packages": {"torch": "2.13.0", "triton": "3.9.0"}},
            "git": {"commit": "0" * 40, "dirty": False},
            "nvme": {"fs_type": "ext4", "block_device": {"disk": "nvme0n1", "kind": "nvme",
                                                         "model": "Test SSD", "rotational": False}},
        },
        "method": {"timer": "cuda_events", "warmup": 3, "samples": 3, "statistic": "median of samples",
                   "units": {"bandwidth": "GB/s, GB = 1e9 bytes"}},
        "cases": cases,
    }


def no_temp_files(*dirs: Path) -> bool:
    return not [p for d in dirs if d.exists() for p in d.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def roundtrip_result(tmp_path_factory):
    """A real (small) result: the roundtrip bench, run by the CLI."""
    d = tmp_path_factory.mktemp("rt")
    out = d / "rt.json"
    r = subprocess.run([sys.executable, "-m", "kvbench", "run", "--quick", "--bench", "roundtrip", "--no-progress",
                        "--format", "fp16", "-o", str(out)], capture_output=True, text=True, cwd=d,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture
def gpu_pair(tmp_path):
    """Two result files (test input): 'H100' as A, 'H200' as B with every figure x1.5."""
    a = write_atomic(tmp_path / "h100.json",
                     made_up_doc("NVIDIA H100 80GB HBM3", 79.6, 1.0, run_id="aaaa00000001"))
    b = write_atomic(tmp_path / "h200.json",
                     made_up_doc("NVIDIA H200", 139.8, 1.5, run_id="bbbb00000002", version="0.2.0",
                                    quick=True, tokens_per_page=32, extra_case=True))
    return a, b


# ------------------------------------------------------------------------------ tests
def test_module_imports_fast_without_torch_matplotlib_rich():
    code = ("import sys, kvbench.report.run_report, kvbench.report.compare; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'rich') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_headlines_match_the_registry():
    from kvbench.bench import registry
    from kvbench.report.cases import headline_of

    for key, bench in registry().items():
        assert headline_of(key) == (bench.headline, bench.headline_unit), key


def test_report_of_a_real_roundtrip_result(roundtrip_result, tmp_path):
    from kvbench.report.run_report import report

    con, buf = console()
    report(str(roundtrip_result), console=con)
    text = buf.getvalue()
    doc = json.loads(roundtrip_result.read_text())
    assert f"Run {doc['run']['id']}" in text and "Host:" in text and "GPU:" in text and "commit" in text
    assert "GB = 1e9 B" in text
    for c in doc["cases"]:
        assert c["name"] in text
    ok = [c for c in doc["cases"] if c["status"] == "ok"]
    assert ok and "bytes_verified (B)" in text
    assert f"{ok[0]['metrics']['bytes_verified']:,}" in text
    # the headline comes first; in the details, skipped cases come after the ok ones,
    # with their reasons
    assert text.index("Headline") < text.index("Environment")
    details = text[text.index("Environment"):]
    for c in doc["cases"]:
        if c["status"] == "skipped":
            assert details.index(c["name"]) > details.index(ok[-1]["name"])
            assert c["reason"][:40] in text


def test_report_tables_plots_and_self_contained_html(gpu_pair, tmp_path):
    from kvbench.report.run_report import report

    plots, page = tmp_path / "plots", tmp_path / "out" / "r.html"
    con, buf = console()
    report(str(gpu_pair[0]), plot_dir=str(plots), html_path=str(page), console=con)
    text = buf.getvalue()
    assert "NVIDIA H100 80GB HBM3" in text and "PCIe Gen5 x16 (63.0 GB/s per direction)" in text
    assert "gbps (GB/s)" in text and "tok_s (tokens/s)" in text and "pct_of_roofline (%)" in text
    assert "40.2-41.8" in text and "2.4%" in text  # p10-p90 and cv of [40, 41, 42]
    assert "test input: skipped on purpose" in text
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["accuracy_error_vs_bits.png", "decode_tok_s.png", "prefix_load_vs_recompute.png",
                     "transfer_bandwidth.png", "transfer_page_sweep.png"]
    for n in names:
        assert (plots / n).read_bytes().startswith(PNG_MAGIC)
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == len(names)
    assert "href=" not in html and 'src="http' not in html and "<script" not in html
    assert "dram-&gt;hbm/layer/fp16/16tok/batched" in html
    assert no_temp_files(plots, page.parent)


def test_report_bench_filter(gpu_pair):
    from kvbench.report.run_report import report

    con, buf = console()
    report(str(gpu_pair[0]), benches=["dec"], console=con)
    text = buf.getvalue()
    assert "hbm/nvfp4/8x4096" in text and "dram->hbm/layer" not in text


def test_compare_h100_vs_h200_ratios_warnings_and_hardware(gpu_pair, tmp_path):
    from kvbench.report.compare import compare

    plots, page = tmp_path / "cplots", tmp_path / "c.html"
    con, buf = console()
    compare([str(p) for p in gpu_pair], plot_dir=str(plots), html_path=str(page), console=con)
    text = buf.getvalue()
    lines = text.splitlines()
    warnings = [ln for ln in lines if ln.startswith("warning: ")]
    first_table = next(i for i, ln in enumerate(lines) if ln.startswith(("┏", "┌", "+")))
    assert all(lines.index(w) < first_table for w in warnings)
    joined = "\n".join(warnings)
    for what in ("kvbench version differs: A 0.1.0 vs B 0.2.0", "tokens_per_page differs: A 16 vs B 32",
                 "quick vs full differs: A full vs B quick", "cases not in both A and B: 0 in A only, 1 in B only"):
        assert what in joined, joined
    assert "mode differs" not in joined
    # runs listed by GPU and run id, columns by letter and GPU; every common figure of B
    # is 1.5x A's, beyond the noise of these samples
    assert "A = NVIDIA H100 80GB HBM3 / aaaa00000001 (" in text and "B = NVIDIA H200 / bbbb00000002 (" in text
    assert "A: NVIDIA H100 80GB HBM3" in text and "B: NVIDIA H200" in text
    assert "1.5x faster" in text and "absent" in text
    # the paged case and the sweep case of the same name stay apart
    assert "dram->hbm/layer/fp16/16tok/batched [paged]" in text
    assert "dram->hbm/layer/fp16/16tok/batched [sweep]" in text
    # hardware side by side
    assert "79.6 GiB" in text and "139.8 GiB" in text and "PCIe Gen5 x16" in text
    assert "Test CPU (test input)" in text and "/dev/nvme0n1 [Test SSD]" in text
    for p in plots.iterdir():
        assert p.name.startswith("compare_") and p.read_bytes().startswith(PNG_MAGIC)
    assert (plots / "compare_transfer_paged_gbps.png").exists()
    html = page.read_text()
    assert "warning: kvbench version differs" in html and "href=" not in html
    assert html.count("data:image/png;base64,") == len(list(plots.iterdir()))
    assert no_temp_files(plots, tmp_path)


def test_compare_mode_and_geomean(tmp_path):
    from kvbench.report.compare import build_compare

    a = made_up_doc("NVIDIA H100 80GB HBM3", 79.6, 1.0, run_id="a1")
    b = made_up_doc("NVIDIA H200", 139.8, 2.0, run_id="b1")
    a2 = copy.deepcopy(a)
    a2["run"]["id"] = "a2"
    page = build_compare([a, a2, b], ["a.json", "a2.json", "b.json"])
    warn = [w for kind, body in page.blocks if kind == "warnings" for w in body]
    assert warn == []  # same options, same code: nothing to warn about
    summary = next(t for kind, t in page.blocks if kind == "table" and t.title.startswith("Geometric"))
    rows = {(r[0], r[1]): r for r in summary.rows}
    assert rows[("transfer", "paged")][5:7] == ["1x", "2x"]  # B/A and C/A geomeans
    c = copy.deepcopy(b)
    c["run"]["mode"] = "cpu-fallback"
    page = build_compare([a, c], ["a.json", "c.json"])
    warn = [w for kind, body in page.blocks if kind == "warnings" for w in body]
    assert any(w.startswith("mode differs: A gpu vs B cpu-fallback") for w in warn)


def test_cli_report_and_compare(gpu_pair, tmp_path, capsys):
    rc, out, err = cli(["report", str(gpu_pair[0])], capsys)
    assert rc == 0 and "transfer" in out and err == ""
    rc, out, err = cli(["compare", *map(str, gpu_pair), "--bench", "prefix"], capsys)
    assert rc == 0 and "1024tok/dram" in out and "dram->hbm" not in out.split("Cases")[-1]
    rc, out, _ = cli(["report", "--help"], capsys)
    assert rc == 0 and "--plot-dir" in out and "--html" in out and "--bench" in out


def _truncated(tmp_path, gpu_pair):
    p = tmp_path / "trunc.json"
    p.write_text(Path(gpu_pair[0]).read_text()[:500])
    return p


def _wrong_schema(tmp_path, gpu_pair):
    p = tmp_path / "other.json"
    p.write_text(json.dumps({"schema": "kvbench.result/9"}))
    return p


@pytest.mark.parametrize("make,msg", [
    (lambda t, g: t / "missing.json", "no such result file"),
    (_truncated, "not valid JSON"),
    (_wrong_schema, "schema version '9' is not supported"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(make, msg, gpu_pair, tmp_path, capsys):
    bad = make(tmp_path, gpu_pair)
    plots, page = tmp_path / "never", tmp_path / "never.html"
    for argv in (["report", str(bad)], ["compare", str(gpu_pair[0]), str(bad)]):
        rc, out, err = cli([*argv, "--plot-dir", str(plots), "--html", str(page)], capsys)
        assert rc == 2, (out, err)
        assert err.startswith("kvbench: error: ") and msg in err and len(err.strip().splitlines()) == 1
        assert out == "" and not plots.exists() and not page.exists()
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("argv_fn,msg", [
    (lambda g, t: ["compare", str(g[0])], "at least two result files"),
    (lambda g, t: ["report", str(g[0]), "--bench", "nope"], "unknown bench 'nope'"),
    (lambda g, t: ["report", str(g[0]), "--html", str(t)], "is a directory"),
    (lambda g, t: ["report", str(g[0]), "--plot-dir", str(g[0])], "is not a directory"),
])
def test_bad_options_are_one_line(argv_fn, msg, gpu_pair, tmp_path, capsys):
    before = sorted(tmp_path.rglob("*"))
    rc, out, err = cli(argv_fn(gpu_pair, tmp_path), capsys)
    assert rc == 2 and err.startswith("kvbench: error: ") and msg in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


def test_write_bytes_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    from kvbench.results import write_bytes_atomic

    target = tmp_path / "f.png"
    write_bytes_atomic(target, b"old")
    assert target.read_bytes() == b"old"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, not 0600

    def boom(*a, **k):
        raise OSError("disk full (test)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
