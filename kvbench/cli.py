"""kvbench's command line: ``info``, ``run``, ``size`` (and ``report``, ``compare``).

Bad input exits 2 with one line (``kvbench: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from kvbench import __version__
from kvbench.distributed import DIST_TIMEOUT_S
from kvbench.errors import KvbenchError
from kvbench.results import check_folder, check_output

DEFAULT_MODEL = "Llama-3.1-8B"
DEFAULT_FORMATS = ("fp16", "fp8_e4m3", "nvfp4")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"kvbench: error: {message} (see '{self.prog} --help')\n")


def csv_values(values: list[str] | None, flag: str = "") -> list[str]:
    """Repeatable, comma-separable option values, flattened: ['a,b', 'c'] -> [a, b, c].
    An option given but empty (``--bench ""``) is a one-line error naming ``flag``: it
    would otherwise silently mean the default selection."""
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    if values is not None and not out:
        raise KvbenchError(f"{flag or 'option'} is empty: give at least one value")
    return out


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


# ------------------------------------------------------------------------------ info
def cmd_info(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from kvbench.env import collect_environment
    from kvbench.report.machine import machine_lines
    from kvbench.runner import make_nvme_workdir, remove_workdir
    from kvbench.model_info import info_formats, model_json, parse_context, print_model
    from kvbench.spec import list_models, load_model
    from kvbench.tiers import TIER_NAMES, make_tier
    from kvbench.units import GB

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    if args.list_models:
        for name in list_models():
            m = load_model(name)
            console.print(f"{name:18} {m.attention_type:17} {m.kv_bytes_per_token('fp16'):>9,} B/token (fp16)")
        return 0
    model = load_model(args.model) if args.model else None
    if not model and (args.format or args.context):
        raise KvbenchError("info: --format and --context describe a model's KV cache: give --model")
    # bad input fails in one line before the machine is probed
    formats = info_formats(model, args.format) if model else []
    context = parse_context(args.context)
    nvme_dir, owned = make_nvme_workdir(args.nvme_dir)
    try:
        env = collect_environment(nvme_dir=nvme_dir)
        tiers = []
        for name in TIER_NAMES:
            tier = make_tier(name, nvme_dir)
            tiers.append(tier.describe())  # a file-backed tier adds whether O_DIRECT works
            tier.close()
    finally:
        remove_workdir(nvme_dir, owned)
    if args.json:
        out: dict[str, Any] = {"kvbench_version": __version__, "environment": env, "tiers": tiers}
        if model:
            out.update(model_json(model, formats, context))
        print(json.dumps(out, indent=1, default=str))
        return 0
    console.print(f"[bold]kvbench {__version__}[/bold]")
    for line in machine_lines(env):
        console.print(f"  {line}")
    t = Table(title="Tiers", title_justify="left")
    for col in ("tier", "available", "kind / reason", "free"):
        t.add_column(col, overflow="fold")
    for d in tiers:
        reason = d["reason"]
        if d.get("odirect"):
            ok, why = d["odirect"]
            reason += f"; O_DIRECT: {'yes' if ok else 'no'} ({why})"
        free = d.get("free_bytes")
        t.add_row(d["label"], "[green]yes" if d["available"] else "[red]no", reason,
                  f"{free / GB:,.1f} GB" if free else "")
    console.print(t)
    if model:
        print_model(console, model, formats, context)
    return 0


# ------------------------------------------------------------------------------ run
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
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="kvbench",
        description=(
            "Measure where a paged LLM KV cache can live (GPU HBM, pinned host DRAM, NVMe "
            "files), at what speed and precision, and what that means for a fleet. "
            "GB = 1e9 bytes, GiB = 2^30 bytes throughout."
        ),
        epilog="Start with 'kvbench info', then 'kvbench run'. Each command has --help.",
    )
    p.add_argument("--version", action="version", version=f"kvbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info", help="what this machine has: GPUs, host, tiers (and why one is unavailable)",
        description="Print this machine's identity and which tiers kvbench can use here, "
                    "with the reason for any that it cannot; with --model, the KV bytes "
                    "per token and per 1M tokens of every format, per component (latent, indexer "
                    "keys, window, compressed entries, state), and with --context the total at "
                    "that length.",
    )
    info.add_argument("--model", help="also print KV sizes of this model (a configs/models name), "
                                      "component by component")
    info.add_argument("--format", metavar="F[,F...]",
                      help="with --model: only these KV formats ('shipped': each component as the "
                           "model ships it; default: shipped where declared, then every format)")
    info.add_argument("--context", metavar="TOKENS",
                      help="with --model: also the exact KV bytes of one sequence of this many tokens")
    info.add_argument("--list-models", action="store_true", help="list the model configs and exit")
    info.add_argument("--nvme-dir", help="folder whose disk backs the nvme tier (default: the first disk-backed of "
                           "$KVBENCH_NVME_DIR, $TMPDIR, /var/tmp, /tmp, .)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.set_defaults(func=cmd_info)

    run = sub.add_parser(
        "run", help="run benchmarks and write a result JSON",
        description="Run benchmarks (all by default, at a size that suits this machine: "
                    "quick without a GPU, full with one), show progress, write one result "
                    "file atomically and print a summary table. Cases that cannot run here "
                    "are recorded as skipped, with the reason.",
    )
    run.add_argument("-b", "--bench", action="append", metavar="KEY",
                     help="benchmark key or unique prefix; repeat or comma-separate (see --list)")
    run.add_argument("--list", action="store_true", help="list benchmarks and exit")
    run.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"model whose KV shape sets the pages (default {DEFAULT_MODEL}; see 'kvbench info --list-models')")
    run.add_argument("--model-path", metavar="DIR",
                     help="e2e: a local save_pretrained folder (config.json + weights) loaded offline in "
                          "float16 instead of random weights (the same as --set e2e.model_path=DIR)")
    from kvbench.spec import FORMATS  # the format registry (no torch: start-up stays fast)

    run.add_argument("--format", action="append", metavar="FMT",
                     help=f"KV format(s), repeat or comma-separate: {', '.join(FORMATS)} "
                          f"(default {','.join(DEFAULT_FORMATS)})")
    run.add_argument("--tokens-per-page", type=_positive_int, default=16, metavar="N",
                     help="tokens per page (default 16, vLLM's default block size)")
    run.add_argument("--layout", action="append", metavar="L",
                     help="page layout(s): 'layer' (a page per layer) or 'block' (all layers of a token span); default both")
    run.add_argument("--nvme-dir", metavar="DIR",
                     help="folder on the disk to test for the nvme tier (default: a private folder under "
                          "the first disk-backed of $KVBENCH_NVME_DIR, $TMPDIR, /var/tmp, /tmp, ., "
                          "removed after)")
    run.add_argument("-o", "--output", metavar="PATH",
                     help="result file (default results/<hardware>-<host>-<utc>.json); its folder "
                          "must exist and be writable; an existing file is refused unless --force")
    run.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=None,
                      help="small sizes, few samples (default without a GPU)")
    mode.add_argument("--full", dest="quick", action="store_false",
                      help="full sizes and sweeps (default with a GPU)")
    run.add_argument("--samples", type=_positive_int, metavar="N", help="timed samples per case (default 5 quick, 10 full)")
    run.add_argument("--warmup", type=_nonneg_int, metavar="N", help="untimed warm-up repetitions (default 1 quick, 3 full)")
    run.add_argument("--seed", type=int, default=0, help="random seed for data and page orders (default 0)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="benchmark option, e.g. transfer.queue_depths=1,4,16 (repeatable; "
                          "'kvbench run --list' lists every benchmark's options)")
    run.add_argument("--cases", action="append", metavar="REGEX",
                     help="run only the cases whose name a Python regex finds (re.search), tried on "
                          "both BENCH/NAME and the bare NAME: 'transfer/ceiling/' and 'ceiling/' both "
                          "work ('^ceiling/' anchors at the bare name, '^transfer/' at the full one); "
                          "repeatable, a case runs if any matches (not comma-split: a regex may hold "
                          "commas). A regex matching no case of the selected benchmarks is an error. "
                          "--dry-run lists the names; select the ceilings too for %% of ceiling")
    run.add_argument("--dry-run", action="store_true",
                     help="plan (with --cases), print BENCH/NAME of each case one a line on stdout and "
                          "exit 0: nothing runs, nothing is written")
    # plans as if a CUDA device were present, so a CPU machine can check GPU case names
    # (scripts/gpu_check.sh does); only with --dry-run
    run.add_argument("--plan-as-gpu", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--ranks", type=_positive_int, metavar="N",
                     help="start N ranks on this machine (torch.distributed, gloo on 127.0.0.1): rank 0 "
                          "runs the benchmarks, the others hold the remote tier's pages (--bench remote); "
                          "across machines launch with torchrun instead (README: Beyond one machine)")
    run.add_argument("--fleet", action="store_true",
                     help="with --ranks N or under torchrun: every rank runs the selected local benchmarks "
                          "on its own GPU or host at once; rank 0 writes one fleet result (per-rank figures "
                          "and their spread; kvbench compare reads it)")
    run.add_argument("--dist-timeout", type=_positive_float, default=DIST_TIMEOUT_S, metavar="S",
                     help=f"seconds any wait on another rank may take before the run ends with a message "
                          f"(default {DIST_TIMEOUT_S:g})")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="print only the result file's path on stdout (no progress bar, no summary)")
    run.set_defaults(func=cmd_run)

    from kvbench.sizing.cli import add_parser as add_size

    add_size(sub)
    _add_report_parsers(sub)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from kvbench.report.run_report import report

    _check_report_outputs(args)
    report(args.result, plot_dir=args.plot_dir, html_path=args.html,
           benches=csv_values(args.bench, "--bench"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kvbench.report.compare import compare

    _check_report_outputs(args)
    compare(args.results, plot_dir=args.plot_dir, html_path=args.html,
            benches=csv_values(args.bench, "--bench"))


def _check_report_outputs(args: argparse.Namespace) -> None:
    """--html and --plot-dir that cannot be written fail in one line before any work
    (they are derived files: overwritten without --force)."""
    if args.html:
        check_output(Path(args.html), "--html", must_exist=False)
    if args.plot_dir:
        check_folder(Path(args.plot_dir), f"--plot-dir {args.plot_dir}", must_exist=False)
    return 0


def _outputs(p: argparse.ArgumentParser, plots: str) -> None:
    p.add_argument("--plot-dir", metavar="DIR", help=f"write PNG plots here (created if missing): {plots}")
    p.add_argument("--html", metavar="PATH",
                   help="write one self-contained HTML page (headline first, then plots and tables; "
                        "plots embedded as data URIs, nothing loaded from the network)")
    p.add_argument("-b", "--bench", action="append", metavar="KEY",
                   help="only this benchmark (key or unique prefix; repeat or comma-separate)")


def _add_report_parsers(sub: Any) -> None:
    """``report`` and ``compare`` (kvbench.report does the work)."""
    rep = sub.add_parser(
        "report", help="show one result file: headline, environment, tables per benchmark, plots, HTML",
        description="Print a result file's headline (counts, flags, and per benchmark its best or "
                    "most telling figures: GB/s per tier pair and %% of its limit, decode tokens/s "
                    "per placement and format with the speed-up over fp16, prefix break-even, "
                    "error per format), its environment (GPU, PCIe link, host, disk, software, "
                    "commit, mode) and, per benchmark, a table of its cases: ok cases first with "
                    "the median, p10-p90 and coefficient of variation of the headline figure, their "
                    "flags (unstable, above_ceiling) and paired ratios with their 95%% confidence "
                    "interval (e.g. 88%% [85-92]), then skipped and failed cases with their "
                    "reasons. Optionally writes PNG plots and one self-contained HTML page. "
                    "GB = 1e9 B, GiB = 2^30 B.")
    rep.add_argument("result", metavar="R.json", help="a result file written by 'kvbench run'")
    _outputs(rep, "the plots each benchmark declares (transfer GB/s per direction and method with "
                  "same-run ceilings, the page-size sweep, decode tokens/s and %% of roofline, accuracy "
                  "error vs bits per element, prefix load vs recompute)")
    rep.set_defaults(func=cmd_report)
    cmp_ = sub.add_parser(
        "compare", help="put result files side by side (e.g. H100 vs H200), with ratios and warnings",
        description="Compare result files: one column per file, labelled by letter and GPU name "
                    "(or 'cpu' and host; run ids are listed above the tables); rows are cases matched "
                    "by benchmark and case name with their headline figure and the 95%% confidence "
                    "interval of its median, and the ratio of each file to the first (B/A, C/A, ...), "
                    "marked '~ within noise' where the two intervals overlap and faster/slower where "
                    "they do not; cases a run flagged unstable or above_ceiling are marked. "
                    "Before the tables, one warning line for each thing that makes the runs not "
                    "comparable (kvbench version or schema, model, formats, tokens per page, quick "
                    "vs full, gpu vs cpu-fallback mode, cases in one file only). A hardware table "
                    "puts GPU, memory, PCIe link, host CPU and disk side by side. GB = 1e9 B, GiB = 2^30 B.")
    cmp_.add_argument("results", nargs="+", metavar="R.json",
                      help="two or more result files; the first is the reference (A) of every ratio")
    _outputs(cmp_, "grouped bars of the headline figure of the cases that are ok in every file, "
                   "one plot per benchmark")
    cmp_.set_defaults(func=cmd_compare)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # what --ranks starts again
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KvbenchError as exc:
        print(f"kvbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kvbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
