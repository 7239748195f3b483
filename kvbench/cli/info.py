"""``kvbench info``: what this machine has (GPUs, host, tiers) and a model's KV sizes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kvbench import __version__
from kvbench.errors import KvbenchError



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
