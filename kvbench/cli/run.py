"""``kvbench run``: its checked settings, the multi-rank launch, one run here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.results import check_output
from kvbench.cli.args import DEFAULT_FORMATS, csv_values


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: ends it as Ctrl-C does (finished cases written, status
    "interrupted"), but exits 143 rather than 130."""


def cmd_run(args: argparse.Namespace) -> int:
    from kvbench.bench import registry

    if args.list:
        for key, b in registry().items():
            print(f"{key:12} {b.description}")
            for opt, what in b.options.items():
                print(f"{'':14}--set {opt}=...  {what}")
        return 0
    if args.plan_as_gpu and not args.dry_run:
        raise KvbenchError("--plan-as-gpu only plans: it needs --dry-run")
    settings = _run_settings(args)
    from kvbench import distributed

    if args.ranks is not None or distributed.launched() or args.fleet:
        from kvbench.launch import check_launch, run_ranks, spawn_local

        check_launch(args.ranks, settings["benches"], fleet=args.fleet, dry_run=args.dry_run)
        if distributed.launched() and args.fleet:  # every rank runs the local suite
            from kvbench.fleet import run_fleet

            return run_fleet(args.dist_timeout, lambda block, path, sink: _run_here(
                args, settings, block, output=path, sink=sink), Path(args.output) if args.output else None)
        if distributed.launched():  # one rank of torchrun's, or of --ranks
            return run_ranks(args.dist_timeout, lambda block: _run_here(args, settings, block))
        if args.ranks > 1:
            return spawn_local(args.raw_argv, args.ranks, args.dist_timeout)
    return _run_here(args, settings, None)


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's checked inputs (one-line KvbenchError for a bad one), before anything
    is allocated or launched."""
    from kvbench.bench import check_options, select
    from kvbench.spec import LAYOUTS, PageSpec, get_format, load_model

    benches = select(csv_values(args.bench, "--bench"))
    model = load_model(args.model)
    formats = csv_values(args.format, "--format") or list(DEFAULT_FORMATS)
    for f in formats:
        get_format(f)
    layouts = csv_values(args.layout, "--layout") or list(LAYOUTS)
    for lay in layouts:
        if lay not in LAYOUTS:
            raise KvbenchError(f"unknown layout {lay!r}; known: {', '.join(LAYOUTS)}")
    for f in formats:  # shapes must be valid for the model before anything runs
        for lay in layouts:
            PageSpec(model, get_format(f), args.tokens_per_page, lay).page_bytes
    options: dict[str, str] = {}
    for kv in args.set or []:
        if "=" not in kv:
            raise KvbenchError(f"--set expects key=value, got {kv!r}")
        k, v = kv.split("=", 1)
        options[k.strip()] = v.strip()
    if getattr(args, "model_path", None):  # the e2e benchmark's real weights
        if "e2e" not in {b.key for b in benches}:
            raise KvbenchError("--model-path: only the e2e benchmark loads a model's weights (add --bench e2e)")
        options["e2e.model_path"] = args.model_path
    check_options(options, benches)
    if args.cases is not None and any(not c.strip() for c in args.cases):
        raise KvbenchError("--cases is empty: give a regex (an empty one would select every case)")
    if args.output and not args.dry_run:  # never clobber a result, never fail at the end
        check_output(Path(args.output), "--output", force=args.force)
    return {"benches": benches, "model": model, "formats": formats, "layouts": layouts, "options": options}


def _run_here(args: argparse.Namespace, settings: dict[str, Any], group: dict[str, Any] | None,
              output: Path | None = None, sink: dict[str, Any] | None = None) -> int:
    """Run in this process (rank 0 of a launched run: ``group`` describes the group).
    One rank of a fleet run: the result goes to ``output``, the document to
    ``sink["doc"]``, nothing is printed but a progress bar where ``sink["progress"]``."""
    from kvbench.bench import RunContext
    from kvbench.timing import cuda_available

    benches, model, formats, layouts, options = (settings[k] for k in ("benches", "model", "formats",
                                                                       "layouts", "options"))
    cuda = cuda_available()
    if not cuda:
        # Triton kernels run in its interpreter on the CPU (correctness, not speed);
        # must be set before any kernel module is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    plan_cuda = cuda or args.plan_as_gpu  # --plan-as-gpu: plan as a GPU machine would
    quick = args.quick if args.quick is not None else not plan_cuda
    samples = args.samples or (5 if quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    if cuda:
        warmup = max(1, warmup)  # Triton compiles on first launch: never time that

    from kvbench.env import collect_environment
    from kvbench.runner import (check_pages_fit, default_output, make_nvme_workdir, print_plan,
                                remove_workdir, run, stderr_console)

    nvme_dir, owned = make_nvme_workdir(args.nvme_dir)
    console = stderr_console()
    try:
        check_pages_fit(model, formats, args.tokens_per_page, layouts, nvme_dir, cuda,
                        benches=None if args.dry_run else benches, quick=quick, options=options,
                        cases=args.cases)  # a dry run allocates nothing: no footprint check
        env = collect_environment(nvme_dir=nvme_dir)
        if group is not None:
            env["distributed"] = group  # every rank's identity, the link, the timeout
        output = output or (Path(args.output) if args.output else default_output(env))
        if not args.dry_run and not args.output and sink is None:  # the default's folder is created if missing
            check_output(output, "--output", force=args.force, must_exist=False)
        ctx = RunContext(
            cuda=plan_cuda, quick=quick, model=model, formats=formats,
            tokens_per_page=args.tokens_per_page, layouts=layouts, nvme_dir=nvme_dir,
            warmup=warmup, samples=samples, seed=args.seed, options=options, environment=env,
            formats_given=args.format is not None,
        )
        if args.dry_run:
            return print_plan(benches, ctx, args.cases)
        import signal

        def _terminate(signum: int, frame: Any) -> None:
            raise Terminated  # SIGTERM (e.g. `timeout`) ends the run like Ctrl-C

        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            from kvbench.launch import launch_argv

            show = sink is None or sink.get("progress")
            doc, path = run(benches, ctx, output, argv=launch_argv() or sys.argv[1:], console=console,
                            progress=bool(show) and not (args.no_progress or args.quiet), cases=args.cases)
        except KeyboardInterrupt as exc:
            # 128 + the signal's number, as shells and `timeout` report: 130 SIGINT, 143 SIGTERM
            term = isinstance(exc, Terminated)
            console.print(f"kvbench: interrupted{' (SIGTERM)' if term else ''}; "
                          + (f"finished cases written to {output}" if sink is None else
                             "this fleet rank's cases are discarded"), markup=False, highlight=False)
            return 143 if term else 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        if sink is not None:  # a fleet rank: rank 0 prints the fleet's result (kvbench.fleet)
            sink["doc"] = doc
        elif args.quiet:
            print(path)
        else:  # the summary and the result's path on stdout; progress and logs went to stderr
            from kvbench.report.page import make_console
            from kvbench.report.summary import print_summary

            out = make_console(wide=False)
            print_summary(doc, out)
            out.print(f"result: {path}", highlight=False, markup=False, soft_wrap=True)
        errors = sum(1 for c in doc["cases"] if c["status"] == "error")
        return 1 if errors else 0
    finally:
        remove_workdir(nvme_dir, owned)


# ------------------------------------------------------------------------------ parser
