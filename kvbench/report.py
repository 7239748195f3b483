"""``kvbench report``: one result file as terminal tables, PNG plots and an HTML page.

Reads only what a result file (schema ``kvbench.result/1``, docs/results.md) holds; it
computes nothing but formatting, ratios and geometric means of figures already there.

Pieces shared with ``kvbench compare`` (kvbench/compare.py) live here too: the
headline metric of each benchmark, number formatting, a small table model rendered
both by rich (terminal) and as HTML, the self-contained HTML page, and
``write_bytes_atomic``. rich and matplotlib are imported inside the functions that
draw; torch is never imported, so the command starts fast.

Units: GB = 1e9 bytes, GiB = 2^30 bytes; bandwidth GB/s; times seconds.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from kvbench.errors import KvbenchError
from kvbench.results import load, write_bytes_atomic
from kvbench.units import GiB

def _headlines() -> dict[str, tuple[str, str]]:
    # the registry imports its benchmark modules without torch (their heavy imports
    # are inside functions), so reading a result stays light
    from kvbench.bench import registry

    return {k: (b.headline, b.headline_unit) for k, b in registry().items()}


#: Headline metric and unit per benchmark key, from the registry.
HEADLINES: dict[str, tuple[str, str]] = _headlines()

#: Further metrics worth a column, per benchmark (shown when a case has them).
EXTRA_COLUMNS: dict[str, tuple[str, ...]] = {
    "transfer": ("pct_of_ceiling", "ceiling_gbps", "pct_of_physical_limit", "physical_limit_gbps",
                 "matmul_slowdown_pct"),
    "decode": ("step_s", "kv_read_gbps", "pct_of_roofline", "roofline_tok_s", "speedup_vs_fp16",
               "dequant_share", "unfused_rel_err"),
    "accuracy": ("k_rel_err", "v_rel_err", "bits_per_element", "compression_vs_fp16",
                 "pct_of_copy"),
    "prefix": ("load_s", "recompute_s", "speedup_vs_recompute", "break_even_gbps", "gbps",
               "prefill_tok_s"),
    "roundtrip": ("pages_verified",),
}

STATUS_ORDER = {"ok": 0, "skipped": 1, "error": 2}
UNITS_LINE = "GB = 1e9 B, GiB = 2^30 B"


# ------------------------------------------------------------------------------ numbers
def is_num(v: Any) -> bool:
    """A finite int or float (bools and None are not figures)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_num(v: Any, unit: str = "") -> str:
    """A figure to about 4 significant digits; whole bytes with thousands separators."""
    if not is_num(v):
        return ""
    if unit in ("B", "bytes") or unit.startswith("B "):
        return f"{int(round(v)):,}"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.4g}"
    if a >= 1e-3:
        return f"{v:.3g}"
    return f"{v:.2e}"


def fmt_ratio(r: float | None) -> str:
    if r is None or not is_num(r):
        return ""
    return f"{r:,.0f}x" if abs(r) >= 100 else f"{r:.3g}x"


def short_unit(unit: str) -> str:
    """'GB/s (KV bytes / recompute_s: ...)' -> 'GB/s'."""
    return (unit or "").split(" (")[0].strip()


def higher_is_better(metric: str) -> bool | None:
    """Which way a metric improves, from its name (None when the name does not say)."""
    m = metric.lower()
    if m.endswith(("_err", "_error")) or m in ("seconds", "dequant_share") or m.endswith("_s") \
            and not m.endswith(("tok_s", "flop_s")):
        return False
    if m.endswith(("gbps", "tok_s", "flop_s")) or m.startswith(("speedup", "pct_of", "compression")) \
            or m.endswith("_verified"):
        return True
    return None


def geomean(xs: Iterable[float]) -> float | None:
    vals = [x for x in xs if is_num(x) and x > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(x) for x in vals) / len(vals))


# ------------------------------------------------------------------------------ cases
def headline_metric(case: dict[str, Any]) -> str:
    """The figure a case is judged by: its bench's headline when the case has it,
    else its first sampled metric, else its first numeric metric ('' if none)."""
    metrics = case.get("metrics") or {}
    head = HEADLINES.get(case.get("bench", ""), ("", ""))[0]
    if head and is_num(metrics.get(head)):
        return head
    for k in case.get("samples") or {}:
        if is_num(metrics.get(k)):
            return k
    for k, v in metrics.items():
        if is_num(v):
            return k
    return ""


def unit_of(case: dict[str, Any], metric: str) -> str:
    u = (case.get("units") or {}).get(metric)
    if u is None and metric == HEADLINES.get(case.get("bench", ""), ("", ""))[0]:
        u = HEADLINES[case["bench"]][1]
    return short_unit(u or "")


def paired_text(case: dict[str, Any], metric: str) -> str:
    """'88% [85-92]': a paired ratio's median and its confidence interval of the
    median (``case["paired"][metric]``, written by kvbench.measure.paired.record; in %
    or x); '' when the case has no paired figure of that name."""
    p = (case.get("paired") or {}).get(metric) or {}
    if not all(is_num(p.get(k)) for k in ("median", "ci_low", "ci_high")):
        return ""
    unit = unit_of(case, metric)
    sign = unit if unit in ("%", "x") else ""
    return f"{p['median']:.3g}{sign} [{p['ci_low']:.3g}-{p['ci_high']:.3g}]"


def flags_text(case: dict[str, Any]) -> str:
    """A case's flags ('unstable', 'above_ceiling', ...), comma-separated."""
    return ", ".join(str(f) for f in case.get("flags") or [])


def spread(case: dict[str, Any], metric: str) -> tuple[str, str, str]:
    """(p10-p90, cv, n) of a metric's samples; blanks when it was not sampled."""
    st = (case.get("stats") or {}).get(metric) or {}
    n = st.get("n") or 0
    if n < 2 or not all(is_num(st.get(k)) for k in ("p10", "p90", "cv")):
        return "", "", str(n) if n else ""
    unit = unit_of(case, metric)
    return f"{fmt_num(st['p10'], unit)}-{fmt_num(st['p90'], unit)}", f"{st['cv']:.1%}", str(n)


def case_group(case: dict[str, Any]) -> tuple[str, str]:
    """(kind, headline metric): cases of one bench that share a table."""
    return str((case.get("config") or {}).get("kind") or ""), headline_metric(case)


def benches_of(doc: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for b in list((doc.get("run") or {}).get("benches") or []) + [c["bench"] for c in doc["cases"]]:
        if b not in seen and any(c["bench"] == b for c in doc["cases"]):
            seen.append(b)
    return seen


def select_benches(available: list[str], wanted: list[str] | None, origin: str) -> list[str]:
    """Bench keys by exact key or unique prefix among those the file(s) hold."""
    from kvbench.bench import match_keys

    return match_keys(available, wanted, "bench", f" in {origin}") if wanted else available


def csv_list(values: list[str] | None) -> list[str]:
    from kvbench.cli import csv_values

    return csv_values(values)


# ------------------------------------------------------------------------------ identity
def _gib(n: Any) -> str:
    return f"{n / GiB:.1f} GiB" if is_num(n) else "?"


def gpu_name(doc: dict[str, Any]) -> str | None:
    gpus = (doc.get("environment") or {}).get("gpus") or []
    return gpus[0].get("name") if gpus and isinstance(gpus[0], dict) else None


def run_label(doc: dict[str, Any]) -> str:
    """'NVIDIA H100 80GB HBM3' or 'cpu (hostname)': what a compare column is named by."""
    name = gpu_name(doc)
    if name:
        return str(name)
    host = ((doc.get("environment") or {}).get("host") or {}).get("hostname") or "?"
    return f"cpu ({host})"


def pcie_text(g: dict[str, Any]) -> str:
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
        out += f", running Gen{cur[0]} x{cur[1]}"
    return out


def gpu_text(doc: dict[str, Any]) -> str:
    env = doc.get("environment") or {}
    gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
    if not gpus:
        nvml = env.get("nvml") or {}
        cuda = env.get("cuda") or {}
        why = cuda.get("reason") or nvml.get("reason") or "none recorded"
        return f"none ({why})"
    g = gpus[0]
    more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
    cc = f", sm {g['compute_capability']}" if g.get("compute_capability") else ""
    return f"{g.get('name') or '?'}{more}, {_gib(g.get('memory_total_bytes'))}{cc}"


def host_text(doc: dict[str, Any]) -> str:
    h = (doc.get("environment") or {}).get("host") or {}
    cores = h.get("cpu_cores_physical") or h.get("cores_physical")
    numa = h.get("numa_nodes") or []
    return (f"{h.get('cpu_model') or 'unknown CPU'}, {cores or '?'} cores "
            f"({h.get('cpu_cores_logical') or '?'} logical), {_gib(h.get('memory_total_bytes'))} RAM, "
            f"{len(numa) or '?'} NUMA node(s)")


def disk_text(doc: dict[str, Any]) -> str:
    nv = (doc.get("environment") or {}).get("nvme") or {}
    if not nv:
        return "not recorded"
    bd = nv.get("block_device") or {}
    traits = [bd.get("kind"), nv.get("fs_type"),
              {True: "rotational", False: "non-rotational"}.get(bd.get("rotational")),
              bd.get("scheduler")]
    traits_s = ", ".join(str(t) for t in traits if t)
    dev = f"/dev/{bd['disk']}" if bd.get("disk") else (nv.get("source") or "?")
    model = f" [{bd['model']}]" if bd.get("model") else ""
    return f"{dev}{model} ({traits_s or '?'})"


def software_text(doc: dict[str, Any]) -> str:
    env = doc.get("environment") or {}
    sw = env.get("software") or {}
    pk = sw.get("packages") or {}
    cuda = env.get("cuda") or {}
    nvml = env.get("nvml") or {}
    parts = [f"Python {sw.get('python') or '?'}", f"torch {pk.get('torch') or sw.get('torch') or '?'}",
             f"triton {pk.get('triton') or sw.get('triton') or '?'}"]
    if cuda.get("torch_cuda_version"):
        parts.append(f"CUDA {cuda['torch_cuda_version']}")
    if nvml.get("driver_version"):
        parts.append(f"driver {nvml['driver_version']}")
    return ", ".join(parts)


def commit_text(doc: dict[str, Any]) -> str:
    git = (doc.get("environment") or {}).get("git") or {}
    if not git.get("commit"):
        return "unknown"
    return f"{git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}"


def environment_lines(doc: dict[str, Any]) -> list[str]:
    """The run and its machine in a few lines."""
    run = doc["run"]
    env = doc["environment"]
    opts = run.get("options") or {}
    model = run.get("model") or {}
    method = doc.get("method") or {}
    size = "quick" if run.get("quick") else "full" if run.get("quick") is False else "?"
    lines = [
        f"Run {run['id']}: {run['status']}, mode {run['mode']}, {size}, kvbench {run['kvbench_version']}, "
        f"{run.get('started_utc')} -> {run.get('finished_utc') or '?'}",
    ]
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
    lines.append(f"GPU: {gpu_text(doc)}")
    gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
    if gpus:
        lines.append(f"PCIe link: {pcie_text(gpus[0])}")
    lines.append(f"Host: {host_text(doc)}")
    lines.append(f"Disk (nvme tier): {disk_text(doc)}")
    lines.append(f"Software: {software_text(doc)}; commit {commit_text(doc)}")
    if method:
        lines.append(f"Method: timer {method.get('timer')}, warm-up {method.get('warmup', '?')}, "
                     f"{method.get('samples', '?')} samples, {method.get('statistic', 'median')}; {UNITS_LINE}")
    if run.get("command"):
        lines.append("Command: " + " ".join(str(a) for a in run["command"]))
    return lines


# ------------------------------------------------------------------------------ tables
@dataclass
class Table:
    """A table both the terminal (rich) and the HTML page render. Cells are text."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    styles: list[str] = field(default_factory=list)  # per row: "", "skipped", "error", "flagged"
    notes: list[str] = field(default_factory=list)

    def add(self, row: Sequence[str], style: str = "") -> None:
        self.rows.append([str(c) for c in row])
        self.styles.append(style)


@dataclass
class Page:
    """What a report or compare shows: headed blocks of lines, warnings and tables,
    then plots (name, caption, PNG bytes)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    plots: list[tuple[str, str, bytes]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def lines(self, lines: list[str]) -> None:
        self.blocks.append(("lines", list(lines)))

    def warnings(self, lines: list[str]) -> None:
        if lines:
            self.blocks.append(("warnings", list(lines)))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))


def _notes_common(cases: list[dict[str, Any]]) -> list[str]:
    """Notes every case of a group carries (method labels), tracebacks left out."""
    if not cases:
        return []
    common = [n for n in cases[0].get("notes") or [] if "\n" not in n]
    for c in cases[1:]:
        have = set(c.get("notes") or [])
        common = [n for n in common if n in have]
    return common


def bench_tables(doc: dict[str, Any], bench: str) -> list[Table]:
    """Tables of one bench: one per (kind, headline metric) group of ok cases, then
    one of skipped and failed cases with their reasons."""
    cases = [c for c in doc["cases"] if c["bench"] == bench]
    ok = [c for c in cases if c["status"] == "ok"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in ok:
        groups.setdefault(case_group(c), []).append(c)
    tables = []
    for (kind, metric), cs in groups.items():
        unit = unit_of(cs[0], metric) if metric else ""
        extras = [m for m in EXTRA_COLUMNS.get(bench, ()) if m != metric
                  and any(is_num(c["metrics"].get(m)) for c in cs)]
        if bench not in EXTRA_COLUMNS:  # an unknown bench: its other numeric metrics
            extras = []
            for c in cs:
                extras += [m for m, v in c["metrics"].items() if is_num(v) and m != metric and m not in extras]
            extras = extras[:6]
        extras += [m for m in dict.fromkeys(m for c in cs for m in c.get("paired") or {})
                   if m != metric and m not in extras]  # paired ratios always get a column
        flagged = any(c.get("flags") for c in cs)
        head = f"{metric} ({unit})" if unit else metric or "metric"
        cols = ["case", *(["flags"] if flagged else []), head, "p10-p90", "cv", "n"]
        for m in extras:
            u = unit_of(cs[0], m) or next((unit_of(c, m) for c in cs if unit_of(c, m)), "")
            cols.append(f"{m} ({u})" if u else m)
        sampled = any(((c.get("stats") or {}).get(metric) or {}).get("n", 0) > 1 for c in cs)
        title = (f"{bench}" + (f" / {kind}" if kind else "") + f": {len(cs)} ok case(s)"
                 + (", median of samples" if sampled else "") + f"; {UNITS_LINE}")
        t = Table(title, cols, numeric=set(range(2 if flagged else 1, len(cols))))
        for c in cs:
            p, cv, n = spread(c, metric)
            row = [c["name"], *([flags_text(c)] if flagged else []),
                   paired_text(c, metric) or fmt_num(c["metrics"].get(metric), unit), p, cv, n]
            row += [paired_text(c, m) or fmt_num(c["metrics"].get(m), unit_of(c, m)) for m in extras]
            t.add(row, "flagged" if c.get("flags") else "")
        t.notes = _notes_common(cs)
        levels = sorted({p.get("ci_level") for c in cs for p in (c.get("paired") or {}).values()
                         if is_num(p.get("ci_level"))})
        if levels:
            t.notes.append(f"paired ratios: median [{'/'.join(f'{x:.0%}' for x in levels)} confidence "
                           "interval of the median] of per-pair ratios of alternately measured figures")
        tables.append(t)
    bad = sorted((c for c in cases if c["status"] != "ok"), key=lambda c: STATUS_ORDER[c["status"]])
    if bad:
        t = Table(f"{bench}: {len(bad)} case(s) skipped or failed", ["case", "status", "reason"])
        for c in bad:
            t.add([c["name"], c["status"] + (f" ({flags_text(c)})" if c.get("flags") else ""),
                   c.get("reason") or ""], c["status"])
        tables.append(t)
    return tables


def render_console(page: Page, console: Any) -> None:
    """Print a page's blocks with rich (text is never parsed as markup)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    console.print(Text(page.title, style="bold"))
    for kind, body in page.blocks:
        if kind == "heading":
            console.print()
            console.print(Text(body, style="bold"))
        elif kind == "lines":
            for line in body:
                console.print(Text(f"  {line}"))
        elif kind == "warnings":
            for line in body:
                console.print(Text(f"warning: {line}", style="yellow"))
        elif kind == "table":
            rt = RichTable(title=Text(body.title), title_justify="left")
            for i, col in enumerate(body.columns):
                rt.add_column(Text(col), justify="right" if i in body.numeric else "left",
                              overflow="fold", no_wrap=i in body.numeric)
            colour = {"skipped": "yellow", "error": "red", "flagged": "magenta"}
            for row, style in zip(body.rows, body.styles):
                rt.add_row(*[Text(c) for c in row], style=colour.get(style))
            console.print(rt)
            for n in body.notes:
                console.print(Text(f"  note: {n}", style="dim"))


def make_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


# ------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:.2em .5em;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.skipped td{color:#8a6d00}tr.error td{color:#b00020}tr.flagged td{color:#7b1fa2}
.lines{font-family:ui-monospace,monospace;font-size:.85em;white-space:pre-wrap}
.warn{color:#8a4b00;background:#fff6e0;padding:.2em .5em;margin:.2em 0}
.note{color:#666;font-size:.8em}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.85em;color:#444}
"""


def _html_table(t: Table) -> str:
    e = html.escape
    out = [f"<table><caption>{e(t.title)}</caption><thead><tr>"]
    out += [f"<th>{e(c)}</th>" for c in t.columns]
    out.append("</tr></thead><tbody>")
    for row, style in zip(t.rows, t.styles):
        out.append(f'<tr class="{e(style)}">' if style else "<tr>")
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in t.numeric else ""
            out.append(f"<td{cls}>{e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f'<div class="note">note: {e(n)}</div>' for n in t.notes]
    return "".join(out)


def render_html(page: Page) -> str:
    """One self-contained page: inline CSS, tables, PNGs as base64 data URIs; no
    external src or href."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(page.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(page.title)}</h1>"]
    for kind, body in page.blocks:
        if kind == "heading":
            out.append(f"<h2>{e(body)}</h2>")
        elif kind == "lines":
            out.append('<div class="lines">' + "\n".join(e(x) for x in body) + "</div>")
        elif kind == "warnings":
            out += [f'<div class="warn">warning: {e(x)}</div>' for x in body]
        elif kind == "table":
            out.append(_html_table(body))
    if page.plots:
        out.append("<h2>Plots</h2>")
        for name, caption, png in page.plots:
            data = base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(caption)} ({e(name)})</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------ writing
def check_outputs(plot_dir: str | None, html_path: str | None) -> None:
    """Refuse unusable output paths before anything is drawn or written."""
    if plot_dir is not None:
        p = Path(plot_dir)
        if p.exists() and not p.is_dir():
            raise KvbenchError(f"--plot-dir {p}: exists and is not a directory")
        parent = next((a for a in [p, *p.parents] if a.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK):
            raise KvbenchError(f"--plot-dir {p}: {parent} is not writable")
    if html_path is not None:
        h = Path(html_path)
        if h.is_dir():
            raise KvbenchError(f"--html {h}: is a directory")
        parent = next((a for a in h.parents if a.exists()), None)
        if parent is not None and not parent.is_dir():
            raise KvbenchError(f"--html {h}: {parent} is not a directory")
        if parent is not None and not os.access(parent, os.W_OK):
            raise KvbenchError(f"--html {h}: {parent} is not writable")


def write_outputs(page: Page, plot_dir: str | None, html_path: str | None, console: Any) -> list[Path]:
    """Write the plots (PNG) into plot_dir and/or the HTML page, each atomically."""
    written = []
    if plot_dir is not None:
        if not page.plots:
            console.print("no plots: no ok cases that these plots draw")
        for name, _caption, png in page.plots:
            written.append(write_bytes_atomic(Path(plot_dir) / name, png))
    if html_path is not None:
        written.append(write_bytes_atomic(html_path, render_html(page).encode("utf-8")))
    for p in written:
        console.print(f"wrote {p}")
    return written


# ------------------------------------------------------------------------------ plots
def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, min(max(height, 2.5), 60)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _ok(doc: dict[str, Any], bench: str, **config: Any) -> list[dict[str, Any]]:
    return [c for c in doc["cases"] if c["bench"] == bench and c["status"] == "ok"
            and all((c.get("config") or {}).get(k) == v for k, v in config.items())]


def _err(case: dict[str, Any], metric: str) -> tuple[float, float]:
    """(below, above) the median to p10 and p90, for error bars; (0, 0) when unsampled."""
    st = (case.get("stats") or {}).get(metric) or {}
    med = case["metrics"].get(metric)
    if st.get("n", 0) < 2 or not all(is_num(x) for x in (st.get("p10"), st.get("p90"), med)):
        return 0.0, 0.0
    return max(med - st["p10"], 0.0), max(st["p90"] - med, 0.0)


def _colours(keys: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def plot_transfer_bars(doc: dict[str, Any]) -> bytes | None:
    """Paged-copy GB/s, a panel per direction, a bar per case coloured by method;
    the same-run ceiling as a vertical line (ceiling case) or a tick per bar."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cases = [c for c in _ok(doc, "transfer", kind="paged") if is_num(c["metrics"].get("gbps"))]
    if not cases:
        return None
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_dir.setdefault(str(c["config"].get("direction", "?")), []).append(c)
    ceilings = {str(c["config"].get("direction")): c["metrics"]["gbps"]
                for c in _ok(doc, "transfer", kind="ceiling") if is_num(c["metrics"].get("gbps"))}
    methods = list(dict.fromkeys(str(c["config"].get("method", "?")) for c in cases))
    colour = _colours(methods)
    sizes = [len(v) for v in by_dir.values()]
    fig = new_figure(10, 0.22 * sum(sizes) + 1.3 * len(sizes) + 0.8)
    axes = fig.subplots(len(by_dir), 1, squeeze=False, height_ratios=[s + 3 for s in sizes])[:, 0]
    handles = [Patch(color=colour[m], label=m) for m in methods]
    extra: dict[str, Any] = {}
    for ax, (d, cs) in zip(axes, by_dir.items()):
        y = list(range(len(cs)))
        vals = [c["metrics"]["gbps"] for c in cs]
        errs = list(zip(*[_err(c, "gbps") for c in cs]))
        ax.barh(y, vals, xerr=errs, color=[colour[str(c["config"].get("method", "?"))] for c in cs],
                error_kw={"elinewidth": 0.8, "capsize": 2})
        ticks = [(i, c["metrics"]["ceiling_gbps"]) for i, c in enumerate(cs)
                 if is_num(c["metrics"].get("ceiling_gbps"))]
        if d in ceilings:
            ax.axvline(ceilings[d], color="black", lw=1.2)
            extra["ceiling"] = Line2D([], [], color="black", lw=1.2, label="ceiling (same run)")
        elif ticks:
            ax.scatter([v for _, v in ticks], [i for i, _ in ticks], marker="|", s=120, color="black", zorder=3)
            extra["ceiling"] = Line2D([], [], color="black", marker="|", ls="", markersize=10,
                                      label="ceiling of the case (same run)")
        limits = {c["metrics"].get("physical_limit_gbps") for c in cs} - {None}
        for lim in sorted(x for x in limits if is_num(x)):
            ax.axvline(lim, color="tab:red", ls="--", lw=1)
            extra["limit"] = Line2D([], [], color="tab:red", ls="--", label="physical link limit")
        prefix = f"{d}/"
        ax.set_yticks(y, [c["name"][len(prefix):] if c["name"].startswith(prefix) else c["name"] for c in cs],
                      fontsize=7)
        ax.invert_yaxis()
        ax.set_title(d, fontsize=10, loc="left")
        ax.set_xlabel("GB/s (GB = 1e9 B), median with p10-p90", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(handles=handles + list(extra.values()), fontsize=7, loc="best")
    fig.suptitle(f"transfer: paged KV bandwidth per direction and method - {run_label(doc)}, "
                 f"run {doc['run']['id']}", fontsize=10)
    return png_bytes(fig)


def _series_label(cfg: dict[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for k in keys:
        v = cfg.get(k)
        if v is None or v == "":
            continue
        parts.append(f"qd{v}" if k == "queue_depth" else f"t{v}" if k == "threads" else str(v))
    return "/".join(parts)


def plot_transfer_sweep(doc: dict[str, Any]) -> bytes | None:
    """GB/s against tokens per page (log x), a line per direction/method/layout/format."""
    cases = [c for c in _ok(doc, "transfer", kind="sweep")
             if is_num(c["metrics"].get("gbps")) and is_num(c["config"].get("tokens_per_page"))]
    if not cases:
        return None
    series: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        key = _series_label(c["config"], ("direction", "layout", "format", "method", "queue_depth",
                                           "threads", "cache_state"))
        series.setdefault(key, []).append(c)
    fig = new_figure(8, 5)
    ax = fig.subplots()
    xs_all = set()
    for label, cs in series.items():
        cs = sorted(cs, key=lambda c: c["config"]["tokens_per_page"])
        xs = [c["config"]["tokens_per_page"] for c in cs]
        xs_all.update(xs)
        errs = list(zip(*[_err(c, "gbps") for c in cs]))
        ax.errorbar(xs, [c["metrics"]["gbps"] for c in cs], yerr=errs, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
    ax.set_xlabel("tokens per page (log scale)")
    ax.set_ylabel("GB/s (GB = 1e9 B), median with p10-p90")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"transfer: page-size sweep - {run_label(doc)}, run {doc['run']['id']}", fontsize=10)
    return png_bytes(fig)


def _grouped_bars(ax: Any, groups: list[str], series: list[str], value: dict[tuple[str, str], float],
                  colour: dict[str, Any], err: dict[tuple[str, str], tuple[float, float]] | None = None
                  ) -> None:
    width = 0.8 / max(len(series), 1)
    for j, s in enumerate(series):
        keys = [(g, s) for g in groups if (g, s) in value]
        xs = [i + (j - (len(series) - 1) / 2) * width for i, g in enumerate(groups) if (g, s) in value]
        ys = [value[k] for k in keys]
        yerr = list(zip(*[err.get(k, (0.0, 0.0)) for k in keys])) if err and keys else None
        ax.bar(xs, ys, width=width, color=colour[s], label=s, yerr=yerr,
               error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_decode(doc: dict[str, Any]) -> bytes | None:
    """Decode tokens/s per placement (groups) and format (bars); % of roofline below
    when the run measured rooflines (GPU runs)."""
    cases = [c for c in _ok(doc, "decode", kind="decode") if is_num(c["metrics"].get("tok_s"))]
    if not cases:
        return None
    shapes = {(c["config"].get("batch"), c["config"].get("context")) for c in cases}

    def series_of(c: dict[str, Any]) -> str:
        cfg = c["config"]
        s = str(cfg.get("format", "?"))
        if cfg.get("fused") is False:
            s += " unfused"
        if len(shapes) > 1:
            s += f" {cfg.get('batch')}x{cfg.get('context')}"
        return s

    groups = list(dict.fromkeys(str(c["config"].get("placement", "?")) for c in cases))
    series = list(dict.fromkeys(series_of(c) for c in cases))
    colour = _colours(series)
    tok = {(str(c["config"].get("placement", "?")), series_of(c)): c["metrics"]["tok_s"] for c in cases}
    roof = {(str(c["config"].get("placement", "?")), series_of(c)): c["metrics"]["pct_of_roofline"]
            for c in cases if is_num(c["metrics"].get("pct_of_roofline"))}
    fig = new_figure(max(7, 1.2 * len(groups) * max(1, len(series) / 3)), 8 if roof else 4.5)
    axes = fig.subplots(2 if roof else 1, 1, squeeze=False)[:, 0]
    tok_err = {(str(c["config"].get("placement", "?")), series_of(c)): _err(c, "tok_s") for c in cases}
    _grouped_bars(axes[0], groups, series, tok, colour, tok_err)
    vals = [v for v in tok.values() if v > 0]
    if vals and max(vals) / min(vals) > 50:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("tokens/s (batch / step time), median with p10-p90")
    shape_s = "" if len(shapes) != 1 else " (batch x context %sx%s)" % next(iter(shapes))
    axes[0].set_title(f"decode: tokens/s per placement and format{shape_s}", fontsize=10, loc="left")
    axes[0].legend(fontsize=7)
    if roof:
        _grouped_bars(axes[1], groups, series, roof, colour)
        axes[1].axhline(100, color="black", lw=1)
        axes[1].set_ylabel("% of roofline (same-run tier bandwidth)")
        axes[1].set_title("decode: achieved KV-read bandwidth as % of roofline", fontsize=10, loc="left")
    fig.suptitle(f"{run_label(doc)}, run {doc['run']['id']} ({doc['run']['mode']})", fontsize=10)
    return png_bytes(fig)


def plot_accuracy(doc: dict[str, Any]) -> bytes | None:
    """Relative error of K, V and attention against bits per element (log y), a panel
    per data source, each point labelled with its format."""
    cases = [c for c in _ok(doc, "accuracy") if is_num(c["metrics"].get("bits_per_element"))]
    if not cases:
        return None
    by_src: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_src.setdefault(str(c["config"].get("source", "")), []).append(c)
    fig = new_figure(6 * len(by_src), 4.8)
    axes = fig.subplots(1, len(by_src), squeeze=False)[0]
    markers = {"k_rel_err": ("o", "K"), "v_rel_err": ("s", "V"), "attn_rel_err": ("^", "attention")}
    for ax, (src, cs) in zip(axes, by_src.items()):
        zero = sorted({str(c["config"].get("format")) for c in cs if c["metrics"].get("attn_rel_err") == 0})
        for m, (mk, label) in markers.items():
            pts = [(c["metrics"]["bits_per_element"], c["metrics"][m], str(c["config"].get("format", c["name"])))
                   for c in cs if is_num(c["metrics"].get(m)) and c["metrics"][m] > 0]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=label)
            if m == "attn_rel_err" or not any(is_num(c["metrics"].get("attn_rel_err")) for c in cs):
                for x, yv, name in pts:
                    ax.annotate(name, (x, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("bits per element (values + scales)")
        ax.set_ylabel("relative error ||x - ref||_F / ||ref||_F")
        title = f"accuracy: {src or 'all'}"
        if zero:
            title += f" (zero error, not drawn: {', '.join(zero)})"
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"error vs bits per element - run {doc['run']['id']}", fontsize=10)
    return png_bytes(fig)


def plot_prefix(doc: dict[str, Any]) -> bytes | None:
    """Prefix load vs recompute seconds against prefix tokens (log-log), and the
    load's speed-up over recompute."""
    def tokens(c: dict[str, Any]) -> Any:  # prefix length; older files said "tokens"
        return c["config"].get("prefix_tokens", c["config"].get("tokens"))

    cases = [c for c in _ok(doc, "prefix") if is_num(tokens(c)) and is_num(c["metrics"].get("seconds"))]
    if not cases:
        return None
    by_src: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        by_src.setdefault(str(c["config"].get("source", "?")), []).append(c)
    speed = any(is_num(c["metrics"].get("speedup_vs_recompute")) for c in cases)
    fig = new_figure(11 if speed else 7, 4.5)
    axes = fig.subplots(1, 2 if speed else 1, squeeze=False)[0]
    for src, cs in by_src.items():
        cs = sorted(cs, key=tokens)
        axes[0].plot([tokens(c) for c in cs], [c["metrics"]["seconds"] for c in cs],
                     marker="o", label=src)
        sp = [c for c in cs if is_num(c["metrics"].get("speedup_vs_recompute"))]
        if speed and sp:
            axes[1].plot([tokens(c) for c in sp], [c["metrics"]["speedup_vs_recompute"] for c in sp],
                         marker="o", label=src)
    xt = sorted({tokens(c) for c in cases})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xt, [f"{x:,}" for x in xt])
        ax.minorticks_off()
    axes[0].set_yscale("log")
    axes[0].set_xlabel("prefix tokens")
    axes[0].set_ylabel("seconds (median)")
    axes[0].set_title("prefix: load vs recompute time", fontsize=10, loc="left")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3, which="both")
    if speed:
        axes[1].axhline(1, color="black", lw=1)
        sp_all = [c["metrics"]["speedup_vs_recompute"] for c in cases
                  if is_num(c["metrics"].get("speedup_vs_recompute")) and c["metrics"]["speedup_vs_recompute"] > 0]
        if sp_all and max(sp_all + [1]) / min(sp_all + [1]) > 20:
            axes[1].set_yscale("log")
        axes[1].set_xlabel("prefix tokens")
        axes[1].set_ylabel("speed-up of load over recompute (x)")
        axes[1].set_title("prefix: recompute_s / load_s", fontsize=10, loc="left")
        axes[1].legend(fontsize=7)
        axes[1].grid(alpha=0.3, which="both")
    fig.suptitle(f"{run_label(doc)}, run {doc['run']['id']} ({doc['run']['mode']})", fontsize=10)
    return png_bytes(fig)


#: bench -> [(file name, caption, plot function)]
REPORT_PLOTS = {
    "transfer": [("transfer_bandwidth.png", "transfer: GB/s per direction and method, with same-run ceilings",
                  plot_transfer_bars),
                 ("transfer_page_sweep.png", "transfer: GB/s vs tokens per page", plot_transfer_sweep)],
    "decode": [("decode_tok_s.png", "decode: tokens/s per placement and format, % of roofline", plot_decode)],
    "accuracy": [("accuracy_error_vs_bits.png", "accuracy: relative error vs bits per element", plot_accuracy)],
    "prefix": [("prefix_load_vs_recompute.png", "prefix: load vs recompute", plot_prefix)],
}


# ------------------------------------------------------------------------------ report
def build_report(doc: dict[str, Any], path: str, benches: list[str] | None = None,
                 plots: bool = False) -> Page:
    """The report of one result document as a Page (tables; plots when asked)."""
    chosen = select_benches(benches_of(doc), benches, path)
    run = doc["run"]
    page = Page(f"kvbench report: {path} ({run_label(doc)}, run {run['id']})")
    page.heading("Environment")
    page.lines(environment_lines(doc))
    if run.get("status") != "complete":
        page.warnings([f"run status is {run.get('status')!r}: only the cases that finished are in the file"])
    if not doc["cases"]:
        page.lines(["no cases in this result"])
    for b in chosen:
        cs = [c for c in doc["cases"] if c["bench"] == b]
        counts = {s: sum(1 for c in cs if c["status"] == s) for s in STATUS_ORDER}
        page.heading(f"{b}: {counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} errors")
        for t in bench_tables(doc, b):
            page.table(t)
        if plots:
            for name, caption, fn in REPORT_PLOTS.get(b, []):
                png = fn(doc)
                if png is not None:
                    page.plots.append((name, caption, png))
    return page


def report(path: str, *, plot_dir: str | None = None, html_path: str | None = None,
           benches: list[str] | None = None, console: Any = None) -> Page:
    """Load a result file, print its report, write plots / HTML if asked."""
    check_outputs(plot_dir, html_path)
    doc = load(path)
    page = build_report(doc, str(path), benches, plots=plot_dir is not None or html_path is not None)
    console = console or make_console()
    render_console(page, console)
    write_outputs(page, plot_dir, html_path, console)
    return page


def cmd_report(args: argparse.Namespace) -> int:
    report(args.result, plot_dir=args.plot_dir, html_path=args.html, benches=csv_list(args.bench))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kvbench.compare import compare

    compare(args.results, plot_dir=args.plot_dir, html_path=args.html, benches=csv_list(args.bench))
    return 0


# ------------------------------------------------------------------------------ CLI
def add_parsers(subparsers: Any) -> None:
    """Register ``report`` and ``compare`` on an argparse subparsers object."""
    rep = subparsers.add_parser(
        "report", help="show one result file: environment, tables per benchmark, plots, HTML",
        description="Print a result file's environment (GPU, PCIe link, host, disk, software, "
                    "commit, mode) and, per benchmark, a table of its cases: ok cases first "
                    "with the median, p10-p90 and coefficient of variation of the headline "
                    "figure, their flags (unstable, above_ceiling) and paired ratios with their "
                    "95% confidence interval (e.g. 88% [85-92]), then skipped and failed cases "
                    "with their reasons. Optionally "
                    f"writes PNG plots and one self-contained HTML page. {UNITS_LINE}.",
    )
    rep.add_argument("result", metavar="R.json", help="a result file written by 'kvbench run'")
    rep.add_argument("--plot-dir", metavar="DIR",
                     help="write PNG plots here (created if missing): transfer GB/s per direction "
                          "and method with the same-run ceiling, the page-size sweep, decode tokens/s "
                          "and %% of roofline, accuracy error vs bits per element, prefix load vs recompute")
    rep.add_argument("--html", metavar="PATH",
                     help="write one self-contained HTML page (tables, plots embedded as data URIs)")
    rep.add_argument("-b", "--bench", action="append", metavar="KEY",
                     help="only this benchmark (key or unique prefix; repeat or comma-separate)")
    rep.set_defaults(func=cmd_report)

    cmp_ = subparsers.add_parser(
        "compare", help="put result files side by side (e.g. H100 vs H200), with ratios and warnings",
        description="Compare result files: one column per file, labelled by letter and GPU name "
                    "(or 'cpu' and host; run ids are listed above the tables); rows are cases matched "
                    "by benchmark and case name with their headline figure and the 95% confidence "
                    "interval of its median, and the ratio of each file to the first (B/A, C/A, ...), "
                    "marked '~ within noise' where the two intervals overlap and faster/slower where "
                    "they do not; cases a run flagged unstable or above_ceiling are marked. "
                    "Before the tables, one warning line for each thing that makes the runs not "
                    "comparable (kvbench version or schema, model, formats, tokens per page, quick "
                    "vs full, gpu vs cpu-fallback mode, cases in one file only). A hardware table "
                    f"puts GPU, memory, PCIe link, host CPU and disk side by side. {UNITS_LINE}.",
    )
    cmp_.add_argument("results", nargs="+", metavar="R.json",
                      help="two or more result files; the first is the reference (A) of every ratio")
    cmp_.add_argument("--plot-dir", metavar="DIR",
                      help="write PNGs here (created if missing): grouped bars of the headline figure "
                           "of the cases that are ok in every file, one plot per benchmark")
    cmp_.add_argument("--html", metavar="PATH",
                      help="write one self-contained HTML page (tables, plots embedded as data URIs)")
    cmp_.add_argument("-b", "--bench", action="append", metavar="KEY",
                      help="only this benchmark (key or unique prefix; repeat or comma-separate)")
    cmp_.set_defaults(func=cmd_compare)
