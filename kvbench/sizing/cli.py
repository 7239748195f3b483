"""``kvbench size``: size hbm / dram / nvme / remote for a scenario, lint it, replace its
assumptions with measurements, sweep one input. Pure Python (no torch).

The lead's kvbench/cli.py calls ``add_parser(subparsers)`` and dispatches to ``run(args)``;
KvbenchError raised here becomes ``kvbench: error: <message>`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from kvbench.errors import KvbenchError

DESCRIPTION = """\
Size the memory tiers (hbm, dram, nvme: rack SSD, remote: central datalake) that a
KV-cache serving scenario needs, from a scenario file in configs/scenarios/ (or a YAML
path). Prints every line item and tier total in TiB (2^40 B) and in plain PB/EB (10^15 /
10^18 B), next to the published figures when the scenario lists them (where the scenario
reproduces the source's arithmetic, its totals as the source computed them and the
corrected totals beside them), then lints the scenario for assumptions that contradict
each other. With --results, assumptions are
replaced by measurements from kvbench result files, each shown beside the assumption it
replaces.
"""

EPILOG = """\
examples:
  kvbench size --scenario ms-chatgpt-2026 --explain
  kvbench size --scenario ms-chatgpt-2026 --sweep input_tokens=2000,5000,20000,50000,200000 --plot sweep.png
  kvbench size --scenario llama-3.1-70b-fp8-chat --results results/run.json --json sizing.json
  kvbench size --scenario ms-chatgpt-2026 --model DeepSeek-V4-Pro --format shipped
  kvbench size --scenario ms-chatgpt-2026 --format shipped \
      --compare-models DeepSeek-V3.2,DeepSeek-V4-Pro,DeepSeek-V4-Flash
see docs/sizing.md for every scenario field and formula.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``size`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "size", help="size HBM/DRAM/NVMe/remote for a scenario; lint it; use measured results",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", metavar="NAME|PATH",
                   help="scenario name in configs/scenarios/ (e.g. ms-chatgpt-2026) or a YAML file path")
    p.add_argument("--list", action="store_true", help="list the scenarios in configs/scenarios/ and exit")
    p.add_argument("--model", metavar="NAME",
                   help="re-size the scenario for this model shape (a configs/models name; its KV "
                        "bytes/token at the scenario's tokens/request, windows and state included); "
                        "demand, placement, fleet and weights stay the scenario's")
    p.add_argument("--format", metavar="F",
                   help="re-size the scenario for this KV format (a kvbench format, or 'shipped': "
                        "each component as the model ships it)")
    p.add_argument("--compare-models", metavar="A,B,...",
                   help="size the scenario once per model (in --format, else the scenario's) and "
                        "print the tier totals side by side")
    p.add_argument("--results", nargs="+", metavar="R.json",
                   help="kvbench result files: replace assumptions with what they measured "
                        "(KV bytes/token, HBM per GPU, decode capacity from e2e tok/s or decode "
                        "KV-read GB/s, reuse load vs recompute)")
    p.add_argument("--explain", action="store_true",
                   help="show every input, derived quantity and line item with its formula and "
                        "numbers, and the sweep rules in force (what follows each --sweep key)")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...",
                   help="size once per value and print tier totals per value; KEY is one of "
                        "input_tokens, rag_tokens, output_tokens, peak_qps, format, hot_window, gpus "
                        "(input_tokens scales RAG/output/peak-day tokens per the scenario's "
                        "demand.sweep_scaling; --explain shows the rules in force); also prints "
                        "each point's change from the first")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the sizing as JSON to PATH (atomically), or to stdout with no PATH "
                        "(then no tables are printed)")
    p.add_argument("--plot", metavar="PATH.png",
                   help="write a PNG of tier totals vs the swept value (a bar per tier without --sweep)")


def run(args: argparse.Namespace) -> int:
    """Run ``kvbench size``; returns the exit code (0; bad input raises KvbenchError)."""
    from kvbench.sizing import report
    from kvbench.sizing.lint import lint
    from kvbench.sizing.model import compute
    from kvbench.sizing.scenario import list_scenarios, load_scenario
    from kvbench.sizing.sweep import parse_sweep, run_sweep

    if getattr(args, "list", False):
        for name in list_scenarios():
            print(name)
        return 0
    if not args.scenario:
        raise KvbenchError("size: --scenario is required (a name in configs/scenarios/ or a YAML "
                           "path; --list shows the names)")
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise KvbenchError(f"--plot {args.plot}: the plot is a PNG; give a path ending in .png")
    sweep_spec = parse_sweep(args.sweep) if args.sweep else None
    # outputs that cannot be written fail in one line before any work; they are derived
    # files (like kvbench report --html), so an existing one is overwritten
    from pathlib import Path

    from kvbench.results import check_output

    if args.json and args.json != "-":
        check_output(Path(args.json), "--json", must_exist=False)
    if args.plot:
        check_output(Path(args.plot), "--plot", must_exist=False)

    scn = load_scenario(args.scenario)
    if getattr(args, "compare_models", None):
        return _compare(args, scn)
    scn = _retargeted(args, scn)
    assumed = compute(scn)
    measured = None
    if args.results:
        from kvbench.sizing.measured import measure

        measured = measure(scn, list(args.results))
    final = measured.sizing if measured else assumed
    findings = lint(assumed, final)

    sweep = None
    if sweep_spec is not None:
        key, values = sweep_spec
        base, scale = final.scenario, 1.0
        if measured and final.quantities["kv_bytes_per_token"].source == "measured" and key != "format":
            scale = final.q("kv_bytes_per_token") / base.model.kv_bytes_per_token_at(
                base.demand.tokens_per_request, base.fmt)
        sweep = run_sweep(base, key, values, kv_bytes_per_token_scale=scale)

    doc = report.to_json(assumed, findings, measured, sweep)
    if args.json == "-":
        json.dump(doc, sys.stdout, indent=1, allow_nan=False, default=str)
        sys.stdout.write("\n")
    else:
        c = report.console()
        c.print(report.breakdown_table(assumed, measured.sizing if measured else None))
        c.print(report.units_note(assumed), markup=False)
        if args.explain:
            for t in report.explain_tables(final):
                c.print(t)
        if measured:
            report.print_measured(c, measured)
        report.print_lint(c, findings, "Lint (with measured values)" if measured else "Lint")
        if sweep:
            c.print(report.sweep_table(sweep))
            change = report.sweep_change_table(sweep)
            if change is not None:
                c.print(change)
        if args.json:
            from kvbench.results import write_atomic

            c.print(f"wrote {write_atomic(args.json, doc)}")
    if args.plot:
        path = report.plot(args.plot, final, sweep)
        if args.json != "-":
            print(f"wrote {path}")
    return 0


def _retargeted(args: argparse.Namespace, scn):
    """The scenario for ``--model`` / ``--format`` (itself without them)."""
    if not (getattr(args, "model", None) or getattr(args, "format", None)):
        return scn
    from kvbench.sizing.retarget import retarget

    return retarget(scn, args.model, args.format)


def _compare(args: argparse.Namespace, scn) -> int:
    """``--compare-models``: tier totals per model, side by side (or JSON)."""
    from kvbench.sizing import report
    from kvbench.sizing.retarget import compare, compare_json, compare_table, parse_models

    if args.model or args.results or args.sweep or args.plot:
        raise KvbenchError("--compare-models compares tier totals only: drop --model, --results, "
                           "--sweep and --plot")
    sizings = compare(scn, parse_models(args.compare_models), args.format)
    doc = compare_json(sizings)
    if args.json == "-":
        json.dump(doc, sys.stdout, indent=1, allow_nan=False, default=str)
        sys.stdout.write("\n")
        return 0
    c = report.console()
    c.print(compare_table(sizings))
    c.print(report.UNITS_NOTE, markup=False)
    if args.json:
        from kvbench.results import write_atomic

        c.print(f"wrote {write_atomic(args.json, doc)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m kvbench.sizing.cli``) until the lead wires
    ``size`` into kvbench/cli.py; errors print one line and exit 2, as kvbench's CLI does."""
    parser = argparse.ArgumentParser(prog="kvbench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KvbenchError as exc:
        print(f"kvbench: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
