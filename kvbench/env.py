"""Hardware and software identity of the machine a run measures, read once per run.

`collect_environment()` returns a plain, JSON-serialisable dict that a result file
stores beside its measurements (``kvbench.report.machine`` turns it into the lines
that ``kvbench info``, the run summary, ``report`` and ``compare`` print). Nothing here raises on missing hardware: a query that fails
gives None (or a section with ``available: false`` and a ``reason``).

Units: sizes are bytes, clocks MHz, power W, link rates GB/s (1 GB = 1e9 bytes)
per direction. pynvml and torch are imported inside the functions that use them.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import resource
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from kvbench.disk_identity import bracketed as _bracketed
from kvbench.disk_identity import folder_identity
from kvbench.disk_identity import read_int as _read_int
from kvbench.disk_identity import read_text as _read_text
from kvbench.disk_identity import try_ as _try

# ---------------------------------------------------------------------------
# PCIe link arithmetic
# ---------------------------------------------------------------------------

# Per-lane signalling rate (GT/s) and line-encoding efficiency per generation.
# PCI Express Base Specification: Rev 1.x/2.0 use 8b/10b encoding at 2.5 and
# 5.0 GT/s; Rev 3.0 (sec. 4.2.2) introduced 128b/130b at 8.0 GT/s, kept by
# Rev 4.0 (16.0 GT/s) and Rev 5.0 (32.0 GT/s); Rev 6.0 runs 64.0 GT/s PAM4 in
# FLIT mode with no line encoding (1b/1b). FLIT framing, FEC/CRC and TLP/DLLP
# overheads are not subtracted: the figure is the raw per-direction link rate.
PCIE_GENERATIONS: dict[int, tuple[float, float]] = {
    1: (2.5, 8 / 10),
    2: (5.0, 8 / 10),
    3: (8.0, 128 / 130),
    4: (16.0, 128 / 130),
    5: (32.0, 128 / 130),
    6: (64.0, 1.0),
}


def pcie_limit_gbps(gen: int | None, width: int | None) -> float | None:
    """Raw PCIe bandwidth per direction in GB/s (1e9 B/s) for a link gen x width.

    GT/s per lane x lanes x encoding efficiency / 8 bits per byte; e.g. Gen5 x16
    = 32 x 16 x 128/130 / 8 = 63.0 GB/s, Gen4 x16 = 31.5 GB/s. None when the
    generation is unknown or the width is not positive.
    """
    if gen is None or width is None or width <= 0 or gen not in PCIE_GENERATIONS:
        return None
    gts, efficiency = PCIE_GENERATIONS[gen]
    return gts * width * efficiency / 8


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _str(value: Any) -> Any:
    """NVML strings come back as bytes from older bindings."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _meminfo_kb(text: str | None, key: str) -> int | None:
    """Value in kB of `key` in a /proc/meminfo-style text ('Node 0 MemTotal: 123 kB' too)."""
    if not text:
        return None
    m = re.search(rf"\b{re.escape(key)}:\s+(\d+)", text)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# host
# ---------------------------------------------------------------------------


def _cpu_model() -> str | None:
    text = _read_text("/proc/cpuinfo")
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model name") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or None


def _numa_nodes() -> list[dict[str, Any]]:
    """NUMA nodes visible in sysfs: id, cpulist (kernel list syntax) and MemTotal bytes."""
    base = Path("/sys/devices/system/node")
    nodes = []
    try:
        entries = sorted(
            (p for p in base.iterdir() if re.fullmatch(r"node\d+", p.name)),
            key=lambda p: int(p.name[4:]),
        )
    except OSError:
        return []
    for p in entries:
        kb = _meminfo_kb(_read_text(p / "meminfo"), "MemTotal")
        nodes.append({
            "node": int(p.name[4:]),
            "cpulist": _read_text(p / "cpulist"),
            "mem_total_bytes": kb * 1024 if kb is not None else None,
        })
    return nodes


def _memlock_limit_bytes() -> int | None:
    """Soft RLIMIT_MEMLOCK in bytes (caps pinned host memory); None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _memlock_applies() -> bool:
    from kvbench.tiers.dram import memlock_limit

    return memlock_limit() is not None


def _huge_pages() -> dict[str, Any]:
    """Static huge-page pool from /proc/meminfo and the transparent-huge-page mode."""
    text = _read_text("/proc/meminfo")
    size_kb = _meminfo_kb(text, "Hugepagesize")
    return {
        "total": _meminfo_kb(text, "HugePages_Total"),
        "free": _meminfo_kb(text, "HugePages_Free"),
        "page_size_bytes": size_kb * 1024 if size_kb is not None else None,
        "transparent": _bracketed(_read_text("/sys/kernel/mm/transparent_hugepage/enabled")),
    }


def _host() -> dict[str, Any]:
    import psutil

    vm = _try(psutil.virtual_memory)
    return {
        "hostname": _try(socket.gethostname),
        "platform": _try(platform.platform),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": _try(_cpu_model),
        "cpu_cores_physical": _try(lambda: psutil.cpu_count(logical=False)),
        "cpu_cores_logical": _try(lambda: psutil.cpu_count(logical=True)),
        "memory_total_bytes": int(vm.total) if vm else None,
        "memory_available_bytes": int(vm.available) if vm else None,
        "numa_nodes": _try(_numa_nodes, []),
        "memlock_limit_bytes": _try(_memlock_limit_bytes),
        # False when the limit does not bind this process (CAP_IPC_LOCK): see
        # kvbench.tiers.dram.memlock_limit, which checks pinned pools against it
        "memlock_limit_applies": _try(_memlock_applies),
        "huge_pages": _try(_huge_pages),
    }


# ---------------------------------------------------------------------------
# NVML (nvidia-ml-py)
# ---------------------------------------------------------------------------


def _sysfs_pci_address(nvml_bus_id: str) -> str:
    """NVML '00000000:41:00.0' -> sysfs '0000:41:00.0' (4-digit domain, lower case)."""
    domain, _, rest = nvml_bus_id.strip().partition(":")
    return f"{int(domain, 16):04x}:{rest.lower()}"


def _cuda_version_str(v: int | None) -> str | None:
    """NVML/CUDA integer version 12040 -> '12.4'."""
    if v is None:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def _gpu_info(pynvml: Any, index: int) -> dict[str, Any]:
    """One GPU's identity and link; every field in its own try (None if unsupported)."""
    n = pynvml
    h = n.nvmlDeviceGetHandleByIndex(index)
    bus_id = _try(lambda: _str(n.nvmlDeviceGetPciInfo(h).busId))
    mem = _try(lambda: n.nvmlDeviceGetMemoryInfo(h))
    gen_max = _try(lambda: n.nvmlDeviceGetMaxPcieLinkGeneration(h))
    width_max = _try(lambda: n.nvmlDeviceGetMaxPcieLinkWidth(h))
    power_mw = _try(lambda: n.nvmlDeviceGetPowerManagementLimit(h))
    cc = _try(lambda: n.nvmlDeviceGetCudaComputeCapability(h))

    numa = _try(lambda: n.nvmlDeviceGetNumaNodeId(h))
    if numa is None and bus_id:
        numa = _read_int(f"/sys/bus/pci/devices/{_try(lambda: _sysfs_pci_address(bus_id))}/numa_node")
    if numa is not None and numa < 0:  # sysfs says -1 when the platform has no NUMA affinity
        numa = None

    persistence = _try(lambda: n.nvmlDeviceGetPersistenceMode(h))
    return {
        "index": index,
        "name": _try(lambda: _str(n.nvmlDeviceGetName(h))),
        "uuid": _try(lambda: _str(n.nvmlDeviceGetUUID(h))),
        "pci_bus_id": bus_id,
        "memory_total_bytes": int(mem.total) if mem else None,
        "memory_free_bytes": int(mem.free) if mem else None,
        "pcie_gen_max": gen_max,
        "pcie_gen_current": _try(lambda: n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
        # The GPU's own maximum; pcie_gen_max is the link's (GPU and slot together).
        "pcie_gen_gpu_max": _try(lambda: n.nvmlDeviceGetGpuMaxPcieLinkGeneration(h)),
        "pcie_width_max": width_max,
        "pcie_width_current": _try(lambda: n.nvmlDeviceGetCurrPcieLinkWidth(h)),
        "pcie_limit_gbps_per_direction": pcie_limit_gbps(gen_max, width_max),
        "clock_sm_mhz": _try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        "clock_sm_max_mhz": _try(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
        "clock_mem_mhz": _try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
        "clock_mem_max_mhz": _try(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
        "power_limit_w": power_mw / 1000 if power_mw is not None else None,  # NVML reports mW
        "numa_node": numa,
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "persistence_mode": bool(persistence) if persistence is not None else None,
    }


def _nvml() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(nvml section, gpus). No NVML library or no driver is reported, not raised."""
    section: dict[str, Any] = {
        "available": False, "reason": "", "driver_version": None, "cuda_driver_version": None,
    }
    try:
        import pynvml
    except Exception as exc:  # nvidia-ml-py not installed
        section["reason"] = f"pynvml not importable: {exc}"
        return section, []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        section["reason"] = f"{type(exc).__name__}: {exc}"
        return section, []
    try:
        section["available"] = True
        section["reason"] = "ok"
        section["driver_version"] = _try(lambda: _str(pynvml.nvmlSystemGetDriverVersion()))
        section["cuda_driver_version"] = _try(
            lambda: _cuda_version_str(pynvml.nvmlSystemGetCudaDriverVersion()))
        count = _try(pynvml.nvmlDeviceGetCount, 0)
        gpus = []
        for i in range(count):
            info = _try(lambda i=i: _gpu_info(pynvml, i))
            gpus.append(info if info is not None else {"index": i, "error": "handle query failed"})
        return section, gpus
    finally:
        _try(pynvml.nvmlShutdown)


# ---------------------------------------------------------------------------
# CUDA through torch
# ---------------------------------------------------------------------------


def _cuda(import_torch: bool) -> dict[str, Any]:
    """torch's view of CUDA; `reason` says why it is unavailable."""
    section: dict[str, Any] = {
        "torch_imported": False, "torch_cuda_version": None, "available": False,
        "device_count": 0, "devices": [], "reason": "",
    }
    if not import_torch and "torch" not in sys.modules:
        section["reason"] = "not checked (torch import skipped)"
        return section
    try:
        import torch
    except Exception as exc:
        section["reason"] = f"torch not importable: {exc}"
        return section
    section["torch_imported"] = True
    section["torch_cuda_version"] = _try(lambda: torch.version.cuda)
    if section["torch_cuda_version"] is None:
        section["reason"] = "torch built without CUDA"
        return section
    if not _try(torch.cuda.is_available, False):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        section["reason"] = "no CUDA device visible" + (
            f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
        return section
    section["available"] = True
    section["reason"] = "ok"
    section["device_count"] = _try(torch.cuda.device_count, 0)
    for i in range(section["device_count"]):
        props = _try(lambda i=i: torch.cuda.get_device_properties(i))
        section["devices"].append({
            "index": i,
            "name": getattr(props, "name", None),
            "capability": f"{props.major}.{props.minor}" if props is not None else None,
            "total_memory_bytes": int(props.total_memory) if props is not None else None,
        })
    return section


# ---------------------------------------------------------------------------
# software and git
# ---------------------------------------------------------------------------

# Distribution names as installed (importlib.metadata reads them without importing).
SOFTWARE_DISTRIBUTIONS = (
    "torch", "triton", "transformers", "nvidia-ml-py", "psutil", "numpy", "rich",
    "matplotlib", "PyYAML",
    # cuMemcpyBatchAsync comes through cuda-bindings (cuda-python before 12.6 shipped it
    # itself); cuFile (GPUDirect Storage) wheels are named per CUDA major before 13
    "cuda-bindings", "cuda-python", "nvidia-cufile", "nvidia-cufile-cu12",
)


def _software() -> dict[str, Any]:
    import kvbench

    versions: dict[str, str | None] = {}
    for dist in SOFTWARE_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kvbench": kvbench.__version__,
        "packages": versions,
    }


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _git(root: Path | None = None, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """commit, branch and dirty flag (tracked files only) of the kvbench checkout;
    None when kvbench does not run from a git checkout or git is missing."""
    root = root or _repo_root()
    if not (root / ".git").exists():  # a file in worktrees, a directory otherwise
        return None
    try:
        proc = subprocess.run(
            # --no-optional-locks: never take index.lock (others may be committing).
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain=v2",
             "--branch", "--untracked-files=no"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = branch = None
    dirty = False
    for line in proc.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split(" ", 2)[2]
            commit = None if commit == "(initial)" else commit
        elif line.startswith("# branch.head "):
            branch = line.split(" ", 2)[2]
            branch = None if branch == "(detached)" else branch
        elif line and not line.startswith("#"):
            dirty = True
    return {"commit": commit, "branch": branch, "dirty": dirty}


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def collect_environment(nvme_dir: str | Path | None = None, *, import_torch: bool = True
                        ) -> dict[str, Any]:
    """Identity of this machine and software stack, as a JSON-serialisable dict.

    Sections: host, nvml, gpus, cuda, nvme (only with `nvme_dir`), software, git,
    collected_utc. Missing hardware or libraries are reported (None, ``available:
    false`` with a ``reason``), never raised. Sizes in bytes, clocks in MHz, power
    in W, PCIe limits in GB/s per direction.

    With ``import_torch=False`` the cuda section is filled only if torch is already
    imported; importing torch costs about 1 s on its own, everything else well under.
    """
    nvml, gpus = _nvml()
    env: dict[str, Any] = {
        "collected_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": _host(),
        "nvml": nvml,
        "gpus": gpus,
        "cuda": _cuda(import_torch),
        "software": _software(),
        "git": _try(_git),
    }
    if nvme_dir is not None:
        env["nvme"] = folder_identity(nvme_dir)
    return env
