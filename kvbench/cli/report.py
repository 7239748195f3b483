"""``kvbench report`` and ``kvbench compare`` (kvbench.report does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kvbench.results import check_folder, check_output
from kvbench.cli.args import csv_values


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
    return 0


def _check_report_outputs(args: argparse.Namespace) -> None:
    """--html and --plot-dir that cannot be written fail in one line before any work
    (they are derived files: overwritten without --force)."""
    if args.html:
        check_output(Path(args.html), "--html", must_exist=False)
    if args.plot_dir:
        check_folder(Path(args.plot_dir), f"--plot-dir {args.plot_dir}", must_exist=False)


def _outputs(p: argparse.ArgumentParser, plots: str) -> None:
    p.add_argument("--plot-dir", metavar="DIR", help=f"write PNG plots here (created if missing): {plots}")
    p.add_argument("--html", metavar="PATH",
                   help="write one self-contained HTML page (headline first, then plots and tables; "
                        "plots embedded as data URIs, nothing loaded from the network)")
    p.add_argument("-b", "--bench", action="append", metavar="KEY",
                   help="only this benchmark (key or unique prefix; repeat or comma-separate)")


def add_report_parsers(sub: Any) -> None:
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


