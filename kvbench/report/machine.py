"""The one formatter of a machine and a run, from the environment block that
``kvbench.env.collect_environment`` writes (live for ``kvbench info``, from a result
file for the run summary, ``report`` and ``compare``): GPU and PCIe link, host, the
nvme tier's disk, software, commit; then the run's own lines."""

from __future__ import annotations

from typing import Any

from kvbench.report.numbers import UNITS_LINE, gib, is_num
from kvbench.units import GB, fmt_bytes


def gpus_of(env: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in env.get("gpus") or [] if isinstance(g, dict)]


def run_label(doc: dict[str, Any]) -> str:
    """'NVIDIA H100 80GB HBM3' or 'cpu (hostname)': what a compare column is named by."""
    env = doc.get("environment") or {}
    gpus = gpus_of(env)
    if gpus and gpus[0].get("name"):
        return str(gpus[0]["name"])
    return f"cpu ({(env.get('host') or {}).get('hostname') or '?'})"


def pcie_text(g: dict[str, Any]) -> str:
    """'PCIe Gen5 x16 (63.0 GB/s per direction), now Gen1 x16'."""
    pcie = g.get("pcie") if isinstance(g.get("pcie"), dict) else {}
    gen = g.get("pcie_gen_max", pcie.get("gen_max"))
    width = g.get("pcie_width_max", pcie.get("width_max"))
    if gen is None:
        return "PCIe ?"
    out = f"PCIe Gen{gen} x{width if width is not None else '?'}"
    limit = g.get("pcie_limit_gbps_per_direction")
    if is_num(limit):
        out += f" ({limit:.1f} GB/s per direction)"
    cur = (g.get("pcie_gen_current", pcie.get("gen_current")),
           g.get("pcie_width_current", pcie.get("width_current")))
    if None not in cur and cur != (gen, width):
        out += f", now Gen{cur[0]} x{cur[1]}"
    return out


def _no_gpu_reason(env: dict[str, Any]) -> str:
    nvml, cuda = env.get("nvml") or {}, env.get("cuda") or {}
    if nvml and not nvml.get("available", True):
        return f"NVML: {nvml.get('reason') or 'unavailable'}"
    return cuda.get("reason") or nvml.get("reason") or ("NVML: no devices" if nvml else "none recorded")


def gpu_text(env: dict[str, Any]) -> str:
    """The first GPU in one line: name, memory, compute capability; or why there is none."""
    gpus = gpus_of(env)
    if not gpus:
        return f"none ({_no_gpu_reason(env)})"
    g = gpus[0]
    more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
    cc = f", sm {g['compute_capability']}" if g.get("compute_capability") else ""
    return f"{g.get('name') or '?'}{more}, {gib(g.get('memory_total_bytes'))}{cc}"


def host_text(env: dict[str, Any], memlock: bool = False) -> str:
    h = env.get("host") or {}
    cores = h.get("cpu_cores_physical") or h.get("cores_physical") or h.get("cpu_cores_logical")
    numa = h.get("numa_nodes") or []
    out = (f"{h.get('cpu_model') or 'unknown CPU'}, {cores or '?'} cores "
           f"({h.get('cpu_cores_logical') or '?'} logical), {gib(h.get('memory_total_bytes'))} RAM, "
           f"{len(numa) or '?'} NUMA node(s)")
    if memlock and "memlock_limit_bytes" in h:
        lim = h.get("memlock_limit_bytes")
        out += f", memlock {'unlimited' if lim is None else fmt_bytes(lim)}"
        if lim is not None and h.get("memlock_limit_applies") is False:
            out += " (not applied: CAP_IPC_LOCK)"
    return out


def disk_text(env: dict[str, Any]) -> str:
    """The nvme tier's folder, block device and traits, or why they are unknown."""
    nv = env.get("nvme") or {}
    if not nv:
        return "not recorded"
    bd = nv.get("block_device") or {}
    free = nv.get("free_bytes")
    free_s = f", {free / GB:.0f} GB free" if is_num(free) else ""
    where = f"{nv['dir']} " if nv.get("dir") else ""
    if not bd:
        return f"{where}({nv.get('fs_type') or '?'}): {nv.get('reason') or 'no block device'}{free_s}"
    traits = [bd.get("kind"), nv.get("fs_type"),
              {True: "rotational", False: "non-rotational"}.get(bd.get("rotational")), bd.get("scheduler")]
    traits_s = ", ".join(str(t) for t in traits if t)
    dev = f"/dev/{bd['disk']}" if bd.get("disk") else (nv.get("source") or "?")
    model = f" [{bd['model']}]" if bd.get("model") else ""
    return f"{where}on {dev}{model} ({traits_s or '?'}){free_s}"


def software_text(env: dict[str, Any]) -> str:
    sw, cuda, nvml = env.get("software") or {}, env.get("cuda") or {}, env.get("nvml") or {}
    pk = sw.get("packages") or {}
    parts = [f"Python {sw.get('python') or '?'}"]
    if sw.get("kvbench"):
        parts.append(f"kvbench {sw['kvbench']}")
    parts += [f"torch {pk.get('torch') or sw.get('torch') or '?'}",
              f"triton {pk.get('triton') or sw.get('triton') or '?'}"]
    if cuda.get("torch_cuda_version"):
        parts.append(f"CUDA {cuda['torch_cuda_version']}")
    if nvml.get("driver_version"):
        parts.append(f"driver {nvml['driver_version']}")
    return ", ".join(parts)


def ranks_text(env: dict[str, Any]) -> str:
    """A multi-rank run's group: '2 ranks (gloo), loopback: ...' or 'one process'."""
    d = env.get("distributed")
    if not isinstance(d, dict):
        return "one process"
    return f"{d.get('world_size')} ranks ({d.get('backend')}), {d.get('link')}"


def link_kind(env: dict[str, Any]) -> str | None:
    """What decides whether two runs' remote figures compare: ranks and loopback or hosts."""
    d = env.get("distributed")
    if not isinstance(d, dict):
        return None
    where = "loopback" if d.get("loopback") else f"{len(d.get('hosts') or [])} hosts"
    return f"{d.get('world_size')} ranks, {where}"


def commit_text(env: dict[str, Any]) -> str:
    git = env.get("git") or {}
    if not git.get("commit"):
        return "unknown"
    branch = f" on {git['branch']}" if git.get("branch") else ""
    return f"{git['commit'][:12]}{branch}{' (dirty)' if git.get('dirty') else ''}"


def machine_lines(env: dict[str, Any]) -> list[str]:
    """The machine in a few lines: host, every GPU with its link, CUDA, the nvme
    folder's disk (and why it was chosen, or that it is not a disk), software."""
    lines = [f"Host: {host_text(env, memlock=True)}"]
    gpus = gpus_of(env)
    if not gpus:
        lines.append(f"GPU: {gpu_text(env)}")
    for g in gpus:
        numa = g.get("numa_node") if g.get("numa_node") is not None else "?"
        cc = f", sm {g['compute_capability']}" if g.get("compute_capability") else ""
        lines.append(f"GPU{g.get('index', '')}: {g.get('name') or '?'}, {gib(g.get('memory_total_bytes'))}{cc}, "
                     f"{pcie_text(g)}, NUMA {numa}")
    cuda = env.get("cuda")
    if cuda:
        lines.append(f"CUDA (torch): {cuda.get('torch_cuda_version') or '?'}, {cuda.get('device_count') or '?'} device(s)"
                     if cuda.get("available") else f"CUDA (torch): unavailable ({cuda.get('reason')})")
    nv = env.get("nvme")
    if nv:
        lines.append(f"NVMe dir: {disk_text(env)}")
        if nv.get("backing") not in (None, "disk"):
            lines.append(f"  not a disk: {nv.get('backing_reason')}; NVMe figures measure that")
        why = nv.get("chosen_because")
        if why and not why.startswith("given by"):
            lines.append(f"  chosen: {why}")
    lines.append(f"Software: {software_text(env)}; commit {commit_text(env)}")
    return lines


def run_lines(doc: dict[str, Any]) -> list[str]:
    """A result file's run (id, status, mode, model and options, method, command) and
    its machine."""
    run, method = doc["run"], doc.get("method") or {}
    opts, model = run.get("options") or {}, run.get("model") or {}
    size = "quick" if run.get("quick") else "full" if run.get("quick") is False else "?"
    lines = [f"Run {run['id']}: {run['status']}, mode {run['mode']}, {size}, kvbench {run['kvbench_version']}, "
             f"{run.get('started_utc')} -> {run.get('finished_utc') or '?'}"]
    if opts or model:
        shape = ""
        if model.get("num_layers"):
            shape = (f" ({model.get('attention_type', '?')}, {model.get('num_layers')} layers, "
                     f"{model.get('kv_heads')} KV heads x {model.get('head_dim')})")
        lines.append(
            f"Model {opts.get('model') or model.get('name') or '?'}{shape}; formats "
            f"{', '.join(opts.get('formats') or []) or '?'}; {opts.get('tokens_per_page', '?')} tokens/page; "
            f"layouts {', '.join(opts.get('layouts') or []) or '?'}; seed {opts.get('seed', '?')}"
            + (f"; set {opts['set']}" if opts.get("set") else ""))
    lines += machine_lines(doc.get("environment") or {})
    if method:
        lines.append(f"Method: timer {method.get('timer')}, warm-up {method.get('warmup', '?')}, "
                     f"{method.get('samples', '?')} samples, {method.get('statistic', 'median')}; {UNITS_LINE}")
    if run.get("command"):
        lines.append("Command: " + " ".join(str(a) for a in run["command"]))
    return lines
