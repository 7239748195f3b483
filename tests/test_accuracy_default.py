"""The accuracy benchmark's default: every registered format (mxfp4 included) when the user
chose none; the chosen formats when they did. Planning only: nothing runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvbench.bench import RunContext, registry
from kvbench.spec import FORMATS, load_model

DEFAULTS = ["fp16", "fp8_e4m3", "nvfp4"]  # what `kvbench run` fills in without --format


def planned_formats(tmp_path, formats, **flag) -> set[str]:
    ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=list(formats),
                     tokens_per_page=16, layouts=["layer"], nvme_dir=Path(tmp_path), warmup=0, samples=1,
                     options={"accuracy.sources": "synthetic", "accuracy.speed": "0"})
    for k, v in flag.items():  # the context's flag (kvbench/bench/__init__.py may not declare it yet)
        setattr(ctx, k, v)
    return {c.name.split("/")[1] for c in registry()["accuracy"].plan(ctx)}


def test_no_format_given_means_every_format(tmp_path):
    assert planned_formats(tmp_path, DEFAULTS, formats_given=False) == set(FORMATS)
    assert "mxfp4" in FORMATS


def test_formats_given_are_kept(tmp_path):
    assert planned_formats(tmp_path, ["fp16", "mxfp4"], formats_given=True) == {"fp16", "mxfp4"}


def test_a_context_without_the_flag_names_its_formats(tmp_path):
    assert planned_formats(tmp_path, ["fp8_e4m3"]) == {"fp8_e4m3"}
    assert planned_formats(tmp_path, []) == set(FORMATS)


@pytest.mark.skipif("formats_given" not in {f.name for f in dataclasses.fields(RunContext)},
                    reason="RunContext has no formats_given yet: kvbench/bench/__init__.py and kvbench/cli/run.py "
                           "must say whether --format was given")
def test_default_run_plans_accuracy_in_every_format(capsys, tmp_path):
    from kvbench.cli import main

    assert main(["run", "--dry-run", "--bench", "accuracy", "--nvme-dir", str(tmp_path)]) == 0
    names = capsys.readouterr().out.split()
    assert {f"accuracy/synthetic/{f}" for f in FORMATS} <= set(names)
