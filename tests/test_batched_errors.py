"""movers.batched: a missing binding is a skip; a binding that fails is an error with
the binding's message (a fake cuda.bindings.driver, CPU tensors, no GPU)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from kvbench import movers
from kvbench.bench import Skip


class FakeStream:
    cuda_stream = 0x1234

    def __init__(self):
        self.synced = 0

    def synchronize(self):
        self.synced += 1


def fake_driver(result=None, raises=None, with_call=True) -> types.ModuleType:
    """A cuda.bindings.driver stand-in whose cuMemcpyBatchAsync returns ``result`` or
    raises ``raises``; records the calls it got."""
    cu = types.ModuleType("cuda.bindings.driver")
    cu.calls = []
    cu.CUdeviceptr = lambda v: ("ptr", int(v))
    cu.CUstream = lambda v: ("stream", int(v))
    cu.CUmemcpyAttributes = types.SimpleNamespace
    cu.CUmemcpySrcAccessOrder = types.SimpleNamespace(CU_MEMCPY_SRC_ACCESS_ORDER_STREAM=1)
    cu.cuGetErrorName = lambda e: (0, b"CUDA_ERROR_INVALID_VALUE")
    cu.cuGetErrorString = lambda e: (0, b"invalid argument")
    if with_call:
        def call(*args):
            cu.calls.append(args)
            if raises is not None:
                raise raises
            return result
        cu.cuMemcpyBatchAsync = call
    return cu


@pytest.fixture
def install(monkeypatch):
    def put(cu):
        pkg, sub = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        pkg.bindings, sub.driver = sub, cu
        for name, mod in (("cuda", pkg), ("cuda.bindings", sub), ("cuda.bindings.driver", cu)):
            monkeypatch.setitem(sys.modules, name, mod)
    return put


def pools():
    return torch.zeros(4, 64, dtype=torch.uint8), torch.zeros(4, 64, dtype=torch.uint8)


def test_nonzero_cuResult_is_an_error_not_a_skip(install):
    install(fake_driver(result=(1,)))
    src, dst = pools()
    with pytest.raises(movers.BatchedCopyError,
                       match=r"cuMemcpyBatchAsync failed: CUDA_ERROR_INVALID_VALUE: invalid argument \(CUresult 1\)"):
        movers.batched(src, dst, [0, 2], [1, 3], 64, FakeStream())
    assert not issubclass(movers.BatchedCopyError, Skip)
    assert issubclass(movers.BatchedCopyError, RuntimeError)


def test_binding_exception_is_an_error_with_its_message(install):
    install(fake_driver(raises=TypeError("Argument 'attrsIdxs' is not instance of type list")))
    src, dst = pools()
    with pytest.raises(movers.BatchedCopyError, match="TypeError: Argument 'attrsIdxs'"):
        movers.batched(src, dst, [0], [1], 64, FakeStream())


def test_success_probes_once_and_returns_the_call(install):
    cu = fake_driver(result=(0,))
    install(cu)
    src, dst = pools()
    stream = FakeStream()
    run = movers.batched(src, dst, [0, 2], [1, 3], 32, stream)
    assert len(cu.calls) == 1 and stream.synced == 1
    dsts, srcs, sizes, n, attrs, idxs, nattrs, handle = cu.calls[0]
    assert srcs == [("ptr", src.data_ptr()), ("ptr", src.data_ptr() + 2 * 64)]
    assert dsts == [("ptr", dst.data_ptr() + 64), ("ptr", dst.data_ptr() + 3 * 64)]
    assert sizes == [32, 32] and n == 2 and handle == ("stream", 0x1234)
    run()
    assert len(cu.calls) == 2
    cu.cuMemcpyBatchAsync = lambda *a: 700  # a bare CUresult later: still an error
    with pytest.raises(movers.BatchedCopyError, match="CUresult 700"):
        run()


def test_missing_binding_or_call_stays_a_skip(install, monkeypatch):
    install(fake_driver(with_call=False))
    src, dst = pools()
    with pytest.raises(Skip, match="no cuMemcpyBatchAsync"):
        movers.batched(src, dst, [0], [1], 64, FakeStream())
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)  # import fails
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(Skip, match="not installed"):
        movers.batched(src, dst, [0], [1], 64, FakeStream())


def test_the_runner_records_it_as_an_error_case(install):
    from pathlib import Path

    from kvbench.bench import Benchmark, Case, RunContext
    from kvbench.runner import run_case
    from kvbench.spec import load_model

    install(fake_driver(result=(1,)))
    src, dst = pools()
    ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16"],
                     tokens_per_page=16, layouts=["layer"], nvme_dir=Path("."), warmup=0, samples=1)
    case = Case("batched", {}, lambda c: movers.batched(src, dst, [0], [1], 64, FakeStream()))
    res = run_case(Benchmark(key="t", description="t", plan=lambda c: []), case, ctx)
    assert res["status"] == "error" and "CUDA_ERROR_INVALID_VALUE" in res["reason"]
