"""A page of text blocks and tables that both the terminal (rich) and a
self-contained HTML file render, and writing them (atomically) with the plots.

A Page opens with its headline blocks (HTML: ``<section id="headline">``), then its
plots (``<figure class="plot">``, PNG data URIs), then the details. The HTML loads
nothing from the network: inline CSS, no scripts, no external src or href."""

from __future__ import annotations

import base64
import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kvbench.errors import KvbenchError
from kvbench.results import write_bytes_atomic


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
    """What a report or compare shows: headline blocks, then plots (file name,
    caption, PNG bytes), then headed blocks of lines, warnings and tables."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    plots: list[tuple[str, str, bytes]] = field(default_factory=list)
    headline: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def lines(self, lines: list[str]) -> None:
        self.blocks.append(("lines", list(lines)))

    def warnings(self, lines: list[str]) -> None:
        if lines:
            self.blocks.append(("warnings", list(lines)))

    def table(self, t: Table) -> None:
        self.blocks.append(("table", t))


# ------------------------------------------------------------------------------ terminal
def _rich_table(body: Table) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    rt = RichTable(title=Text(body.title), title_justify="left")
    for i, col in enumerate(body.columns):
        rt.add_column(Text(col), justify="right" if i in body.numeric else "left",
                      overflow="fold", no_wrap=i in body.numeric)
    colour = {"skipped": "yellow", "error": "red", "flagged": "magenta"}
    for row, style in zip(body.rows, body.styles):
        rt.add_row(*[Text(c) for c in row], style=colour.get(style))
    return rt


def _print_blocks(blocks: list[tuple[str, Any]], console: Any) -> None:
    from rich.text import Text

    for kind, body in blocks:
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
            console.print(_rich_table(body))
            for n in body.notes:
                console.print(Text(f"  note: {n}", style="dim"))


def render_console(page: Page, console: Any) -> None:
    """Print a page's headline and blocks with rich (text is never parsed as markup)."""
    from rich.text import Text

    console.print(Text(page.title, style="bold"))
    _print_blocks(page.headline, console)
    _print_blocks(page.blocks, console)


def make_console(wide: bool = True) -> Any:
    """A console on stdout: the terminal's width; when not a terminal, 200 columns
    (``wide``, so report tables stay whole in a log) or $COLUMNS / 80."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() or not wide else 200)


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
#headline{background:#f6f8fa;border:1px solid #d0d7de;padding:.2em 1em 1em;margin-bottom:1.5em}
nav a{margin-right:1em}
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


def _html_blocks(blocks: list[tuple[str, Any]]) -> list[str]:
    e = html.escape
    out = []
    for kind, body in blocks:
        if kind == "heading":
            out.append(f"<h2>{e(body)}</h2>")
        elif kind == "lines":
            out.append('<div class="lines">' + "\n".join(e(x) for x in body) + "</div>")
        elif kind == "warnings":
            out += [f'<div class="warn">warning: {e(x)}</div>' for x in body]
        elif kind == "table":
            out.append(_html_table(body))
    return out


def _html_plots(plots: list[tuple[str, str, bytes]]) -> list[str]:
    e = html.escape
    out = ['<section id="plots"><h2>Plots</h2>']
    for name, caption, png in plots:
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure class="plot" id="plot-{e(Path(name).stem)}"><img alt="{e(caption)}" '
                   f'src="data:image/png;base64,{data}"><figcaption>{e(caption)} ({e(name)})</figcaption></figure>')
    out.append("</section>")
    return out


def render_html(page: Page) -> str:
    """One self-contained page: the headline section first, then the plots, then the
    details; inline CSS, PNGs as base64 data URIs; no script, no external src or href."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(page.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(page.title)}</h1>"]
    if page.headline:
        out += ['<section id="headline">', *_html_blocks(page.headline), "</section>"]
    if page.plots:
        out += _html_plots(page.plots)
    out += ['<section id="details">', *_html_blocks(page.blocks), "</section>", "</body></html>\n"]
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
