"""Pinned host memory: exact page-rounded sizes, the limit checks, and the arena's
reuse and release, with a fake cudaHostRegister (no GPU needed)."""

from __future__ import annotations

import gc
import mmap
import resource
from pathlib import Path

import pytest
import torch

from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.tiers import dram
from kvbench.tiers.dram import (DramTier, PinnedArena, has_cap_ipc_lock, pin_refusal,
                                pinned_bytes)

PAGE = mmap.PAGESIZE
GiB = 1 << 30
MiB = 1 << 20


# ------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize("nbytes,page,expected", [
    (0, 4096, 4096),            # one page at least: cudaHostRegister refuses size 0
    (1, 4096, 4096),
    (4096, 4096, 4096),
    (4097, 4096, 8192),
    (8_600_000_000, 4096, 8_600_002_560),  # 8.6 GB pins 8.6 GB, not torch's 16 GiB
    (65_537, 65_536, 131_072),  # 64 KiB pages (aarch64 kernels)
])
def test_pinned_bytes_rounds_to_whole_pages(nbytes, page, expected):
    assert pinned_bytes(nbytes, align=4096, page_size=page) == expected


def test_pinned_bytes_alignment_beyond_a_page_and_bad_sizes():
    # 2 MiB alignment on 4 KiB pages: 2 MiB - 4 KiB of slack, so any page start works
    assert pinned_bytes(10, align=2 << 20, page_size=4096) == 2 << 20
    assert pinned_bytes(8_600_000_000) - 8_600_000_000 < PAGE
    with pytest.raises(KvbenchError, match=">= 0"):
        pinned_bytes(-1)


def test_pin_refusal_checks_the_margin_and_memlock_explains_failures():
    total = 100 * GiB  # margin = 10 GiB
    assert pin_refusal(GiB, available=50 * GiB, total=total, memlock=None, locked=0) is None
    why = pin_refusal(41 * GiB, available=50 * GiB, total=total, memlock=None, locked=0)
    assert why and f"{41 * GiB:,} B" in why and f"{50 * GiB:,} B" in why and "10 GiB margin" in why
    # the driver may not charge RLIMIT_MEMLOCK: past it is no refusal, only an explanation
    assert pin_refusal(6 << 20, available=50 * GiB, total=total, memlock=8 << 20, locked=4 << 20) is None
    why = dram.memlock_note(6 << 20, memlock=8 << 20, locked=4 << 20)
    assert "RLIMIT_MEMLOCK" in why and f"{8 << 20:,} B" in why and f"{4 << 20:,} B" in why
    assert dram.memlock_note(4 << 20, memlock=8 << 20, locked=4 << 20) == ""


def test_cap_ipc_lock_from_proc_status():
    assert has_cap_ipc_lock("Name:\tx\nCapEff:\t000001fffeffffff\n")
    assert not has_cap_ipc_lock("CapEff:\t0000000000000000\n")
    assert not has_cap_ipc_lock("CapEff:\t%016x\n" % ((1 << 40) - 1 - (1 << 14)))
    assert not has_cap_ipc_lock(None)


def test_memlock_limit_applies_only_without_privilege(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (8 << 20, 8 << 20))
    monkeypatch.setattr(dram, "_proc_status_text", lambda: "CapEff:\t0000000000000000\n")
    assert dram.memlock_limit() == 8 << 20
    monkeypatch.setattr(dram, "_proc_status_text", lambda: "CapEff:\t0000000000004000\n")
    assert dram.memlock_limit() is None  # CAP_IPC_LOCK lifts the limit
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (resource.RLIM_INFINITY,) * 2)
    monkeypatch.setattr(dram, "_proc_status_text", lambda: "CapEff:\t0000000000000000\n")
    assert dram.memlock_limit() is None


# ------------------------------------------------------------------ what frees a block
def test_views_keep_their_base_tensor_alive_but_a_bare_storage_does_not():
    """The claim behind tracking tensors with weakrefs, checked on CPU tensors: every
    view (and view of a view) keeps the base tensor object alive through ``_base``; a
    storage kept without a tensor does not, which is why the arena tracks the buffer
    torch's storage holds rather than the base tensor."""
    import weakref

    base = torch.zeros(1000, dtype=torch.uint8)
    ref = weakref.ref(base)
    view = base[8:808].view(100, 8)[1:]
    del base
    gc.collect()
    assert ref() is not None and view._base is ref()
    del view
    gc.collect()
    assert ref() is None

    base = torch.zeros(1000, dtype=torch.uint8)
    ref = weakref.ref(base)
    storage = base.untyped_storage()
    del base
    gc.collect()
    assert ref() is None and storage.nbytes() == 1000  # memory alive, base object gone


class FakeCuda:
    """cudaHostRegister / cudaHostUnregister stand-ins that track what is pinned, and a
    host whose available memory shrinks by what they pin."""

    def __init__(self, available=64 * GiB, total=128 * GiB, memlock=None, fail=False):
        self.pinned: dict[int, int] = {}
        self.registers = 0
        self.unregistered: list[int] = []
        self.available, self.total, self.memlock, self.fail = available, total, memlock, fail

    def register(self, addr, nbytes):
        assert addr % PAGE == 0 and nbytes % PAGE == 0 and addr not in self.pinned
        if self.fail:
            raise TierUnavailable("cudaHostRegister of 1 B failed: out of memory (cudaError 2)")
        self.registers += 1
        self.pinned[addr] = nbytes

    def unregister(self, addr):
        self.unregistered.append(addr)
        del self.pinned[addr]

    def budget(self):
        return {"available": self.available - sum(self.pinned.values()), "total": self.total,
                "memlock": self.memlock}

    def arena(self):
        return PinnedArena(self.register, self.unregister, self.budget, lambda: None)


def test_arena_pins_exactly_and_reuses_a_freed_block():
    fake = FakeCuda()
    arena = fake.arena()
    n = 3 * PAGE + 5
    t = arena.take(n)
    assert t.numel() == n and t.dtype == torch.uint8 and t.data_ptr() % 4096 == 0
    assert list(fake.pinned.values()) == [pinned_bytes(n)] and arena.held_bytes == 4 * PAGE
    t.fill_(7)
    assert int(t.sum()) == 7 * n
    addr = t.data_ptr()
    other = arena.take(n)  # the first is in use: a second block
    assert other.data_ptr() != addr and fake.registers == 2
    pool = t.view(-1)[:n - 5].view(3, PAGE)[1:]  # views of views keep the block busy
    del t
    gc.collect()
    assert arena.free_bytes == 0
    del pool
    assert arena.free_bytes == 4 * PAGE  # freed as soon as the last view died
    again = arena.take(n - 100)
    assert again.data_ptr() == addr and fake.registers == 2  # reused, not pinned again
    del again, other


def test_a_storage_alone_keeps_the_block_busy():
    arena = FakeCuda().arena()
    t = arena.take(PAGE)
    storage = t.untyped_storage()
    del t
    gc.collect()
    assert arena.blocks() == [(PAGE, True)]
    del storage
    assert arena.blocks() == [(PAGE, False)]


def test_reuse_takes_the_smallest_fit_and_never_a_much_larger_block():
    fake = FakeCuda()
    arena = fake.arena()
    big, mid = arena.take(16 * PAGE), arena.take(4 * PAGE)
    big_addr, mid_addr = big.data_ptr(), mid.data_ptr()
    del big, mid
    small = arena.take(PAGE)  # 4 pages would waste > 2x: a new one-page block
    assert small.data_ptr() not in (big_addr, mid_addr) and fake.registers == 3
    three = arena.take(3 * PAGE)
    assert three.data_ptr() == mid_addr
    nine = arena.take(9 * PAGE)
    assert nine.data_ptr() == big_addr and fake.registers == 3


def test_release_unregisters_and_unmaps_only_free_blocks():
    fake = FakeCuda()
    arena = fake.arena()
    keep, drop = arena.take(PAGE), arena.take(2 * PAGE)
    drop_addr = drop.data_ptr()
    blocks = list(arena._blocks)
    del drop
    assert arena.release() == 2 * PAGE
    assert fake.unregistered == [drop_addr] and arena.blocks() == [(PAGE, True)]
    assert [b.mm.closed for b in blocks] == [False, True]
    keep[:] = 1  # still usable
    del keep
    assert arena.release() == PAGE and arena.held_bytes == 0 and fake.pinned == {}
    assert arena.release() == 0


def test_refused_pins_name_the_numbers_and_pin_nothing():
    fake = FakeCuda(available=20 * GiB, total=100 * GiB)  # 10 GiB margin: 10 GiB room
    arena = fake.arena()
    with pytest.raises(TierUnavailable, match=r"cannot pin host memory: pinning 11,811,160,064 B"):
        arena.take(11 * GiB)
    assert fake.registers == 0 and arena.held_bytes == 0
    fake = FakeCuda(memlock=8 << 20)
    arena = fake.arena()
    held = arena.take(6 << 20)
    more = arena.take(4 << 20)  # past the limit: the driver decides, not kvbench
    fake.fail = True
    with pytest.raises(TierUnavailable, match="cudaHostRegister.*RLIMIT_MEMLOCK of 8,388,608 B"):
        arena.take(4 << 20)  # a failure past the limit names it
    del held, more


def test_a_pin_that_does_not_fit_releases_free_blocks_first(monkeypatch):
    monkeypatch.setattr(dram, "DRAM_MARGIN_MIN_BYTES", 0)  # MiB-sized fakes: 10% margin
    fake = FakeCuda(available=12 * MiB, total=20 * MiB)  # 2 MiB margin: 10 MiB room
    arena = fake.arena()
    a = arena.take(3 * MiB)  # too small to reuse for 8 MiB below
    del a
    b = arena.take(8 * MiB)  # 8 MiB + 3 MiB held > 10 MiB: the free block goes first
    assert arena.blocks() == [(8 * MiB, True)] and len(fake.unregistered) == 1
    del b


def test_failed_registration_leaves_nothing_behind():
    fake = FakeCuda(fail=True)
    arena = fake.arena()
    with pytest.raises(TierUnavailable, match="cudaHostRegister"):
        arena.take(PAGE)
    assert arena.blocks() == []


def test_pageable_allocations_make_room_by_releasing_free_pinned_blocks(monkeypatch):
    monkeypatch.setattr(dram, "DRAM_MARGIN_MIN_BYTES", 0)
    fake = FakeCuda(available=13 * MiB, total=20 * MiB)  # 2 MiB margin
    arena = fake.arena()
    t = arena.take(4 * MiB)
    del t
    arena.make_room(MiB)  # fits beside the free block: kept
    assert arena.blocks() == [(4 * MiB, False)]
    arena.make_room(8 * MiB)  # 7 MiB room beside it, 11 MiB without: released
    assert arena.blocks() == []


# ------------------------------------------------------------------ through the tier
def test_dram_tier_pins_through_the_shared_arena(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(dram, "_ARENA", fake.arena())
    monkeypatch.setattr(dram, "host_pin_budget", fake.budget)
    tier = DramTier(pinned=True)
    free_before = tier.free_bytes()
    buf = tier.allocate(10 * PAGE + 1)
    assert buf.nbytes == 10 * PAGE + 1 and list(fake.pinned.values()) == [11 * PAGE]
    x = dram.aligned_host_empty(PAGE, pin=True)
    buf.close()
    assert dram._ARENA.free_bytes == 11 * PAGE
    # the free block still counts as room: it is released when something needs it
    assert tier.free_bytes() == free_before - PAGE
    assert dram.release_pinned() == 11 * PAGE and list(fake.pinned.values()) == [PAGE]
    del x
    assert dram.release_pinned() == PAGE and fake.pinned == {}


def test_dram_tier_free_bytes_ignore_memlock(monkeypatch):
    fake = FakeCuda(memlock=64 << 20)
    monkeypatch.setattr(dram, "_ARENA", fake.arena())
    monkeypatch.setattr(dram, "host_pin_budget", fake.budget)
    held = dram.aligned_host_empty(16 << 20, pin=True)
    assert DramTier(pinned=True).free_bytes() > 48 << 20
    del held


def test_pinning_without_cuda_is_a_one_line_refusal():
    if torch.version.cuda is not None and torch.cuda.is_available():
        pytest.skip("CUDA is usable here: pinning would succeed")
    with pytest.raises(TierUnavailable, match="cannot pin host memory") as exc:
        dram.aligned_host_empty(PAGE, pin=True)
    assert "\n" not in str(exc.value)
    assert dram._ARENA.blocks() == []


def test_pageable_path_unchanged():
    t = dram.aligned_host_empty(5000, pin=False)
    assert t.numel() == 5000 and t.data_ptr() % 4096 == 0 and not t.is_pinned()


# ------------------------------------------------------------------ the runner
def test_runner_releases_pinned_blocks_between_benchmarks(monkeypatch, tmp_path):
    from kvbench import runner
    from kvbench.bench import Benchmark, Case, RunContext
    from kvbench.results import make_case
    from kvbench.spec import load_model

    calls: list[str] = []
    monkeypatch.setattr(runner, "release_pinned", lambda: calls.append("release") or 0)

    def bench(key, n):
        def case(i):
            return Case(f"c{i}", {}, lambda c, i=i: calls.append(f"{key}{i}") or make_case(key, f"c{i}", {}))
        return Benchmark(key=key, description=key, plan=lambda c: [case(i) for i in range(n)])

    ctx = RunContext(cuda=False, quick=True, model=load_model("Llama-3.1-8B"), formats=["fp16"],
                     tokens_per_page=16, layouts=["layer"], nvme_dir=Path(tmp_path), warmup=0,
                     samples=1)
    runner.run([bench("a", 2), bench("b", 1)], ctx, tmp_path / "out.json", argv=[], progress=False)
    # reused across a's two cases; released before b, and at the end of the run
    assert calls[:4] == ["a0", "a1", "release", "b0"] and calls[-1] == "release"
