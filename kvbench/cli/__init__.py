"""kvbench's command line: ``info``, ``run``, ``size``, ``claims`` (and ``report``, ``compare``).

Bad input exits 2 with one line (``kvbench: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from kvbench import __version__
from kvbench.distributed import DIST_TIMEOUT_S
from kvbench.errors import KvbenchError
from kvbench.cli.args import (DEFAULT_FORMATS, DEFAULT_MODEL, OneLineParser, _nonneg_int, _positive_float,
                              _positive_int, csv_values)
from kvbench.cli.info import cmd_info
from kvbench.cli.report import add_report_parsers, cmd_compare, cmd_report
from kvbench.cli.run import Terminated, cmd_run

__all__ = ["DEFAULT_FORMATS", "DEFAULT_MODEL", "OneLineParser", "Terminated", "build_parser", "cmd_compare",
           "cmd_info", "cmd_report", "cmd_run", "csv_values", "main"]


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
    from kvbench.claims.cli import add_parser as add_claims

    add_claims(sub)
    add_report_parsers(sub)
    return p



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
