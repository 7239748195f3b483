"""The tier registry and the copy-method registry: tiers declare what they are and code
asks those declarations (a fake tier registered here is used like any other), and the
transfer benchmark plans exactly the copy methods the registry says apply."""

from __future__ import annotations

import re

import pytest
import torch

from kvbench import movers
from kvbench.bench import RunContext, Skip
from kvbench.bench import transfer
from kvbench.errors import KvbenchError
from kvbench.spec import PageSpec, get_format, load_model
from kvbench.store import PagePool, move_pages
from kvbench.tiers import TIER_NAMES, TIERS, DramTier, NvmeTier, Tier, make_tier, register_tier
from kvbench.tiers.hbm import TensorBuffer

MODEL = load_model("Llama-3.1-8B")


# ------------------------------------------------------------------ tiers
def test_builtin_tiers_declare_what_they_are():
    assert tuple(TIER_NAMES) == ("hbm", "dram", "nvme", "remote")
    assert {n: TIERS[n].kind() for n in TIER_NAMES} == {"hbm": "device", "dram": "host", "nvme": "file",
                                                        "remote": "host"}  # a peer's host memory
    assert [n for n in TIER_NAMES if TIERS[n].file_backed] == ["nvme"]
    assert [n for n in TIER_NAMES if TIERS[n].device_memory] == ["hbm"]
    assert [n for n in TIER_NAMES if TIERS[n].remote] == ["remote"]
    assert all(TIERS[n].name == n for n in TIER_NAMES)


def test_unknown_tier_is_one_line():
    with pytest.raises(KvbenchError) as exc:
        make_tier("tape")
    assert str(exc.value) == "unknown tier 'tape'; known: hbm, dram, nvme, remote"


class FakeHostTier(Tier):
    """Host memory under another name, with a settable capacity."""

    name = "fakehost"
    host_memory = True
    capacity = 1 << 30

    def available(self) -> tuple[bool, str]:
        return True, "a test tier"

    def free_bytes(self) -> int:
        return self.capacity

    def _allocate(self, nbytes: int) -> TensorBuffer:
        return TensorBuffer(self, torch.empty(nbytes, dtype=torch.uint8))


class FakeDeviceTier(FakeHostTier):
    """Declares device memory; asking its capacity fails, so code that skips device tiers
    without CUDA must never ask."""

    name = "fakedevice"
    host_memory = False
    device_memory = True

    def free_bytes(self) -> int:
        raise AssertionError("a device tier was asked for its capacity without CUDA")


@pytest.fixture
def fake_tiers():
    for cls in (FakeHostTier, FakeDeviceTier):
        register_tier(cls)
    try:
        yield
    finally:
        for cls in (FakeHostTier, FakeDeviceTier):
            TIERS.pop(cls.name, None)
        FakeHostTier.capacity = 1 << 30


def test_registered_fake_tier_behaves(fake_tiers, nvme_dir):
    assert TIER_NAMES == {"hbm", "dram", "nvme", "remote", "fakehost", "fakedevice"}  # a live view
    tier = make_tier("fakehost", nvme_dir)
    assert isinstance(tier, FakeHostTier) and tier.kind() == "host"
    spec = PageSpec(MODEL, get_format("nvfp4"), 16, "layer")
    a = PagePool(tier, spec, 8)
    b = PagePool(NvmeTier(nvme_dir), spec, 8)
    try:
        assert not a.is_file and a.stride == spec.page_bytes and a.tensor is not None
        assert b.is_file and b.stride % 4096 == 0
        data = torch.randint(0, 256, (3, spec.page_bytes), dtype=torch.uint8)
        a.write_pages([5, 0, 2], data)
        move_pages(a, [5, 0, 2], b, [1, 7, 3])
        move_pages(b, [1, 7, 3], a, [4, 6, 1])
        assert torch.equal(a.read_pages([4, 6, 1]), data)
    finally:
        a.close()
        b.close()
        b.tier.close()
    d = tier.describe()
    assert d["tier"] == "fakehost" and d["available"] and d["free_bytes"] == 1 << 30
    tier.close()  # every tier can be closed


def test_check_pages_fit_asks_declarations(fake_tiers, nvme_dir):
    from kvbench.runner import check_pages_fit

    # cuda=False: the device-memory tier is never asked (it would raise)
    check_pages_fit(MODEL, ["fp16"], 16, ["layer"], nvme_dir, cuda=False)
    FakeHostTier.capacity = 1000
    with pytest.raises(KvbenchError, match="larger than tier fakehost can hold") as exc:
        check_pages_fit(MODEL, ["fp16"], 16, ["layer"], nvme_dir, cuda=False)
    assert "\n" not in str(exc.value)


def test_info_lists_every_registered_tier(fake_tiers, nvme_dir, capsys):
    import json

    from kvbench.cli import main

    assert main(["info", "--json", "--nvme-dir", str(nvme_dir)]) == 0
    tiers = {t["tier"]: t for t in json.loads(capsys.readouterr().out)["tiers"]}
    assert list(tiers) == list(TIER_NAMES)
    assert tiers["fakehost"]["available"] and tiers["fakehost"]["reason"] == "a test tier"
    assert "odirect" in tiers["nvme"] and "odirect" not in tiers["dram"]  # the file tier says
    assert list(nvme_dir.iterdir()) == []


class _TwoKinds(FakeHostTier):
    name = "twokinds"
    file_backed = True


class _NoKind(FakeHostTier):
    name = "nokind"
    host_memory = False


@pytest.mark.parametrize("cls,msg", [(_TwoKinds, "exactly one of"), (_NoKind, "exactly one of"),
                                     (DramTier, "already registered")])
def test_register_tier_checks_declarations(cls, msg):
    with pytest.raises((TypeError, ValueError), match=msg):
        register_tier(cls)
    assert TIERS.get(cls.name) in (None, DramTier)


# ------------------------------------------------------------------ copy methods
def _ctx(cuda: bool, **options: str) -> RunContext:
    return RunContext(cuda=cuda, quick=True, model=MODEL, formats=["fp16", "nvfp4"], tokens_per_page=16,
                      layouts=["layer", "block"], nvme_dir=None, warmup=0, samples=1,
                      options={"transfer.queue_depths": "1,4", **options})


def _planned(ctx: RunContext, pattern: str) -> set[str]:
    """The method part of every planned case name matching ``pattern`` (group 'm')."""
    return {m.group("m") for c in transfer.plan(ctx) if (m := re.fullmatch(pattern, c.name))}


def _names(src: str, dst: str, pred=lambda m: True) -> set[str]:
    return {m.name for m in movers.methods_for(src, dst) if pred(m)}


@pytest.mark.parametrize("cuda", [False, True])
def test_plan_lists_exactly_the_registrys_methods(cuda):
    ctx = _ctx(cuda)  # planning only: nothing runs, no GPU needed
    fmt = r"(layer|block)/(fp16|nvfp4)"
    assert _planned(ctx, rf"nvme->dram/{fmt}/(?P<m>[a-z_]+)(/qd\d+)?/cold") == _names("file", "host")
    assert _planned(ctx, rf"nvme->dram/{fmt}/(?P<m>[a-z_]+)/warm") == _names(
        "file", "host", lambda m: not m.direct_io)
    assert _planned(ctx, rf"dram->nvme/{fmt}/(?P<m>[a-z_]+)(/qd\d+)?") == _names("host", "file")
    assert _planned(ctx, r"sweep/nvme->dram/\d+tok/(?P<m>[a-z_]+)") == _names(
        "file", "host", lambda m: m.page_size_sweep)
    gpu = {
        rf"dram->hbm/{fmt}/(?P<m>[a-z_]+)": _names("host", "device"),
        rf"hbm->dram/{fmt}/(?P<m>[a-z_]+)": _names("device", "host"),
        r"dram<->hbm/(layer|block)/(?P<m>[a-z_]+)": _names("host", "device") & _names("device", "host"),
        r"hbm->hbm/(layer|block)/(?P<m>[a-z_]+)": _names("device", "device"),
        r"sweep/dram->hbm/\d+tok/(?P<m>[a-z_]+)": _names("host", "device", lambda m: m.page_size_sweep),
        r"overlap/hbm->dram/(?P<m>[a-z_]+)": _names("device", "host", lambda m: m.compute_overlap),
    }
    for pattern, want in gpu.items():
        assert _planned(ctx, pattern) == (want if cuda else set()), pattern
    # the methods as published (names in results stay what they were)
    assert _names("host", "device") == {"per_page", "batched", "coalesced", "triton"}
    assert _names("device", "device") == {"per_page", "coalesced", "triton"}
    assert movers.FILE_READ_METHODS == ("mmap", "buffered", "odirect", "odirect_merged")
    assert all(m.description and "\n" not in m.description for m in movers.COPY_METHODS.values())


@pytest.fixture
def fake_method():
    calls: list[int] = []

    def reader(job: movers.FileRows):
        read = movers.buffered_reader(job)

        def run() -> None:
            calls.append(len(job.page_ids))
            read()
        return run

    m = movers.register_copy_method(movers.CopyMethod(
        "fake_read", "buffered reads, counted (a test method)", (("file", "host"), ("host", "device")),
        read=reader, copy=lambda j: movers.per_page(j.src, j.dst, j.src_ids, j.dst_ids, j.page_bytes),
        fio_engine="psync"))
    try:
        yield m, calls
    finally:
        movers.COPY_METHODS.pop(m.name)


def test_a_registered_method_is_planned_and_runs(fake_method, nvme_dir):
    m, calls = fake_method
    names = {c.name for c in transfer.plan(_ctx(True))}
    # planned wherever its kinds apply (file -> host, host -> device), nowhere else
    assert {"nvme->dram/layer/fp16/fake_read/cold", "nvme->dram/block/nvfp4/fake_read/warm",
            "dram->hbm/layer/fp16/fake_read", "dram->hbm/block/nvfp4/fake_read"} <= names
    assert not any("fake_read" in n for n in names
                   if n.startswith(("hbm->dram", "dram<->hbm", "dram->nvme", "hbm->hbm", "sweep/", "overlap/")))
    # the file movers dispatch through the registry too
    spec = PageSpec(MODEL, get_format("fp16"), 16, "layer")
    with NvmeTier(nvme_dir) as tier:
        pool = PagePool(tier, spec, 6)
        data = torch.randint(0, 256, (3, spec.page_bytes), dtype=torch.uint8)
        pool.write_pages([4, 1, 5], data)
        out = torch.zeros(3, pool.stride, dtype=torch.uint8)
        movers.file_reader(pool.file(), pool.stride, [4, 1, 5], out, "fake_read", None, spec.page_bytes)()
        assert torch.equal(out[:, : spec.page_bytes], data) and calls == [3]
        pool.close()


def test_unmet_needs_are_a_skip_before_running():
    m = movers.register_copy_method(movers.CopyMethod(
        "fake_cuda_read", "needs CUDA (a test method)", (("file", "host"),), read=movers.buffered_reader,
        needs_cuda=True))
    try:
        cases = {c.name: c for c in transfer.plan(_ctx(False))}
        case = cases["nvme->dram/layer/fp16/fake_cuda_read/cold"]
        with pytest.raises(Skip, match="copy method fake_cuda_read needs a CUDA device"):
            case.run(_ctx(False))
        assert case.config == {"method": "fake_cuda_read"}
    finally:
        movers.COPY_METHODS.pop(m.name)


@pytest.mark.parametrize("kw,msg", [
    (dict(moves=(("file", "host"),)), "has no read builder"),
    (dict(moves=(("host", "disk"),), copy=lambda j: None), "is not a pair of"),
    (dict(moves=(("host", "file"),), write=lambda j: None, queue_depths="many"), "queue_depths"),
    (dict(name="per_page", moves=(("host", "device"),), copy=lambda j: None), "already registered"),
])
def test_register_copy_method_checks_entries(kw, msg):
    entry = {"name": "bad", "description": "a bad entry", **kw}
    with pytest.raises(ValueError, match=msg):
        movers.register_copy_method(movers.CopyMethod(**entry))
    assert "bad" not in movers.COPY_METHODS


@pytest.mark.parametrize("name", [m.name for m in movers.methods_for("host", "device") if not m.needs_cuda]
                         + ["triton"])
def test_memory_copy_builders_move_the_listed_pages(name, kernel_device):
    """What transfer runs between host and device memory, on this machine's kernel device
    (CPU tensors and Triton's interpreter without CUDA); a part moves only its pages."""
    m = movers.copy_method(name)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(0, 256, (8, 256), dtype=torch.uint8, generator=g).to(kernel_device)
    dst = torch.zeros(8, 256, dtype=torch.uint8, device=kernel_device)
    job = movers.PoolCopy(src, dst, [6, 0, 3, 5], [1, 7, 2, 4], 200, device=kernel_device)
    m.copy(job.part(0, 2))()
    if m.contiguous_span:  # two pages' worth of bytes, contiguous on both sides
        assert torch.equal(dst[:2], src[:2]) and dst[2:].sum() == 0
        return
    assert torch.equal(dst[[1, 7], :200], src[[6, 0], :200]) and dst[[2, 4]].sum() == 0
    m.copy(job)()
    assert torch.equal(dst[[1, 7, 2, 4], :200], src[[6, 0, 3, 5], :200])
    assert dst[:, 200:].sum() == 0  # bytes past the page untouched
