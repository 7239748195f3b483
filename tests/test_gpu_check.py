"""scripts/gpu_check.sh on a machine without CUDA: identity runs, every GPU stage is
recorded as skipped with the reason, and each stage's exact command, planned as on a GPU,
still selects real cases (so the script's case selection cannot rot unnoticed)."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CUDA_OK, CUDA_WHY

REPO = Path(__file__).resolve().parents[1]
STAGES = {0: "identity", 1: "tests", 2: "transfer", 3: "decode", 4: "accuracy", 5: "prefix", 6: "e2e",
          7: "remote"}


@pytest.mark.skipif(CUDA_OK, reason="a CUDA device is present: the script would make its real "
                                    "8-minute GPU run; run `bash scripts/gpu_check.sh` by hand")
def test_gpu_check_without_cuda(tmp_path):
    out, nvme = tmp_path / "out", tmp_path / "nvme"
    nvme.mkdir()
    env = dict(os.environ, GPU_CHECK_NVME_DIR=str(nvme))
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=240)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.stdout, r.stderr, (out / "run.log").read_text())
    assert took < 180, f"took {took:.0f} s"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 7 and {"identity.json", "run.log"} <= set(files), files
    assert list(nvme.iterdir()) == []  # kvbench removed its private folder

    log = (out / "run.log").read_text()
    lines = {int(m.group(1)): m for m in re.finditer(r"^stage (\d) (\w+): (.*)$", log, re.M)}
    assert sorted(lines) == sorted(STAGES), log
    for n, name in STAGES.items():
        assert lines[n].group(2) == name
    assert lines[0].group(3).startswith("ok (exit 0"), log
    for n in range(1, len(STAGES)):
        text = lines[n].group(3)
        assert text.startswith(f"skipped (no CUDA device: {CUDA_WHY})"), text
        dry = text.split("dry run", 1)[1]
        counts = [int(c) for c in re.findall(r"(\d+) (?:tests|cases)\b", dry)]
        assert counts and min(counts) >= 1 and "NO MATCH" not in dry, text
    assert re.search(r"stage 1 tests: .*test_store \d+ tests, batched probe \d+ cases, "
                     r"pytest -m gpu \d+ tests", log)
