"""The runner: plans every selected benchmark's cases, runs them with a progress bar,
records skips and errors with their reasons, writes one result file atomically and
prints a summary table. On Ctrl-C it writes what finished, marked ``interrupted``
(never a half-written file), removes its temp files and re-raises."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from kvbench import __version__
from kvbench.bench import Benchmark, Case, RunContext, Skip
from kvbench.errors import KvbenchError
from kvbench.owner import process_identity
from kvbench.results import SCHEMA, clean_stale_temps, make_case, skipped_case, write_atomic
from kvbench.tiers.dram import release_pinned
from kvbench.tiers.nvme import MIN_NVME_FREE_BYTES  # also read from here
from kvbench.timing import method_block


def _utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_output(env: dict[str, Any]) -> Path:
    gpus = env.get("gpus") or []
    hw = gpus[0].get("name", "gpu") if gpus else "cpu"
    hw = "".join(ch if ch.isalnum() else "-" for ch in hw).strip("-").lower() or "cpu"
    host = socket.gethostname().split(".")[0]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{hw}-{host}-{stamp}.json"


def plan_all(benches: list[Benchmark], ctx: RunContext) -> list[tuple[Benchmark, Case | dict]]:
    """(bench, Case) for runnable cases, (bench, skipped case dict) for a bench that
    cannot run here at all."""
    planned: list[tuple[Benchmark, Case | dict]] = []
    for b in benches:
        ok, why = b.available(ctx)
        if not ok:
            planned.append((b, skipped_case(b.key, "*", {}, why)))
            continue
        for case in b.plan(ctx):
            planned.append((b, case))
    return planned


def case_name(case: Case | dict) -> str:
    return case["name"] if isinstance(case, dict) else case.name


def select_cases(planned: list[tuple[Benchmark, Case | dict]], patterns: list[str] | None,
                 cuda: bool = True) -> list[tuple[Benchmark, Case | dict]]:
    """The planned cases that ``--cases`` selects, in plan order (so ceilings still run
    before the cases that relate to them). A case is kept when any regex matches, by
    ``re.search``, either ``BENCH/NAME`` or the bare ``NAME``; a skipped bench's record
    is filtered by its name (``BENCH/*``) too. No patterns: every case. An invalid regex,
    or one that matches no planned case, is a one-line KvbenchError (before anything
    runs, so a typo never yields a silently empty run)."""
    if not patterns:
        return planned
    regexes = []
    for p in patterns:
        try:
            regexes.append(re.compile(p))
        except re.error as exc:
            raise KvbenchError(f"--cases {p!r} is not a valid regular expression: {exc}") from None
    hits = [0] * len(regexes)
    kept = []
    for bench, case in planned:
        name = case_name(case)
        matched = [i for i, r in enumerate(regexes) if r.search(f"{bench.key}/{name}") or r.search(name)]
        for i in matched:
            hits[i] += 1
        if matched:
            kept.append((bench, case))
    missing = [p for p, n in zip(patterns, hits) if n == 0]
    if missing:
        keys = list(dict.fromkeys(b.key for b, _ in planned))
        why = [f"{b.key} cannot run here: {c['reason']}" for b, c in planned if isinstance(c, dict)]
        if not cuda:
            why.append("without a CUDA device GPU cases are not planned")
        raise KvbenchError(
            f"--cases {', '.join(map(repr, missing))} {'matches' if len(missing) == 1 else 'match'} "
            f"none of the {len(planned)} cases planned "
            f"for {', '.join(keys) or 'no benchmark'} ('kvbench run --dry-run' lists them)"
            + "".join(f"; {w}" for w in why))
    return kept


def print_plan(benches: list[Benchmark], ctx: RunContext, patterns: list[str] | None) -> int:
    """``kvbench run --dry-run``: BENCH/NAME of every selected case, one a line on
    stdout (a bench that cannot run here goes to stderr with its reason); runs nothing."""
    planned = select_cases(plan_all(benches, ctx), patterns, ctx.cuda)
    n = 0
    for bench, case in planned:
        if isinstance(case, dict):
            print(f"kvbench: dry run: {bench.key}/{case['name']} skipped: {case['reason']}",
                  file=sys.stderr)
            continue
        print(f"{bench.key}/{case.name}")
        n += 1
    print(f"kvbench: dry run: {n} cases planned ({'GPU' if ctx.cuda else 'CPU'} plan), "
          "nothing ran", file=sys.stderr)
    return 0


#: error texts after which the CUDA context is unusable for the rest of the process
CUDA_FATAL = ("illegal memory access", "unspecified launch failure", "misaligned address",
              "an illegal instruction", "device-side assert", "CUDA error: unknown error")


def _release_gpu_memory() -> None:
    """Hand cached device and pinned host blocks back between cases, so each case's
    free-memory budget sees what is really free."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    host_empty = getattr(torch._C, "_host_emptyCache", None)
    if host_empty is not None:
        host_empty()


def run_case(bench: Benchmark, case: Case, ctx: RunContext) -> dict[str, Any]:
    if ctx.cuda_failed:
        return skipped_case(bench.key, case.name, case.config,
                            f"the CUDA context failed earlier ({ctx.cuda_failed}); "
                            "run this bench again in a fresh process")
    try:
        if ctx.cuda:
            _release_gpu_memory()
        if case.footprint is not None:  # refuse before the case allocates anything
            from kvbench.footprint import check_footprint

            check_footprint(case.footprint(ctx), ctx.nvme_dir)
        result = case.run(ctx)
    except Skip as exc:
        return skipped_case(bench.key, case.name, case.config, str(exc))
    except KvbenchError as exc:
        return make_case(bench.key, case.name, case.config, status="error", reason=str(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one case failing must not lose the run
        tb = traceback.format_exc(limit=-3)
        reason = f"{type(exc).__name__}: {exc}"
        if ctx.cuda and any(s in str(exc) for s in CUDA_FATAL):
            ctx.cuda_failed = f"{bench.key}/{case.name}: {str(exc).splitlines()[0]}"
        return make_case(bench.key, case.name, case.config, status="error",
                         reason=reason, notes=[tb])
    return result


def run(benches: list[Benchmark], ctx: RunContext, output: Path, *, argv: list[str],
        console: Any = None, progress: bool = True,
        cases: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Run (only the cases the ``cases`` regexes select, if given: see select_cases),
    write the result file, return (document, path)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "run": {
            "id": uuid.uuid4().hex[:12],
            "started_utc": _utc(),
            "finished_utc": None,
            "status": "running",
            "checkpoint_utc": None,
            "writer": process_identity(),
            "command": ["kvbench", *argv],
            "kvbench_version": __version__,
            "benches": [b.key for b in benches],
            "mode": "gpu" if ctx.cuda else "cpu-fallback",
            "quick": ctx.quick,
            "options": {
                "model": ctx.model.name,
                "formats": ctx.formats,
                "tokens_per_page": ctx.tokens_per_page,
                "layouts": ctx.layouts,
                "seed": ctx.seed,
                "set": ctx.options,
                "cases": list(cases) if cases else None,
            },
            "model": ctx.model.summary(),
        },
        "environment": ctx.environment,
        "method": method_block(cuda=ctx.cuda, warmup=ctx.warmup, samples=ctx.samples),
        "cases": ctx.done,
    }
    planned = select_cases(plan_all(benches, ctx), cases, ctx.cuda)
    clean_stale_temps(output.parent)  # temp files an earlier kill -9 left beside its result

    def checkpoint() -> None:
        doc["run"]["checkpoint_utc"] = _utc()
        write_atomic(output, doc)

    try:
        checkpoint()  # a run killed during its first case still leaves a file saying so
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[case]}"),
            console=console, disable=not progress, transient=False,
        ) as bar:
            task = bar.add_task("kvbench run", total=len(planned), case="")
            for bench, case in planned:
                if isinstance(case, dict):
                    ctx.done.append(case)
                    bar.advance(task)
                    continue
                if ctx.done and ctx.done[-1]["bench"] != bench.key:
                    release_pinned()  # pinned pools are reused within one benchmark only
                bar.update(task, case=f"{bench.key}: {case.name}")
                ctx.done.append(run_case(bench, case, ctx))
                bar.advance(task)
                # checkpoint: a run killed outright (OOM, SIGKILL) still leaves every
                # finished case in a whole file, marked "running"
                checkpoint()
            bar.update(task, case="done")
        doc["run"]["status"] = "complete"
    except KeyboardInterrupt:
        doc["run"]["status"] = "interrupted"
        raise
    finally:
        release_pinned()
        doc["run"]["finished_utc"] = _utc()
        if doc["run"]["status"] == "running":
            doc["run"]["status"] = "failed"
        checkpoint()
    return doc, output


def make_nvme_workdir(base: str | None) -> tuple[Path, bool]:
    """The folder NVMe files go in: --nvme-dir (validated) or a private temp dir, which
    the caller must remove, inside the first disk-backed default candidate
    (kvbench.tiers.nvme.default_nvme_dir: $KVBENCH_NVME_DIR, $TMPDIR, /var/tmp, /tmp,
    the current directory; /tmp may be tmpfs or an overlay on a GPU machine). Why it
    was chosen goes to the environment block. Returns (path, owned).

    First the folders an earlier kvbench killed outright left there are removed
    (kvbench.owned_dirs.remove_stale_dirs: kvbench's own, this host's and user's, their
    owner process gone), in --nvme-dir or in every default candidate."""
    from kvbench.owned_dirs import make_owned_dir, remove_stale_dirs
    from kvbench.tiers.nvme import NVME_MARGIN_MIN_BYTES, NvmeTier, default_nvme_dir, nvme_dir_candidates, record_choice

    for cand in ([base] if base is not None else [p for _name, p in nvme_dir_candidates()]):
        if cand and os.path.isdir(cand):
            remove_stale_dirs(cand)
    if base is not None:
        tier = NvmeTier(base)
        tier.validate_dir()
        if tier.free_bytes() < MIN_NVME_FREE_BYTES:
            raise KvbenchError(
                f"nvme directory {base} is on a full disk ({shutil.disk_usage(base).free:,} B free; "
                f"kvbench keeps {NVME_MARGIN_MIN_BYTES:,} B or 5% free and needs "
                f"{MIN_NVME_FREE_BYTES:,} B beyond that)")
        record_choice(base, "given by --nvme-dir")
        return Path(base), False
    choice = default_nvme_dir()
    try:
        path = make_owned_dir("kvbench-nvme-", choice.path)
    except OSError as exc:
        raise KvbenchError(f"cannot create a folder in {choice.path}: {exc.strerror}") from None
    record_choice(path, choice.reason)
    return path, True


def check_pages_fit(model: Any, formats: list[str], tokens: int, layouts: list[str],
                    nvme_dir: Path, cuda: bool, *, benches: list[Benchmark] | None = None,
                    quick: bool = False, options: dict[str, str] | None = None,
                    cases: list[str] | None = None) -> None:
    """Bad input before anything runs: a page larger than a tier can hold, or (given the
    selected ``benches``, with the run's ``quick``, ``options`` and ``--cases``) a case
    whose declared footprint (Case.footprint, kvbench.footprint) exceeds what a tier has
    free after its margin, nothing being held yet: the largest such case refuses the
    whole run with one line (KvbenchError, exit 2), before anything is allocated."""
    from kvbench.spec import PageSpec, get_format
    from kvbench.tiers import TIERS
    from kvbench.units import fmt_bytes

    biggest = max((PageSpec(model, get_format(f), tokens, lay) for f in formats for lay in layouts),
                  key=lambda s: s.page_bytes)
    for tier_cls in TIERS.values():
        if tier_cls.device_memory and not cuda:
            continue
        tier = tier_cls.build(nvme_dir)
        if not tier.available()[0]:
            continue
        free = tier.free_bytes()
        if biggest.page_bytes > free:
            raise KvbenchError(
                f"a page of {fmt_bytes(biggest.page_bytes)} ({model.name}, {biggest.fmt.name}, "
                f"{tokens} tokens, layout {biggest.layout}) is larger than tier {tier.label} can hold "
                f"({fmt_bytes(free)} available)")
    if benches is not None:
        _check_largest_case(benches, RunContext(
            cuda=cuda, quick=quick, model=model, formats=formats, tokens_per_page=tokens,
            layouts=layouts, nvme_dir=nvme_dir, warmup=0, samples=1, options=dict(options or {})),
            cases)


def _check_largest_case(benches: list[Benchmark], ctx: RunContext, cases: list[str] | None) -> None:
    """KvbenchError when no case that declares its footprint fits (the run could only
    skip them all), naming the one furthest over. When some fit, the others are
    skipped one by one with their numbers (run_case)."""
    from kvbench.footprint import by_tier_kind, refusal, tier_free

    all_cases = plan_all(benches, ctx)  # a bad option fails here, before anything runs
    try:
        planned = select_cases(all_cases, cases, ctx.cuda)
    except KvbenchError:
        return  # --cases selects nothing this machine would plan: the real selection says so
    free: dict[str, int | None] = {}
    worst, fits = None, 0
    for bench, case in planned:
        if isinstance(case, dict) or case.footprint is None:
            continue
        need = case.footprint(ctx)
        for kind in by_tier_kind(need):
            if kind not in free:
                free[kind] = tier_free(kind, ctx.nvme_dir)
        if any(free.get(k) is None for k in by_tier_kind(need)):
            continue  # a tier it needs is unavailable here: the case skips on its own
        err = refusal(need, free)
        fits += err is None
        if err is not None and (worst is None or err.need - err.free > worst[2].need - worst[2].free):
            worst = (bench, case, err)
    if worst is not None and not fits:
        bench, case, err = worst
        raise KvbenchError(f"case {bench.key}/{case.name} {err} ({ctx.model.name}, "
                           f"{ctx.tokens_per_page} tokens per page): nothing was run")


def remove_workdir(path: Path, owned: bool) -> None:
    if owned:
        shutil.rmtree(path, ignore_errors=True)


def stderr_console() -> Any:
    """Rich console on stderr; wide when not a terminal (logs, CI) so tables stay whole."""
    from rich.console import Console

    width = None if sys.stderr.isatty() else 200
    return Console(stderr=True, highlight=False, width=width)

