"""Shared fixtures. Tests need no special hardware: GPU cases skip with the reason."""

from __future__ import annotations

import os

import pytest

from kvbench.tiers.hbm import cuda_status

CUDA_OK, CUDA_WHY = cuda_status()
if not CUDA_OK:
    # Triton kernels run under the interpreter on the CPU; this must be set before any
    # kernel module is imported (triton.jit reads it at decoration time).
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"needs CUDA: {CUDA_WHY}")

#: Where Triton kernels run in this session: compiled on CUDA when a device is present,
#: Triton's interpreter on the CPU otherwise. Every kernel test builds its inputs here
#: (compiled Triton refuses CPU pointers), so the same tests check both.
KERNEL_DEVICE = "cuda" if CUDA_OK else "cpu"
#: kernel vs fp32 reference (relative Frobenius error): the interpreter keeps fp32
#: throughout (only summation order differs); compiled kernels round K/V products to
#: bf16/fp16 on tensor cores, as FlashAttention does
KERNEL_REL_TOL = 2e-2 if CUDA_OK else 1e-5


@pytest.fixture
def kernel_device() -> str:
    """The device kernel tests build their inputs on (see KERNEL_DEVICE)."""
    return KERNEL_DEVICE


@pytest.fixture
def nvme_dir(tmp_path):
    """A folder for nvme-tier files; the test checks nothing is left in it."""
    d = tmp_path / "nvme"
    d.mkdir()
    return d


def pytest_collection_modifyitems(config, items):
    """Microbenchmarks (tests using pytest-benchmark's fixture) run only with
    --benchmark-only; the default test run checks correctness alone."""
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="microbenchmark: run with pytest --benchmark-only")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def isolated_cli(tmp_path):
    """``run(args, timeout=240, **env)``: ``python -m kvbench ARGS`` in a fresh work folder
    (``run.work``) with its own TMPDIR (``run.tmp``) and this checkout on PYTHONPATH, no KVBENCH_NVME_DIR;
    extra environment variables as keywords."""
    import subprocess
    import sys
    from pathlib import Path

    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("KVBENCH_NVME_DIR", None)

    def run(args, timeout=240, **extra):
        return subprocess.run([sys.executable, "-m", "kvbench", *args], cwd=work, env={**env, **extra},
                              capture_output=True, text=True, timeout=timeout)

    run.work, run.tmp = work, tmp
    return run
