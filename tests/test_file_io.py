"""File I/O under the benchmarks: the queue-depth reader and writer return and store
pages bit-exactly at every depth, the staged pipeline hands every chunk on once its
slot is free, host buffers keep their memory alive, and fio's output is parsed from a
real fio run (where fio is installed)."""

import gc
import os
import random
import shutil
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from kvbench import movers
from kvbench.measure import fio, staged
from kvbench.spec import PageSpec, get_format, load_model
from kvbench.store import PagePool
from kvbench.tiers import NvmeTier
from kvbench.tiers.dram import aligned_host_empty
from kvbench.tiers.nvme import host_buffer

MODEL = load_model("Llama-3.1-8B")


def file_pool(nvme_dir, n, tokens=16):
    tier = NvmeTier(nvme_dir)
    ok, why = tier.available()
    if not ok:
        pytest.skip(f"nvme tier unavailable: {why}")
    spec = PageSpec(MODEL, get_format("fp16"), tokens, "layer")
    pool = PagePool(tier, spec, n)
    data = torch.randint(0, 256, (n, spec.page_bytes), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    direct = tier.odirect_status()[0]
    pool.write_pages(list(range(n)), data, method="odirect" if direct else "buffered")
    pool.file().sync()
    return tier, spec, pool, data, direct


@pytest.mark.parametrize("depth", [1, 4, 16, 64])
@pytest.mark.parametrize("method", ["odirect", "odirect_merged", "buffered"])
def test_queue_depth_reader_is_bit_exact(nvme_dir, depth, method):
    tier, spec, pool, data, direct = file_pool(nvme_dir, 96)
    if method.startswith("odirect") and not direct:
        pytest.skip("O_DIRECT unavailable in the test's directory")
    ids = random.Random(depth).sample(range(96), 80)
    ids[10:20] = list(range(40, 50))  # a run of adjacent pages: merged into one request
    ids = list(dict.fromkeys(ids))
    out = aligned_host_empty(len(ids) * pool.stride, pin=False).view(len(ids), pool.stride)
    out.fill_(0xAB)
    tp = ThreadPoolExecutor(depth) if depth > 1 else None
    try:
        f = pool.file()
        f.drop_cache()
        movers.file_reader(f, pool.stride, ids, out, method, tp, spec.page_bytes)()
        assert movers.queue_depth(tp) == depth
    finally:
        if tp:
            tp.shutdown()
    assert torch.equal(out[:, : spec.page_bytes], data[ids])
    pool.close()
    tier.close()


@pytest.mark.parametrize("depth", [1, 16])
def test_queue_depth_writer_is_bit_exact(nvme_dir, depth):
    tier, spec, pool, data, direct = file_pool(nvme_dir, 40)
    ids = random.Random(7).sample(range(40), 30)
    src = aligned_host_empty(30 * pool.stride, pin=False).view(30, pool.stride)
    new = torch.randint(0, 256, (30, spec.page_bytes), dtype=torch.uint8)
    src.zero_()
    src[:, : spec.page_bytes].copy_(new)
    tp = ThreadPoolExecutor(depth) if depth > 1 else None
    try:
        movers.file_writer(pool.file(), pool.stride, ids, src, "odirect" if direct else "buffered",
                           tp, spec.page_bytes)()
    finally:
        if tp:
            tp.shutdown()
    want = data.clone()
    want[ids] = new
    assert torch.equal(pool.read_pages(list(range(40))), want)
    pool.close()
    tier.close()


class FakeEvent:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def synchronize(self):
        self.log.append(("sync", self.name))


def test_staged_reader_waits_for_a_slot_before_refilling_it(nvme_dir):
    tier, spec, pool, data, direct = file_pool(nvme_dir, 50)
    method = "odirect" if direct else "buffered"
    ids = list(range(3, 50))
    staging = [aligned_host_empty(8 * pool.stride, pin=False).view(8, pool.stride) for _ in range(2)]
    out = torch.zeros(len(ids), spec.page_bytes, dtype=torch.uint8)
    log = []

    def hand_on(c):
        log.append(("hand_on", c.index))
        out[c.start: c.start + c.rows].copy_(staging[c.slot][: c.rows, : spec.page_bytes])
        return FakeEvent(log, c.index)
    chunks = staged.page_chunks(pool.file(), pool.stride, ids, staging, method, None, spec.page_bytes, 8)
    assert [c.slot for c in chunks] == [0, 1, 0, 1, 0, 1] and chunks[-1].rows == 7
    staged.StagedReader(chunks, 2, hand_on)()
    assert torch.equal(out, data[ids])
    # chunk i + 2 reuses chunk i's slot: chunk i's hand-on is waited for first
    assert log.index(("sync", 0)) < log.index(("hand_on", 2))
    assert log[-2:] == [("sync", 4), ("sync", 5)]  # the last hand-ons are waited for at the end
    pool.close()
    tier.close()


def test_host_buffer_keeps_its_tensor_alive():
    t = torch.zeros(4096, dtype=torch.uint8)
    alive = weakref.ref(t)
    buf = host_buffer(t)
    del t
    gc.collect()
    assert alive() is not None  # a read into buf never lands in freed memory
    memoryview(buf).cast("B")[0] = 7
    assert int(alive()[0]) == 7


def test_fio_argv_matches_the_case():
    job = fio.FioJob(path="/f", rw="randread", block=65536, queue_depth=16, io_bytes=2 ** 25,
                     direct=True, engine="libaio", size=2 ** 26)
    argv = job.argv("fio", runs=3)
    for want in ("--rw=randread", "--bs=65536", "--iodepth=16", "--direct=1", "--ioengine=libaio",
                 "--io_size=33554432", "--size=67108864", "--filename=/f", "--fadvise_hint=0"):
        assert want in argv
    assert argv.count("--stonewall") == 3
    # a synchronous engine gets the depth as parallel jobs, each a share of the bytes
    sync = fio.FioJob("/f", "randread", 65536, 4, 2 ** 25, False, "psync", 2 ** 26).argv("fio")
    assert "--numjobs=4" in sync and "--iodepth=1" in sync and "--io_size=8388608" in sync


def test_fio_parse_rejects_garbage():
    from kvbench.errors import KvbenchError

    with pytest.raises(KvbenchError, match="unreadable"):
        fio.parse("fio: something went wrong", "randread")
    with pytest.raises(KvbenchError, match="no bytes"):
        fio.parse('{"jobs": [{"read": {"io_bytes": 0, "bw_bytes": 0}}]}', "randread")


def test_fio_real_run_is_parsed(nvme_dir):
    if shutil.which("fio") is None:
        if os.environ.get("KVBENCH_REQUIRE_FIO"):
            pytest.fail("fio is not on PATH and KVBENCH_REQUIRE_FIO is set (CI installs fio)")
        pytest.skip("fio is not installed (apt-get install fio)")
    tier, spec, pool, data, direct = file_pool(nvme_dir, 64)
    f = pool.file()
    job = fio.FioJob(path=str(f.path), rw="randread", block=pool.stride, queue_depth=4,
                     io_bytes=32 * pool.stride, direct=direct, engine="libaio" if direct else "psync",
                     size=f.nbytes)
    got = fio.run(job, runs=2)
    assert len(got) == 2
    for r in got:
        assert r["io_bytes"] == 32 * pool.stride and r["bw_bytes"] > 0
        assert r["seconds"] == pytest.approx(r["io_bytes"] / r["bw_bytes"])
        assert r["version"].startswith("fio-")
    log = []
    secs = fio.sampler(job, log)(1)
    assert len(secs) == 1 and secs[0] > 0 and len(log) == 1
    assert torch.equal(pool.read_pages(list(range(64))), data)  # fio only read the file
    pool.close()
    tier.close()
