"""``kvbench claims``: check the research's claims (configs/claims.yaml) against kvbench's
arithmetic and, with ``--results``, its measurements. Pure Python (no torch).

kvbench/cli/__init__.py calls ``add_parser(subparsers)``; KvbenchError raised here becomes
``kvbench: error: <message>`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Check the research's claims (configs/claims.yaml: each one's quote, source, and what would
confirm or refute it) against kvbench's arithmetic (model shapes, formats, the sizing
model) and, with --results, against measurements in kvbench result files. Each line gives
kvbench's figure with its units, how it was obtained (arithmetic: the formula and inputs;
measured: the benchmark, cases and hardware; not measured here: the command that measures
it), and each claim a verdict: confirmed, refuted, partly, not settled (e.g. measured on a
CPU), or not measured.
"""

EPILOG = """\
examples:
  kvbench claims
  kvbench claims --results results/cpu-fallback-ci-vm.json results/cpu-ci-vm-file-reads.json
  kvbench claims --claim hot-window,ssd-per-gpu --scenario llama-3.1-70b-fp8-chat
  kvbench claims --results run.json --json claims.json
see docs/claims.md for every claim, check and verdict.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``claims`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "claims", help="check the research's claims against kvbench's arithmetic and measurements",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--results", nargs="+", metavar="R.json",
                   help="kvbench result files whose measurements the claims are checked against")
    p.add_argument("--claim", action="append", metavar="ID[,ID...]",
                   help="check only these claims (repeatable or comma-separated; --list shows the ids)")
    p.add_argument("--scenario", metavar="NAME|PATH",
                   help="the scenario for claims that size one (hot-window, ssd-per-gpu); default each "
                        "claim's own. fleet-totals always uses the source's scenario")
    p.add_argument("--claims-file", metavar="PATH", help="the claims YAML (default configs/claims.yaml)")
    p.add_argument("--list", action="store_true", help="list the claims (id, check, quote) and exit")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the verdicts as JSON to PATH (atomically), or to stdout with no PATH "
                        "(then no tables are printed)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``kvbench claims``; returns 0 (bad input raises KvbenchError)."""
    from pathlib import Path

    from kvbench.claims import present
    from kvbench.claims.catalog import load_claims, select
    from kvbench.claims.checks import evaluate_all
    from kvbench.claims.evidence import load_evidence
    from kvbench.results import check_output, write_atomic

    claims = select(load_claims(args.claims_file), args.claim)
    if args.list:
        for c in claims:
            print(f"{c.id:18} {c.check:14} {c.quote}")
        return 0
    if args.json and args.json != "-":  # fails in one line before any work
        check_output(Path(args.json), "--json", must_exist=False)
    if args.scenario:
        from kvbench.sizing.scenario import load_scenario

        load_scenario(args.scenario)  # a bad --scenario fails once, naming itself
    evidence = load_evidence(args.results, args.scenario)
    evals = evaluate_all(claims, evidence)
    doc = present.to_json(evals, evidence)
    if args.json == "-":
        json.dump(doc, sys.stdout, indent=1, allow_nan=False, default=str)
        sys.stdout.write("\n")
        return 0
    c = present.console()
    present.print_report(c, evals, evidence)
    if args.json:
        c.print(f"wrote {write_atomic(args.json, doc)}", markup=False)
    return 0
