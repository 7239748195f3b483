"""Tiers and the paged store: bit-exact page round trips through every available tier
pair, both layouts, random page orders; allocator reuse; refusals; file hygiene."""

import itertools
import os
import random
import stat

import pytest
import torch

from kvbench.errors import KvbenchError, TierUnavailable
from kvbench.spec import PageSpec, get_format, load_model
from kvbench.store import PagedKVStore, PagePool, move_pages
from kvbench.tiers import TIER_NAMES, TIERS, DramTier, NvmeTier, make_tier
from kvbench.tiers.nvme import READ_METHODS

MODEL = load_model("Llama-3.1-8B")


def spec(layout, fmt="fp16", tokens=16):
    return PageSpec(MODEL, get_format(fmt), tokens, layout)


def tier_or_skip(name, nvme_dir):
    t = make_tier(name, nvme_dir)
    ok, why = t.available()
    if not ok:
        pytest.skip(f"tier {name} unavailable: {why}")
    return t


@pytest.mark.parametrize("layout", ["layer", "block"])
# a remote tier needs a process group: tests/test_remote.py round trips it over 2 ranks
@pytest.mark.parametrize("src,dst", list(itertools.permutations([t for t in TIER_NAMES if not TIERS[t].remote], 2)))
def test_bit_exact_round_trip(src, dst, layout, nvme_dir):
    ts, td = tier_or_skip(src, nvme_dir), tier_or_skip(dst, nvme_dir)
    s = spec(layout, tokens=4 if layout == "block" else 16)
    n = 12
    rng = random.Random(hash((src, dst, layout)) & 0xFFFF)
    a, b = PagePool(ts, s, 2 * n), PagePool(td, s, 2 * n)
    try:
        data = torch.randint(0, 256, (n, s.page_bytes), dtype=torch.uint8)
        home = rng.sample(range(2 * n), n)
        a.write_pages(home, data)
        away = rng.sample(range(2 * n), n)
        move_pages(a, home, b, away)
        back = [p for p in range(2 * n) if p not in home]
        rng.shuffle(back)
        move_pages(b, away, a, back)
        assert torch.equal(a.read_pages(back).cpu(), data)
    finally:
        a.close(), b.close()
        for t in (ts, td):
            if isinstance(t, NvmeTier):
                t.close()
    assert list(nvme_dir.iterdir()) == []


@pytest.mark.parametrize("method", READ_METHODS)
def test_nvme_read_methods_agree(method, nvme_dir):
    s = spec("layer", fmt="fp8_e4m3_token_head")  # 33,792 B: not a multiple of 4 KiB
    with NvmeTier(nvme_dir) as tier:
        if method == "odirect" and not tier.odirect_status()[0]:
            pytest.skip(tier.odirect_status()[1])
        pool = PagePool(tier, s, 8)
        assert pool.stride % 4096 == 0 and pool.stride >= s.page_bytes
        data = torch.randint(0, 256, (8, s.page_bytes), dtype=torch.uint8)
        pool.write_pages(list(range(8)), data, method="odirect" if method == "odirect" else "buffered")
        order = [5, 2, 7, 0]
        assert torch.equal(pool.read_pages(order, method=method), data[order])
        pool.close()


def test_nvme_files_are_private_and_removed(nvme_dir):
    tier = NvmeTier(nvme_dir)
    pool = PagePool(tier, spec("layer"), 4)
    path = pool.file().path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    tier.close()
    assert not path.exists()
    assert list(nvme_dir.iterdir()) == []


def test_cold_cache_is_checked(nvme_dir):
    with NvmeTier(nvme_dir) as tier:
        pool = PagePool(tier, spec("block"), 4)
        pool.write_pages(list(range(4)), torch.ones(4, pool.page_bytes, dtype=torch.uint8))
        f = pool.file()
        assert 0.0 <= f.drop_cache() <= 1.0
        pool.read_pages([0, 1, 2, 3], method="buffered")
        assert f.resident_fraction() > 0  # buffered reads fill the page cache


def test_allocator_reuses_pages_without_leaks():
    pool = PagePool(DramTier(), spec("layer"), 32 * 6)
    store = PagedKVStore(pool)
    for rnd in range(5):
        for s in range(3):
            store.add_sequence(s)
            store.append_tokens(s, 17)      # 2 blocks x 32 layers
        assert pool.num_used == 3 * 2 * 32 and pool.num_free == 0
        used = {p for s in range(3) for g in store.block_table(s) for p in g}
        assert len(used) == pool.num_used  # no page handed out twice
        for s in range(3):
            store.free_sequence(s)
        assert pool.num_used == 0 and pool.num_free == pool.num_pages
    with pytest.raises(KvbenchError, match="not allocated"):
        pool.free([0])


def test_store_append_and_locate_both_layouts():
    for layout, groups in (("layer", 32), ("block", 1)):
        pool = PagePool(DramTier(), spec(layout, tokens=4), 256)
        store = PagedKVStore(pool)
        store.add_sequence(7)
        new = store.append_tokens(7, 3)
        assert len(new) == groups
        assert store.append_tokens(7, 1) == []       # same page
        assert len(store.append_tokens(7, 1)) == groups  # next page
        page, slot, lip = store.locate(7, 4, 5)
        assert slot == 0
        assert lip == (0 if layout == "layer" else 5)
        assert page == store.block_table(7)[5 if layout == "layer" else 0][1]
        bt = store.block_tables_tensor([7])
        assert bt.shape == (1, groups, 2) and bt.dtype == torch.int32


def test_pool_full_is_a_clear_error():
    pool = PagePool(DramTier(), spec("layer"), 2)
    pool.alloc(2)
    with pytest.raises(KvbenchError, match="is full"):
        pool.alloc(1)


def test_migrate_moves_a_sequence_between_tiers(nvme_dir):
    s = spec("layer", tokens=4)
    with NvmeTier(nvme_dir) as nt:
        dram = PagedKVStore(PagePool(DramTier(), s, 64))
        nvme = PagedKVStore(PagePool(nt, s, 64))
        dram.add_sequence(1)
        dram.append_tokens(1, 6)
        ids = [p for g in dram.block_table(1) for p in g]
        data = torch.randint(0, 256, (len(ids), s.page_bytes), dtype=torch.uint8)
        dram.pool.write_pages(ids, data)
        dram.migrate(1, nvme)
        assert 1 not in dram.seqs and dram.pool.num_used == 0
        ids2 = [p for g in nvme.block_table(1) for p in g]
        assert torch.equal(nvme.pool.read_pages(ids2), data)
        assert nvme.seqs[1].tokens == 6


def test_tiers_refuse_what_they_cannot_hold(nvme_dir):
    with pytest.raises(TierUnavailable, match="cannot hold"):
        DramTier().allocate(1 << 62)
    with NvmeTier(nvme_dir) as t, pytest.raises(TierUnavailable, match="cannot hold"):
        t.allocate(1 << 62)
    with pytest.raises(KvbenchError, match="larger than tier"):
        PagePool(DramTier(), PageSpec(load_model("Llama-3.1-405B"), get_format("fp16"), 1 << 20, "block"), 1)


def test_hbm_reports_why_it_is_unavailable():
    from conftest import CUDA_OK
    ok, why = make_tier("hbm").available()
    assert ok == CUDA_OK
    assert why


def test_bad_nvme_dirs(tmp_path):
    with pytest.raises(KvbenchError, match="does not exist"):
        NvmeTier(tmp_path / "missing").validate_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(KvbenchError, match="not a directory"):
        NvmeTier(f).validate_dir()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root ignores mode bits
            with pytest.raises(KvbenchError, match="not writable"):
                NvmeTier(ro).validate_dir()
    finally:
        ro.chmod(0o700)


def test_dram_label_says_pinned_or_pageable():
    from conftest import CUDA_OK
    assert DramTier().label == ("dram (pinned)" if CUDA_OK else "dram (pageable)")


def test_layer_major_allocation_keeps_each_layer_contiguous():
    """One layer-major append over a batch gives each layer's pages of the batch one run
    of consecutive ids (the decode benchmark moves a layer in one copy); group_pages
    refuses pages that are not."""
    s = spec("layer", tokens=4)
    pool = PagePool(DramTier(), s, 32 * 12 + 8)
    store = PagedKVStore(pool)
    seqs = [5, 3, 9]
    for q in seqs:
        store.add_sequence(q)
    new = store.append_tokens_layer_major(seqs, 10)  # 3 blocks of 4 tokens each
    assert new == list(range(32 * 9))
    bt = store.block_tables_tensor(seqs)
    for layer in range(32):
        assert store.group_pages(seqs, layer) == range(layer * 9, (layer + 1) * 9)
        for i in range(3):
            assert bt[i, layer].tolist() == [layer * 9 + i * 3 + b for b in range(3)]
    assert store.append_tokens_layer_major(seqs, 2) == []  # 12 tokens: the same 3 blocks
    assert [store.seqs[q].tokens for q in seqs] == [12, 12, 12]
    store.append_tokens_layer_major(seqs[:1], 1)  # a 4th block for one sequence, elsewhere
    assert store.block_table(5)[1] == [9, 10, 11, 32 * 9 + 1]
    with pytest.raises(KvbenchError, match="not consecutive"):
        store.group_pages(seqs, 1)
    assert store.group_pages(seqs[1:], 1) == range(12, 18)
    with pytest.raises(KvbenchError, match="twice"):
        store.append_tokens_layer_major([3, 3], 1)


def test_store_of_fewer_layers_and_shared_pools():
    """A store may hold tables for only the first layers (a staging slot, the layers
    that fit); several stores share one pool without handing out a page twice."""
    s = spec("layer", tokens=4)
    pool = PagePool(DramTier(), s, 64)
    slots = [PagedKVStore(pool, layers=1) for _ in range(2)]
    for st in slots:
        st.add_sequence(0)
        st.add_sequence(1)
        st.append_tokens_layer_major([0, 1], 8)
    assert [st.groups for st in slots] == [1, 1]
    assert slots[0].group_pages([0, 1], 0) == range(0, 4)
    assert slots[1].group_pages([0, 1], 0) == range(4, 8)
    assert slots[1].block_tables_tensor([0, 1]).tolist() == [[[4, 5]], [[6, 7]]]
    for bad in (0, 33):
        with pytest.raises(KvbenchError, match="cannot hold"):
            PagedKVStore(pool, layers=bad)
    with pytest.raises(KvbenchError, match="cannot hold"):
        PagedKVStore(PagePool(DramTier(), spec("block", tokens=4), 4), layers=1)


def test_pool_rows_may_be_wider_than_the_default(nvme_dir):
    """A memory pool with a file pool's row stride takes a run of file rows in one copy;
    the payload still round-trips, and rows that cannot hold a page are refused."""
    s = spec("layer", fmt="fp8_e4m3_token_head")  # 33,792 B: not a multiple of 4 KiB
    with NvmeTier(nvme_dir) as tier:
        file_pool = PagePool(tier, s, 4)
        pool = PagePool(DramTier(), s, 4, stride=file_pool.stride)
        assert pool.stride == file_pool.stride and tuple(pool.tensor.shape) == (4, file_pool.stride)
        data = torch.randint(0, 256, (4, s.page_bytes), dtype=torch.uint8)
        pool.write_pages([2, 0, 3, 1], data)
        assert torch.equal(pool.read_pages([2, 0, 3, 1]), data)
        with pytest.raises(KvbenchError, match="cannot hold"):
            PagePool(DramTier(), s, 4, stride=s.page_bytes - 4)
        with pytest.raises(KvbenchError, match="alignment"):
            PagePool(tier, s, 4, stride=file_pool.stride + 512)
        file_pool.close()
