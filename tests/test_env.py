"""kvbench.env: machine identity on a CPU-only machine, plus the pure helpers."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

from kvbench import disk_identity, mounts
from kvbench import env as kenv
from kvbench import mounts
from kvbench.report.machine import machine_lines


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("nvme")
    return kenv.collect_environment(d), d


def test_sections_present_and_json_serialisable(collected):
    env, _ = collected
    for key in ("collected_utc", "host", "nvml", "gpus", "cuda", "software", "git", "nvme"):
        assert key in env
    text = json.dumps(env, allow_nan=False)
    assert json.loads(text) == env


def test_host_section(collected):
    host = collected[0]["host"]
    assert host["cpu_cores_logical"] >= 1
    assert host["memory_total_bytes"] > 0
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]
    assert host["cpu_model"]
    assert host["memlock_limit_bytes"] is None or host["memlock_limit_bytes"] >= 0
    assert isinstance(host["numa_nodes"], list)


def test_no_nvml_is_reported_not_raised(collected):
    env, _ = collected
    nvml = env["nvml"]
    if nvml["available"]:
        pytest.skip("this machine has NVML")
    assert nvml["reason"]
    assert env["gpus"] == []
    assert any(line.startswith("GPU: none (NVML: ") for line in machine_lines(env))


def test_nvml_init_failure_gives_reason(monkeypatch):
    class NVMLError(Exception):
        pass

    fake = types.ModuleType("pynvml")

    def init():
        raise NVMLError("Driver Not Loaded")

    fake.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    section, gpus = kenv._nvml()
    assert section == {"available": False, "reason": "NVMLError: Driver Not Loaded",
                       "driver_version": None, "cuda_driver_version": None}
    assert gpus == []


def _fake_pynvml() -> types.ModuleType:
    """An H100-like device where some queries are unsupported."""

    class NotSupported(Exception):
        pass

    def unsupported(*_args):
        raise NotSupported("Not Supported")

    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 1, 2
    m.nvmlInit = m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: "580.65.06"
    m.nvmlSystemGetCudaDriverVersion = lambda: 13000
    m.nvmlDeviceGetCount = lambda: 1
    m.nvmlDeviceGetHandleByIndex = lambda i: object()
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetUUID = lambda h: "GPU-0000"
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId="00000000:1B:00.0")
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85 * 10**9, free=84 * 10**9)
    m.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: 5
    m.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: 1  # idle links downshift
    m.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16
    m.nvmlDeviceGetCurrPcieLinkWidth = lambda h: 16
    m.nvmlDeviceGetClockInfo = lambda h, c: 345
    m.nvmlDeviceGetMaxClockInfo = unsupported
    m.nvmlDeviceGetPowerManagementLimit = lambda h: 700_000  # mW
    m.nvmlDeviceGetNumaNodeId = unsupported  # falls back to sysfs (absent here)
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    m.nvmlDeviceGetPersistenceMode = lambda h: 1
    return m


def test_gpu_fields_with_fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    section, gpus = kenv._nvml()
    assert section["available"] and section["driver_version"] == "580.65.06"
    assert section["cuda_driver_version"] == "13.0"
    (g,) = gpus
    assert g["name"] == "NVIDIA H100 80GB HBM3"
    assert g["pcie_gen_max"] == 5 and g["pcie_width_max"] == 16
    assert g["pcie_limit_gbps_per_direction"] == pytest.approx(63.0, abs=0.1)
    assert g["clock_sm_max_mhz"] is None and g["clock_mem_max_mhz"] is None
    assert g["power_limit_w"] == 700.0
    assert g["compute_capability"] == "9.0"
    assert g["persistence_mode"] is True
    json.dumps(gpus, allow_nan=False)
    lines = machine_lines({"nvml": section, "gpus": gpus})
    assert any("PCIe Gen5 x16 (63.0 GB/s per direction), now Gen1 x16" in line for line in lines)


def test_cuda_section_reason(collected):
    cuda = collected[0]["cuda"]
    if cuda["available"]:
        assert cuda["device_count"] == len(cuda["devices"]) >= 1
    else:
        assert cuda["reason"] in ("torch built without CUDA",) or cuda["reason"].startswith(
            ("no CUDA device visible", "torch not importable"))


def test_nvme_block_for_tmp_dir(collected):
    env, d = collected
    nv = env["nvme"]
    assert nv["dir"] == str(d)
    assert nv["fs_type"] and nv["mount_point"]
    assert 0 < nv["free_bytes"] <= nv["total_bytes"]
    if nv["block_device"] is None:  # tmpfs/overlay temp dirs on other machines
        assert nv["reason"]
    else:
        bd = nv["block_device"]
        assert bd["disk"] and bd["device"].startswith("/dev/")
        assert bd["kind"]
        assert bd["logical_block_size"] in (512, 4096)
        assert bd["size_bytes"] > 0
        assert any(line.startswith(f"NVMe dir: {d} on /dev/") for line in machine_lines(env))


def test_nvme_without_block_device_or_dir():
    shm = Path("/dev/shm")
    if shm.is_dir():
        nv = kenv.collect_environment(shm, import_torch=False)["nvme"]
        assert nv["fs_type"] == "tmpfs" and nv["block_device"] is None and nv["reason"]
    nv = kenv.collect_environment("/nonexistent/kvbench-dir", import_torch=False)["nvme"]
    assert nv["reason"].startswith("cannot stat directory")
    json.dumps(nv, allow_nan=False)


def test_software_and_git(collected):
    env, _ = collected
    sw = env["software"]
    import kvbench

    assert sw["kvbench"] == kvbench.__version__
    assert set(kenv.SOFTWARE_DISTRIBUTIONS) == set(sw["packages"])
    assert sw["packages"]["psutil"]
    git = env["git"]
    if git is not None:
        assert git["commit"] is None or len(git["commit"]) == 40
        assert isinstance(git["dirty"], bool)


def test_git_none_outside_checkout(tmp_path):
    assert kenv._git(tmp_path) is None


def test_fast_without_torch_import():
    t0 = time.perf_counter()
    kenv.collect_environment("/tmp", import_torch=False)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("gen,width,expected", [
    (5, 16, 63.0), (4, 16, 31.5), (3, 16, 15.75), (4, 8, 15.75), (6, 16, 128.0),
    (2, 16, 8.0), (1, 1, 0.25),
])
def test_pcie_limit_arithmetic(gen, width, expected):
    assert kenv.pcie_limit_gbps(gen, width) == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("gen,width", [(None, 16), (5, None), (7, 16), (5, 0)])
def test_pcie_limit_unknown(gen, width):
    assert kenv.pcie_limit_gbps(gen, width) is None


@pytest.mark.parametrize("name,disk", [
    ("nvme0n1p1", "nvme0n1"), ("nvme10n2p15", "nvme10n2"), ("nvme0n1", "nvme0n1"),
    ("vda1", "vda"), ("vda", "vda"), ("sda3", "sda"), ("sdaa12", "sdaa"),
    ("xvdb1", "xvdb"), ("mmcblk0p2", "mmcblk0"), ("loop0", "loop0"), ("dm-0", "dm-0"),
    ("md127", "md127"), ("zram0", "zram0"),
])
def test_whole_disk_name(name, disk):
    assert disk_identity.whole_disk_name(name) == disk


def test_mountinfo_longest_match_and_escapes():
    text = "\n".join([
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        "40 27 259:1 / /mnt/nvme rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw",
        "41 27 0:50 / /mnt/nv rw - tmpfs tmpfs rw",
        r"42 40 259:2 / /mnt/nvme/my\040disk rw - ext4 /dev/nvme1n1 rw",
    ])
    rows = mounts.parse_mountinfo(text)
    assert rows[1]["fs_type"] == "xfs" and rows[1]["source"] == "/dev/nvme0n1p1"
    assert mounts.find_mount("/mnt/nvme/kv", rows)["source"] == "/dev/nvme0n1p1"
    assert mounts.find_mount("/mnt/nvme", rows)["source"] == "/dev/nvme0n1p1"
    assert mounts.find_mount("/mnt/nvmex", rows)["source"] == "/dev/vda"
    assert mounts.find_mount("/mnt/nv/a", rows)["fs_type"] == "tmpfs"
    assert mounts.find_mount("/mnt/nvme/my disk/x", rows)["source"] == "/dev/nvme1n1"


def test_device_kind():
    assert disk_identity._device_kind("nvme0n1", 0) == "nvme"
    assert disk_identity._device_kind("vda", 1) == "virtio"
    assert disk_identity._device_kind("sda", 1) == "rotational"
    assert disk_identity._device_kind("sdb", 0) == "ssd"


def test_nvml_string_helpers():
    assert kenv._sysfs_pci_address("00000000:1B:00.0") == "0000:1b:00.0"
    assert kenv._cuda_version_str(12040) == "12.4"
    assert kenv._cuda_version_str(13000) == "13.0"
    assert kenv._cuda_version_str(None) is None


def test_bracketed():
    assert kenv._bracketed("none [mq-deadline] kyber bfq") == "mq-deadline"
    assert kenv._bracketed("always [madvise] never") == "madvise"
    assert kenv._bracketed("none") == "none"
    assert kenv._bracketed(None) is None


def test_nvme_block_says_what_backs_it(collected):
    nv = collected[0]["nvme"]
    assert nv["backing"] in ("disk", "ram", "overlay", "network", "unknown")
    assert nv["backing_reason"] and nv["chosen_because"] == "given by the caller"
    if nv["block_device"] is not None and nv["fs_type"] in mounts.DISK_FILESYSTEMS:
        assert nv["backing"] == "disk"


def test_software_versions_include_the_cuda_bindings(collected, monkeypatch):
    pk = collected[0]["software"]["packages"]
    for dist in ("cuda-bindings", "nvidia-cufile"):
        assert dist in pk  # None when not installed
    real = kenv.metadata.version

    def fake(dist):
        return {"cuda-bindings": "13.0.1", "nvidia-cufile": "1.15.0.42"}.get(dist) or real(dist)
    monkeypatch.setattr(kenv.metadata, "version", fake)
    pk = kenv._software()["packages"]
    assert pk["cuda-bindings"] == "13.0.1" and pk["nvidia-cufile"] == "1.15.0.42"


def test_memlock_line_says_when_the_limit_does_not_apply():
    env = {"host": {"memlock_limit_bytes": 8 << 20, "memlock_limit_applies": False}}
    assert "memlock 8 MiB (not applied: CAP_IPC_LOCK)" in machine_lines(env)[0]
    env["host"]["memlock_limit_applies"] = True
    assert machine_lines(env)[0].endswith("memlock 8 MiB")
