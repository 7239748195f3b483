"""e2e benchmark: a tiny run through the real CLI generates with DynamicCache and
kvbench's PagedCache on the same random-weight model; lossless pages agree token for
token; cases that cannot run here skip with the reason; bad options exit 2 in one line."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from kvbench.bench import DEFAULT_BENCHES, RunContext, registry  # noqa: E402
from kvbench.bench import e2e as E  # noqa: E402
from kvbench.errors import KvbenchError  # noqa: E402
from kvbench.results import load  # noqa: E402
from kvbench.spec import load_model  # noqa: E402


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvbench", "run", "--bench", "e2e", "--no-progress", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    (d / "nvme").mkdir()
    out = d / "e2e.json"
    r = cli("--format", "fp16,fp8_e4m3", "--set", "e2e.new_tokens=8", "--set", "e2e.prompt_tokens=20",
            "--samples", "2", "--warmup", "0", "--nvme-dir", str(d / "nvme"), "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return load(out), d / "nvme"


def test_registered_but_not_in_a_default_run():
    b = registry()["e2e"]
    assert b is E.BENCH and "e2e" not in DEFAULT_BENCHES
    assert b.headline == "tpot_s"
    assert {"ttft_s", "out_tok_s", "token_agreement", "first_divergence", "logit_max_abs_err",
            "logit_kl"} <= set(b.columns)
    assert {"e2e.batch", "e2e.prompt_tokens", "e2e.new_tokens"} <= set(b.options)


def test_tiny_run_through_the_cli(tiny_run):
    doc, nvme = tiny_run
    cases = {c["name"]: c for c in doc["cases"]}
    assert set(cases) == {"dynamic", "dynamic_offload", "quantized/quanto", "quantized/hqq",
                          *(f"kvbench/{t}/{f}" for t in ("hbm", "dram", "nvme") for f in ("fp16", "fp8_e4m3"))}
    for name in ("dynamic", "kvbench/dram/fp16", "kvbench/nvme/fp16", "kvbench/dram/fp8_e4m3"):
        c = cases[name]
        assert c["status"] == "ok", (name, c["reason"])
        m = c["metrics"]
        assert m["tpot_s"] > 0 and m["ttft_s"] > 0 and m["out_tok_s"] > 0
        assert len(c["samples"]["tpot_s"]) == 2 and len(c["samples"]["step_logit_kl"]) == 8
        cfg = c["config"]
        assert cfg["weights"] == "random" and cfg["layers_used"] <= 2 < cfg["layers_config"]
        assert cfg["hidden_size_used"] < cfg["hidden_size_config"]
        assert cfg["new_tokens"] == 8 and cfg["prompt_tokens"] == 20
    for name in ("kvbench/dram/fp16", "kvbench/nvme/fp16", "dynamic"):
        m = cases[name]["metrics"]
        assert m["token_agreement"] == 1.0 and m["first_divergence"] is None
        # the K/V are bit-exact; the logits match to fp16 rounding (seen once in CI at
        # 1.5e-3: the attention kernel may sum in another order on another call)
        assert m["logit_max_abs_err"] <= 1e-2 and m["logit_kl"] <= 1e-6
    lossy = cases["kvbench/dram/fp8_e4m3"]["metrics"]
    assert lossy["logit_max_abs_err"] > 0 and 0 <= lossy["token_agreement"] <= 1
    for c in cases.values():
        if c["status"] != "ok":
            assert c["status"] == "skipped" and c["reason"], c["name"]
    assert "quanto" in cases["quantized/quanto"]["reason"] or cases["quantized/quanto"]["status"] == "ok"
    assert not list(nvme.iterdir())  # the nvme pages' files are gone


def test_plot_and_highlights(tiny_run):
    doc, _ = tiny_run
    h = E.highlights(doc)
    assert h and len(h.rows) == len([c for c in doc["cases"] if c["bench"] == "e2e"])
    fig, caption = E.draw_tpot(doc)
    assert "time per output token" in caption


@pytest.mark.parametrize("opt,msg", [("e2e.batch=0", "positive"), ("e2e.new_tokens=1", "at least 2"),
                                      ("e2e.prompt_tokens=abc", "not an integer"),
                                      ("e2e.prompt_tokens=999999999", "max_position_embeddings")])
def test_bad_options_exit_2_in_one_line(opt, msg, tmp_path):
    r = cli("--set", opt, "--nvme-dir", str(tmp_path), "-o", str(tmp_path / "x.json"), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and opt.split("=")[0] in lines[0] and msg in lines[0], r.stderr


def test_settings_validate_at_plan_time(tmp_path):
    ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16"],
                     tokens_per_page=16, layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1,
                     options={"e2e.batch": "-3"})
    with pytest.raises(KvbenchError, match="e2e.batch"):
        E.plan(ctx)


def test_unsupported_attention_is_said_before_running(tmp_path):
    ctx = RunContext(cuda=False, quick=True, model=load_model("DeepSeek-V3"), formats=["fp16"],
                     tokens_per_page=16, layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1)
    ok, why = E.support(ctx)
    assert not ok and "mla" in why
