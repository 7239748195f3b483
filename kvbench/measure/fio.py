"""fio as an external reference: the same file, block size, queue depth, direction and
O_DIRECT as a kvbench file case, run as one arm of the case's interleaved samples so
the case can say what share of fio it reaches. No torch.

One fio sample is one fio run of ``io_bytes``; its duration is fio's own measured
runtime for those bytes (bytes / fio's bandwidth), not the process start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from kvbench.errors import KvbenchError



def fio_path() -> str | None:
    return shutil.which("fio")


def missing_note() -> str:
    return "fio reference: not run, fio is not on PATH (Debian/Ubuntu: apt-get install fio)"


@dataclass(frozen=True)
class FioJob:
    """One fio job on an existing file. ``rw``: read, randread, write or randwrite."""
    path: str
    rw: str
    block: int
    queue_depth: int
    io_bytes: int
    direct: bool
    engine: str
    size: int
    invalidate: bool = True   # drop the file's page cache before the job (a cold read)
    fsync_end: bool = False   # writes: fdatasync before the job ends (durable, as kvbench)

    def argv(self, exe: str, runs: int = 1) -> list[str]:
        """One fio process, ``runs`` identical jobs one after another (stonewall): one
        sample each, without paying fio's start-up (~0.3 s) per sample."""
        depth = self.queue_depth if self.engine == "libaio" else 1
        jobs = 1 if self.engine == "libaio" else self.queue_depth
        a = [exe, "--output-format=json", f"--filename={self.path}", f"--rw={self.rw}",
             f"--bs={self.block}", f"--iodepth={depth}", f"--numjobs={jobs}", "--group_reporting",
             f"--ioengine={self.engine}", f"--direct={int(self.direct)}", f"--size={self.size}",
             f"--io_size={max(self.block, self.io_bytes // jobs)}", f"--invalidate={int(self.invalidate)}",
             "--randrepeat=0", "--allow_file_create=0",
             # no fadvise/madvise hints: kvbench reads with the kernel's default readahead
             "--fadvise_hint=0"]
        if self.fsync_end:
            a.append("--end_fsync=1")
        for i in range(runs):
            a += [f"--name=kvbench-ref-{i}", "--stonewall"]
        return a

    def describe(self) -> dict[str, Any]:
        return {"rw": self.rw, "bs": self.block, "iodepth": self.queue_depth, "ioengine": self.engine,
                "direct": self.direct, "size": self.size, "io_size": self.io_bytes,
                "invalidate": self.invalidate, "end_fsync": self.fsync_end}


def parse(out: str, rw: str) -> list[dict[str, float]]:
    """fio's JSON output -> per job: bytes moved, bandwidth (B/s) and runtime (s)."""
    try:
        doc = json.loads(out[out.index("{"):])
        jobs = [j["write" if "write" in rw else "read"] for j in doc["jobs"]]
        got = [(float(j["io_bytes"]), float(j["bw_bytes"])) for j in jobs]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise KvbenchError(f"fio: unreadable output ({e}): {out[:200]!r}") from e
    if not got or any(b <= 0 or bw <= 0 for b, bw in got):
        raise KvbenchError(f"fio: a job moved no bytes: {out[:200]!r}")
    version = doc.get("fio version", "")
    return [{"io_bytes": b, "bw_bytes": bw, "seconds": b / bw, "version": version} for b, bw in got]


def run(job: FioJob, runs: int = 1, timeout_s: float = 300.0) -> list[dict[str, float]]:
    """Run ``runs`` samples of the job in one fio process; fio's figures for each."""
    exe = fio_path()
    if exe is None:
        raise KvbenchError(missing_note())
    p = subprocess.run(job.argv(exe, runs), capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise KvbenchError(f"fio failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[:300]}")
    got = parse(p.stdout, job.rw)
    if len(got) != runs:
        raise KvbenchError(f"fio reported {len(got)} jobs, asked {runs}")
    return got


def sampler(job: FioJob, log: list[dict[str, float]]):
    """An ``Arm.sample`` for fio: k samples from one fio process, each the seconds for
    ``job.io_bytes`` at that job's measured bandwidth (the arm's work: ``io_bytes``)."""
    def sample(k: int) -> list[float]:
        got = run(job, k)
        log.extend(got)
        return [job.io_bytes / r["bw_bytes"] for r in got]
    return sample
