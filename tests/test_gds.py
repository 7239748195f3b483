"""GPUDirect Storage (kvbench.gds, the transfer benchmark's cufile cases): which path would
run is decided from the cuFile driver's own properties, compatibility mode is never
called GDS, pages land in the right rows, registrations are released on every exit, and
without CUDA the cases are planned by name and recorded as skips saying why. One GPU
test makes a bit-exact cuFile round trip hbm->nvme->hbm."""

import ctypes
import fcntl
import json
import os
import struct
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import CUDA_OK, requires_cuda
from kvbench import gds
from kvbench.spec import PageSpec, get_format, load_model
from kvbench.store import PagePool
from kvbench.tiers import NvmeTier

MODEL = load_model("Llama-3.1-8B")
NVME_BIT, COMPAT_BIT, P2P_BIT = 1 << 4, 1 << 1, 1 << 4  # cufile.h flag bit positions


def test_status_here_says_why_in_one_line():
    ok, path, why = gds.gds_status()
    if CUDA_OK:
        assert path in gds.GDS_PATHS + ("none",) and why
    else:
        assert (ok, path) == (False, "none") and why.startswith("needs a CUDA device: ")
    assert "\n" not in why


# ------------------------------------------------------------------ a fake cuda.bindings.cufile
class FakeCuFileError(Exception):
    def __init__(self, status):
        self.status = status
        super().__init__(f"DRIVER_NOT_INITIALIZED ({status}): nvidia-fs driver is not loaded")


def fake_cufile(nvfs=(0, 0), status=0, control=COMPAT_BIT, features=0, force=False, p2p=None,
                open_error=None, log_line=None):
    """A stand-in for cuda.bindings.cufile: driver_get_properties writes CUfileDrvProps_t
    at the pointer by cufile.h's layout (struct.pack, independent of kvbench's ctypes
    mirror); reads and writes move bytes between a buffered twin of the registered fd
    and the buffer's memory; per-GPU stats count POSIX requests."""
    mod = types.SimpleNamespace(cuFileError=FakeCuFileError, calls=[], descrs={}, fds={}, posix=[0, 0])
    mod.BoolConfigParameter = types.SimpleNamespace(FORCE_COMPAT_MODE="force", USE_PCIP2PDMA="p2p")
    mod.FileHandleType = types.SimpleNamespace(OPAQUE_FD=1)
    mod.get_version = lambda: 1200
    mod.get_parameter_bool = lambda p: {"force": force, "p2p": p2p}[p]

    def driver_open():
        if open_error:
            raise FakeCuFileError(open_error)
        if log_line:
            with open(os.environ["CUFILE_LOGFILE_PATH"], "a") as fh:
                fh.write(f"NOTICE  cufio-drv:1257 {log_line}\n")
        mod.calls.append("open")

    def get_properties(ptr):
        raw = struct.pack("=IIQQII6I", *nvfs, 4, 16384, status, control, features, 131072, 0, 0, 128, 5)
        ctypes.memmove(ptr, raw, len(raw))

    class Descr:
        def __init__(self):
            self.type, self.fs_ops, self.handle = None, None, types.SimpleNamespace(fd=None)

        @property
        def ptr(self):
            mod.descrs[id(self)] = self
            return id(self)

    def handle_register(ptr):
        d = mod.descrs[ptr]
        assert d.type == 1 and d.fs_ops == 0
        assert fcntl.fcntl(d.handle.fd, fcntl.F_GETFL) & os.O_DIRECT, "registered a buffered fd"
        h = 1000 + len(mod.fds)
        mod.fds[h] = os.open(f"/proc/self/fd/{d.handle.fd}", os.O_RDWR)
        mod.calls.append("handle")
        return h

    def handle_deregister(h):
        os.close(mod.fds.pop(h))
        mod.calls.append("unhandle")

    def read(h, base, size, foff, boff):
        got = os.pread(mod.fds[h], size, foff)
        ctypes.memmove(base + boff, got, len(got))
        mod.posix[0] += 1
        return len(got)

    def write(h, base, size, foff, boff):
        mod.posix[1] += 1
        return os.pwrite(mod.fds[h], ctypes.string_at(base + boff, size), foff)

    def get_stats_l3(ptr):
        pass

    def stats_from_ptr(ptr, readonly=False, owner=None):
        return types.SimpleNamespace(num_gpus=1, per_gpu_stats=[types.SimpleNamespace(
            n_nvfs_reads=0, n_p2p_reads=0, n_posix_reads=mod.posix[0], n_nvfs_writes=0, n_p2p_writes=0,
            n_posix_writes=mod.posix[1])])
    # the binding's layout as cuda-bindings >= 13.4 describes it (level 1 has the readv
    # counters of libcufile >= 1.19; get_version says 1.20)
    mod.StatsLevel3 = types.SimpleNamespace(from_ptr=stats_from_ptr)
    mod.stats_level1_dtype = types.SimpleNamespace(names=("read_ops", "write_ops", "readv_ops"))
    level = [0]
    mod.__dict__.update(
        driver_open=driver_open, driver_close=lambda: mod.calls.append("close"), driver_get_properties=get_properties,
        Descr=Descr, handle_register=handle_register, handle_deregister=handle_deregister, read=read, write=write,
        buf_register=lambda p, n, f: mod.calls.append("buf"), buf_deregister=lambda p: mod.calls.append("unbuf"),
        op_status_error=lambda c: f"cufile error {c}", get_stats_level=lambda: level[0],
        set_stats_level=lambda v: level.__setitem__(0, v), stats_start=lambda: mod.posix.__setitem__(
            slice(None), [0, 0]), stats_stop=lambda: None, stats_reset=lambda: None, get_stats_l3=get_stats_l3)
    return mod


@pytest.fixture
def as_gpu(monkeypatch, tmp_path):
    """A CUDA device as far as kvbench.gds can tell (none is touched), cuFile's log in tmp."""
    import kvbench.tiers.hbm as hbm

    monkeypatch.setattr(hbm, "cuda_status", lambda: (True, "a fake GPU"))
    monkeypatch.setattr(gds, "_cuda_context", lambda: None)
    monkeypatch.setenv("CUFILE_LOGFILE_PATH", str(tmp_path / "cufile.log"))

    def use(mod):
        monkeypatch.setattr(gds, "cufile_module", lambda: mod)
        return mod
    return use


@pytest.mark.parametrize("kw,path,words", [
    (dict(nvfs=(2, 20), status=NVME_BIT), "cufile", "nvidia-fs 2.20"),
    (dict(nvfs=(0, 0)), "cufile-compat", "nvidia-fs driver is not loaded"),
    (dict(nvfs=(2, 20), status=0), "cufile-compat", "reports no NVMe support"),
    (dict(nvfs=(2, 20), status=NVME_BIT, force=True), "cufile-compat", "force_compat_mode"),
    (dict(nvfs=(2, 20), status=NVME_BIT, log_line=gds.COMPAT_LOG_LINE), "cufile-compat", "cuFile's log"),
    (dict(features=P2P_BIT, p2p=True), "cufile", "P2PDMA"),
    (dict(features=P2P_BIT, p2p=False), "cufile-compat", "PCI P2PDMA off"),
])
def test_status_picks_gds_or_compat_from_the_driver(as_gpu, kw, path, words):
    mod = as_gpu(fake_cufile(**kw))
    ok, got, why = gds.gds_status()
    assert (ok, got) == (True, path) and words in why, why
    if path == "cufile-compat":
        assert "not GDS" in why
    assert mod.calls == ["open", "close"]


def test_status_unusable_when_compat_is_off_or_the_driver_refuses(as_gpu):
    as_gpu(fake_cufile(control=0))
    assert gds.gds_status() == (False, "none", "GDS unusable (the nvidia-fs driver is not loaded, no PCI "
                                              "P2PDMA) and cuFile's allow_compat_mode is off")
    mod = as_gpu(fake_cufile(open_error=5001))
    ok, path, why = gds.gds_status()
    assert (ok, path) == (False, "none") and why.startswith("cuFileDriverOpen failed: DRIVER_NOT_INITIALIZED")
    assert "close" not in mod.calls  # never opened, never closed
    bad = fake_cufile()
    bad.get_version = lambda: (_ for _ in ()).throw(RuntimeError('Failure finding "libcufile.so.0"'))
    as_gpu(bad)
    assert gds.gds_status()[2] == 'libcufile cannot load: Failure finding "libcufile.so.0"'
    assert gds.gds_status(odirect=(False, "open(O_DIRECT) failed: Invalid argument"))[2] == (
        "O_DIRECT unavailable: open(O_DIRECT) failed: Invalid argument")


def test_no_cufile_module_says_so(as_gpu, monkeypatch):
    def missing():
        raise ImportError("cuda-bindings has no cufile module (needs cuda-bindings >= 12.9.1)")
    monkeypatch.setattr(gds, "cufile_module", missing)
    monkeypatch.setattr(gds, "_kvikio_status", lambda: None)
    assert gds.gds_status() == (False, "none", "cuda-bindings has no cufile module (needs cuda-bindings >= 12.9.1)")


def test_cufile_module_here_or_why_not():
    import importlib.util

    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        with pytest.raises(ImportError, match="^cuda-bindings is not installed"):
            gds.cufile_module()
    else:
        try:
            assert hasattr(gds.cufile_module(), "read")
        except ImportError as exc:
            assert str(exc).startswith("cuda-bindings has no cufile module")


def test_kvikio_compat_and_observed_paths():
    assert gds.kvikio_decision(True)[:2] == (True, "kvikio-compat")
    assert gds.kvikio_decision(types.SimpleNamespace(name="AUTO"))[:2] == (True, "kvikio")
    assert gds.kvikio_decision(False)[1] == "kvikio" and "cannot be told" in gds.kvikio_decision(False)[2]
    assert gds.observed_path(5, 0, 0) == "cufile" and gds.observed_path(0, 3, 0) == "cufile"
    assert gds.observed_path(0, 0, 7) == "cufile-compat" and gds.observed_path(1, 0, 1) == "cufile-mixed"
    assert gds.observed_path(0, 0, 0) is None


# ------------------------------------------------------------------ moving pages (host buffers)
def _file_and_rows(tier, n_file=10, n_rows=5):
    spec = PageSpec(MODEL, get_format("nvfp4"), 16, "layer")  # 18,432 B pages: the stride is padded
    fpool = PagePool(tier, spec, n_file)
    rows = torch.zeros(n_rows, fpool.stride, dtype=torch.uint8)
    return spec, fpool, rows


def test_pages_land_in_their_rows_and_compat_is_reported(as_gpu, nvme_dir):
    mod = as_gpu(fake_cufile())
    with NvmeTier(nvme_dir) as tier:
        if not tier.odirect_status()[0]:
            pytest.skip(tier.odirect_status()[1])
        spec, fpool, rows = _file_and_rows(tier)
        data = torch.randint(0, 256, (5, spec.page_bytes), dtype=torch.uint8)
        ids, back = [7, 2, 9, 0, 4], [3, 0, 4, 1, 2]
        rows[:, : spec.page_bytes] = data
        tp = ThreadPoolExecutor(3)
        with gds.GdsFile(fpool.file(), [rows], tp) as g:
            assert (g.path, mod.calls) == ("cufile-compat", ["open", "handle", "buf"])
            seen, how = g.observe(g.page_io(True, rows, range(5), ids, fpool.stride, fpool.stride), write=True)
            assert seen == "cufile-compat" and "POSIX 5 writes" in how
            assert torch.equal(fpool.read_pages(ids), data)
            rows.zero_()
            g.page_io(False, rows, back, ids, fpool.stride, fpool.stride)()
            assert torch.equal(rows[back, : spec.page_bytes], data)
        tp.shutdown()
        assert mod.calls[-3:] == ["unbuf", "unhandle", "close"] and not mod.fds


def test_a_failed_request_is_an_error_and_everything_is_released(as_gpu, nvme_dir):
    mod = as_gpu(fake_cufile(nvfs=(2, 20), status=NVME_BIT))
    mod.read = lambda h, base, size, foff, boff: -5011  # -CU_FILE_CUDA_DRIVER_ERROR
    with NvmeTier(nvme_dir) as tier:
        if not tier.odirect_status()[0]:
            pytest.skip(tier.odirect_status()[1])
        spec, fpool, rows = _file_and_rows(tier)
        with pytest.raises(gds.GdsIOError, match="cuFileRead of .* failed: cufile error 5011"):
            with gds.GdsFile(fpool.file(), [rows]) as g:
                assert g.path == "cufile"
                g.page_io(False, rows, [0], [3], fpool.stride, fpool.stride)()
        assert mod.calls[-3:] == ["unbuf", "unhandle", "close"] and not mod.fds
        mod.read = lambda h, base, size, foff, boff: size - 4096
        with pytest.raises(gds.GdsIOError, match="short transfer"):
            with gds.GdsFile(fpool.file(), []) as g:
                g.page_io(False, rows, [0], [3], fpool.stride, fpool.stride)()


def test_unusable_gds_is_a_skip_before_anything_registers(as_gpu, nvme_dir):
    from kvbench.errors import Skip

    mod = as_gpu(fake_cufile(control=0))
    with NvmeTier(nvme_dir) as tier:
        if not tier.odirect_status()[0]:
            pytest.skip(tier.odirect_status()[1])
        _spec, fpool, rows = _file_and_rows(tier)
        with pytest.raises(Skip, match="allow_compat_mode is off"):
            with gds.GdsFile(fpool.file(), [rows]):
                pass
    assert mod.calls == ["open", "close"]


# ------------------------------------------------------------------ the transfer cases
NAMES = [f"{d}/layer/fp16/16tok/cufile/qd{q}" for d in ("nvme->hbm", "hbm->nvme") for q in (64,)]


def _kvbench(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "kvbench", "run", "--bench", "transfer", "--format", "fp16",
                           "--layout", "layer", "--no-progress", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_plan_names_the_cases_as_gpu_and_as_skips_here(tmp_path):
    r = _kvbench("--dry-run", "--plan-as-gpu", "--cases", "cufile", "--nvme-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"transfer/{n}" for n in NAMES]
    from kvbench.bench import RunContext
    from kvbench.bench.transfer import plan

    ctx = RunContext(cuda=False, quick=True, model=MODEL, formats=["fp16"], tokens_per_page=16,
                     layouts=["layer"], nvme_dir=tmp_path, warmup=0, samples=1)
    got = {c.name: c for c in plan(ctx) if "cufile" in c.name}
    assert sorted(got) == sorted(NAMES)
    for c in got.values():
        rec = c.run(ctx)
        assert rec["status"] == "skipped" and rec["reason"].startswith("needs a CUDA device"), rec
        if not CUDA_OK:
            assert rec["reason"] == gds.gds_status()[2]
        assert c.footprint is None


@pytest.mark.skipif(CUDA_OK, reason="a CUDA device is present: the cases run for real there")
def test_cli_records_the_skips_here(tmp_path):
    out = tmp_path / "t.json"
    r = _kvbench("--quick", "--cases", "cufile", "--nvme-dir", str(tmp_path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    cases = json.loads(out.read_text())["cases"]
    assert sorted(c["name"] for c in cases) == sorted(NAMES)
    assert all(c["status"] == "skipped" and c["reason"].startswith("needs a CUDA device: ") for c in cases)


# ------------------------------------------------------------------ on a GPU
@requires_cuda
@pytest.mark.gpu
def test_cufile_round_trip_hbm_nvme_hbm_is_bit_exact():
    """A few pages written by cuFile from HBM, read back by cuFile into other HBM rows:
    bit-exact, whichever path ran (GDS or cuFile's compatibility mode), and the file
    holds the same bytes."""
    from kvbench.errors import Skip
    from kvbench.tiers import make_tier

    ok, _path, why = gds.gds_status()
    if not ok:
        pytest.skip(why)
    spec = PageSpec(MODEL, get_format("fp16"), 16, "layer")
    with NvmeTier() as tier:  # a disk-backed folder where there is one
        if not tier.odirect_status()[0]:
            pytest.skip(f"O_DIRECT unavailable in {tier.base_dir}: {tier.odirect_status()[1]}")
        fpool = PagePool(tier, spec, 8)
        hbm = make_tier("hbm", None)
        src, dst = PagePool(hbm, spec, 4, stride=fpool.stride), PagePool(hbm, spec, 8, stride=fpool.stride)
        data = torch.randint(0, 256, (4, spec.page_bytes), dtype=torch.uint8, device="cuda")
        src.tensor.zero_()
        src.tensor[:, : spec.page_bytes] = data
        ids, back, s = [5, 0, 7, 2], [1, 6, 3, 4], fpool.stride
        pool = gds.io_pool(2)
        try:
            with gds.GdsFile(fpool.file(), [src.tensor, dst.tensor], pool) as g:
                seen_w, how_w = g.observe(g.page_io(True, src.tensor, range(4), ids, s, s), write=True)
                os.fdatasync(fpool.file().fd)
                fpool.file().drop_cache()
                assert torch.equal(fpool.read_pages(ids, method="odirect"), data.cpu())
                seen_r, how_r = g.observe(g.page_io(False, dst.tensor, back, ids, s, s), write=False)
        except Skip as exc:  # e.g. cuFileHandleRegister refused this folder's filesystem
            pytest.skip(str(exc))
        finally:
            pool.shutdown()
        assert torch.equal(dst.read_pages(back), data)
        assert seen_w in gds.GDS_PATHS and seen_r in gds.GDS_PATHS, (how_w, how_r)


def test_stats_are_read_only_when_the_binding_and_library_layouts_agree():
    """cuda-python issue 2794: a binding built for the other CUfileStatsLevel3_t reads
    every per-GPU count at the wrong offset; kvbench then keeps the prediction, and a
    predicted GDS is labelled cufile-unverified."""
    from kvbench.gds import stats_layout_problem

    mod = fake_cufile()
    assert stats_layout_problem(mod) == ""
    mod.get_version = lambda: 1180  # libcufile 1.18: the shorter layout
    assert "differ (cuda-python issue 2794)" in stats_layout_problem(mod)
    del mod.stats_level1_dtype
    assert stats_layout_problem(mod) == "this cuda-bindings does not describe its stats layout"


def test_a_predicted_gds_path_is_never_reported_as_observed():
    from kvbench.gds import GDS_PATHS, GdsFile

    g = GdsFile(None)
    g.path, g.reason = "cufile", "nvidia-fs 2.20 loaded"
    assert g._predicted("no counts") == ("cufile-unverified", "predicted (nvidia-fs 2.20 loaded); no counts")
    g.path = "cufile-compat"
    assert g._predicted("no counts")[0] == "cufile-compat" and "cufile-unverified" in GDS_PATHS
