"""`kvbench run --cases REGEX` and `--dry-run`: which cases a filter keeps, its errors,
what a dry run prints (and that it writes nothing), and that every benchmark plans as on
a GPU (`--plan-as-gpu`) without touching CUDA."""

import subprocess
import sys
import types

import pytest

from kvbench.bench import Benchmark, Case
from kvbench.errors import KvbenchError
from kvbench.results import load, skipped_case
from kvbench.runner import select_cases


def kvbench(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvbench", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def _planned():
    noop = lambda ctx: {}  # noqa: E731
    a = Benchmark("transfer", "", plan=lambda ctx: [])
    b = Benchmark("decode", "", plan=lambda ctx: [])
    cases = [Case(n, {}, noop) for n in ("ceiling/dram->hbm", "dram->hbm/layer/fp16/batched",
                                         "hbm->hbm/block/triton")]
    return [(a, c) for c in cases] + [(b, Case("ceiling/hbm", {}, noop)),
                                      (b, skipped_case("decode", "*", {}, "no GPU"))]


def names(planned):
    return [f"{b.key}/{c['name'] if isinstance(c, dict) else c.name}" for b, c in planned]


def test_no_patterns_keeps_everything():
    p = _planned()
    assert select_cases(p, None) == p and select_cases(p, []) == p


@pytest.mark.parametrize("patterns,want", [
    (["ceiling/"], ["transfer/ceiling/dram->hbm", "decode/ceiling/hbm"]),  # bare name
    (["transfer/ceiling/"], ["transfer/ceiling/dram->hbm"]),  # BENCH/NAME
    (["^ceiling/"], ["transfer/ceiling/dram->hbm", "decode/ceiling/hbm"]),  # ^ anchors the bare name
    (["^transfer/ceiling/"], ["transfer/ceiling/dram->hbm"]),
    (["batched$", "^ceiling/dram"], ["transfer/ceiling/dram->hbm", "transfer/dram->hbm/layer/fp16/batched"]),
    (["decode/"], ["decode/ceiling/hbm", "decode/*"]),  # a skipped bench's record, by its name
])
def test_filter_matches_full_and_bare_names_in_plan_order(patterns, want):
    assert names(select_cases(_planned(), patterns)) == want


def test_a_regex_matching_nothing_is_one_line_naming_it():
    with pytest.raises(KvbenchError) as e:
        select_cases(_planned(), ["ceiling/", "nvme->hbm", "zzz"], cuda=False)
    msg = str(e.value)
    assert "'nvme->hbm', 'zzz' match none of the 5 cases planned for transfer, decode" in msg
    assert "decode cannot run here: no GPU" in msg and "without a CUDA device" in msg
    assert "\n" not in msg


def test_invalid_regex_is_an_error():
    with pytest.raises(KvbenchError, match=r"--cases '\(' is not a valid regular expression"):
        select_cases(_planned(), ["("])


def cli(capsys, *args):
    """kvbench's main() in this process (faster than a subprocess): (exit code, out, err)."""
    from kvbench.cli import main

    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_with_cases_runs_only_those_and_records_the_filter(tmp_path, capsys):
    out = tmp_path / "r.json"
    nv = tmp_path / "nv"
    nv.mkdir()
    rc, _, err = cli(capsys, "run", "--quick", "--bench", "roundtrip", "--cases", "dram<->nvme/layer",
                     "--no-progress", "-o", str(out), "--nvme-dir", str(nv))
    assert rc == 0, err
    d = load(out)
    assert [c["name"] for c in d["cases"]] == ["dram<->nvme/layer"]
    assert d["run"]["options"]["cases"] == ["dram<->nvme/layer"]


@pytest.mark.parametrize("regex,msg", [
    ("nvme->hbm/nope", "--cases 'nvme->hbm/nope' matches none of the 12 cases planned for roundtrip"),
    ("dram<->(nvme", "is not a valid regular expression"),
])
def test_bad_cases_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, regex, msg):
    nv = tmp_path / "nv"
    nv.mkdir()
    rc, out, err = cli(capsys, "run", "--quick", "--bench", "roundtrip", "--cases", regex,
                       "--no-progress", "-o", str(tmp_path / "r.json"), "--nvme-dir", str(nv))
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: error:") and msg in lines[0], err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["nv"] and list(nv.iterdir()) == []


def test_dry_run_prints_names_and_writes_nothing(tmp_path, capsys):
    nv = tmp_path / "nv"
    nv.mkdir()
    rc, out, err = cli(capsys, "run", "--bench", "roundtrip", "--dry-run", "--cases", "roundtrip/dram<->nvme/",
                       "--nvme-dir", str(nv), "-o", str(tmp_path / "r.json"))
    assert rc == 0, err
    assert out.splitlines() == ["roundtrip/dram<->nvme/layer", "roundtrip/dram<->nvme/block"]
    assert "2 cases planned" in err and "nothing ran" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nv"] and list(nv.iterdir()) == []


def test_plan_as_gpu_needs_dry_run_and_is_hidden(capsys):
    rc, _, err = cli(capsys, "run", "--plan-as-gpu", "--bench", "roundtrip")
    assert rc == 2 and "needs --dry-run" in err and len(err.strip().splitlines()) == 1
    h = kvbench("run", "--help")
    assert "--cases" in h.stdout and "--dry-run" in h.stdout and "--plan-as-gpu" not in h.stdout


def test_plan_as_gpu_lists_gpu_cases(tmp_path, capsys):
    from conftest import CUDA_OK

    rc, out, err = cli(capsys, "run", "--bench", "transfer", "--format", "fp16", "--dry-run",
                       "--plan-as-gpu", "--cases", "^ceiling/", "--nvme-dir", str(tmp_path))
    assert rc == 0, err
    assert out.splitlines() == [f"transfer/ceiling/{d}" for d in
                                ("dram->hbm", "hbm->dram", "dram<->hbm", "hbm->hbm")]
    if not CUDA_OK:  # planned on the CPU, the GPU cases are not there
        rc, out, err = cli(capsys, "run", "--bench", "transfer", "--dry-run", "--cases", "^ceiling/",
                           "--nvme-dir", str(tmp_path))
        assert rc == 2 and "without a CUDA device GPU cases are not planned" in err


class _NoCuda(types.ModuleType):
    def __getattr__(self, name):
        raise AssertionError(f"torch.cuda.{name} used while planning")


@pytest.mark.parametrize("size", ["--quick", "--full"])
def test_every_bench_plans_as_gpu_without_touching_cuda(monkeypatch, capsys, tmp_path, size):
    """Planning must stay pure: a GPU plan (plan_all with cuda=True) built on a machine
    whose torch.cuda raises on any use."""
    import torch

    import kvbench.runner as runner

    real_plan_all = runner.plan_all

    def guarded(benches, ctx):
        assert ctx.cuda
        with monkeypatch.context() as m:
            m.setattr(torch, "cuda", _NoCuda("torch.cuda"))
            return real_plan_all(benches, ctx)
    monkeypatch.setattr(runner, "plan_all", guarded)
    rc, out, err = cli(capsys, "run", "--dry-run", "--plan-as-gpu", size, "--nvme-dir", str(tmp_path))
    assert rc == 0, err
    planned = out.splitlines()
    assert {n.split("/")[0] for n in planned} == {"roundtrip", "transfer", "accuracy", "decode", "prefix"}
    assert "decode/ceiling/hbm" in planned and "accuracy/speed/nvfp4" in planned
