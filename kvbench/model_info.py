"""``kvbench info --model M [--format F] [--context N]``: a model's KV cache, component
by component, per format; with ``--context``, one sequence's total at that length.

Pure arithmetic from kvbench.spec (no torch); rich renders the tables. GB = 1e9 B and
GiB = 2^30 B wherever a figure is printed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kvbench.errors import KvbenchError
from kvbench.kvcomponents import SHIPPED
from kvbench.spec import FORMATS, ModelSpec, resolve_format
from kvbench.units import GB, GiB


#: format columns per table of bytes per component (more are printed as further tables)
FORMATS_PER_TABLE = 4


def parse_context(text: str | None) -> int | None:
    """``--context``: a positive whole number of tokens (underscores allowed), or None."""
    if text is None:
        return None
    try:
        n = int(str(text).replace("_", ""))
    except ValueError:
        n = 0
    if n <= 0:
        raise KvbenchError(f"--context must be a positive whole number of tokens, got {text!r}")
    return n


def has_shipped(model: ModelSpec) -> bool:
    """True when every component that follows the format declares a shipped one."""
    comps = [c for c in model.components if not c.fixed]
    return bool(comps) and all(c.shipped for c in comps)


def info_formats(model: ModelSpec, text: str | None) -> list[str]:
    """The formats to show: ``--format`` (a comma list; "shipped" = as the model ships
    each component), checked against the model; default: shipped (if declared) + all."""
    if text is None:
        return ([SHIPPED] if has_shipped(model) else []) + list(FORMATS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise KvbenchError("--format is empty: give at least one value")
    for name in names:
        model.check_format(resolve_format(name))
    return names


def _b(x: float) -> str:
    """Bytes with thousands separators; a fraction (a 1/m share) to 4 places at most."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.4f}".rstrip("0").rstrip(".")


def _layer_summary(model: ModelSpec) -> str:
    counts = Counter(model.layer_types)
    if len(counts) == 1:
        return f"{model.num_layers} layers"
    return f"{model.num_layers} layers: " + ", ".join(f"{n} {t}" for t, n in counts.items())


def component_rows(model: ModelSpec, formats: list[str]) -> list[dict[str, Any]]:
    """One dict per component: its shape and, per format, bytes per entry, per token
    (growing components) and per sequence (windows, fixed state)."""
    rows = []
    for c in model.components:
        per = {}
        for f in formats:
            codec = model.codec(c, resolve_format(f))
            per[f] = {"entry_bytes": c.entry_bytes(codec), "layout": codec.name,
                      "bytes_per_token": float(c.bytes_per_token(codec)),
                      "bytes_per_sequence_constant": c.bytes_per_sequence_constant(codec)}
        rows.append({"name": c.name, "layers": len(c.layers), "tokens_per_entry": c.tokens_per_entry,
                     "max_entries": c.max_entries, "constant": c.constant, "elements": c.elements,
                     "vectors": c.vectors, "shipped": c.shipped, "fixed": c.fixed,
                     "holds": c.holds(), "description": c.description, "bytes": per})
    return rows


def context_rows(model: ModelSpec, formats: list[str], tokens: int) -> dict[str, Any]:
    """Exact bytes of one sequence of ``tokens`` tokens per format, total and per component."""
    out = {}
    for f in formats:
        fmt = resolve_format(f)
        comps = {c.name: c.bytes_for_sequence(tokens, model.codec(c, fmt)) for c in model.components}
        out[f] = {"total_bytes": sum(comps.values()), "components": comps}
    return out


def model_json(model: ModelSpec, formats: list[str], context: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": {**model.summary(), "provenance": list(model.provenance)},
        "kv_bytes_per_token": {f: model.kv_bytes_per_token(resolve_format(f)) for f in formats},
        "kv_bytes_per_sequence_constant": {f: model.kv_bytes_per_sequence_constant(resolve_format(f))
                                           for f in formats},
        "kv_components": component_rows(model, formats),
    }
    if context:
        out["context_tokens"] = context
        out["kv_bytes_at_context"] = context_rows(model, formats, context)
    return out


def _summary_table(model: ModelSpec, formats: list[str]):
    from rich.table import Table

    t = Table(title=f"KV cache of {model.name} ({model.attention_type}; {_layer_summary(model)}; "
                    f"{model.kv_heads} KV heads x {model.head_dim})  GB = 1e9 B, GiB = 2^30 B",
              title_justify="left")
    for col in ("format", "bits/elem", "B/token", "GB / 1M tokens", "GiB / 1M tokens", "vs fp16"):
        t.add_column(col, justify="right")
    base = model.kv_bytes_per_token("fp16")
    for f in formats:
        b = model.kv_bytes_per_token(resolve_format(f))
        bits = "mixed" if f == SHIPPED else f"{FORMATS[f].bits_per_element(model.head_dim):.3g}"
        t.add_row(f, bits, _b(b), f"{b * 1e6 / GB:,.2f}", f"{b * 1e6 / GiB:,.2f}", f"{base / b:.2f}x")
    return t


def _components_table(model: ModelSpec, rows: list[dict[str, Any]]):
    from rich.table import Table

    from rich.markup import escape

    t = Table(title=f"Components of {model.name} (per layer that keeps one)", title_justify="left")
    for col in ("component", "layers", "holds", "vector", "stored as", "what"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], str(r["layers"]), r["holds"], f"{r['vectors']} x {r['elements']}",
                  (f"{r['fixed']} (any format)" if r["fixed"] else f"the format; shipped: {r['shipped'] or '-'}"),
                  escape(r["description"]))
    return t


def _bytes_table(model: ModelSpec, rows: list[dict[str, Any]], formats: list[str]):
    from rich.table import Table

    t = Table(title=f"Bytes per component of {model.name}: per token = what each token of context "
                    "adds (an entry per m tokens adds entry / m); per seq = per sequence, once a "
                    "window is full (fixed state: from the first token)", title_justify="left")
    t.add_column("component", no_wrap=True)
    t.add_column("per", no_wrap=True)
    for f in formats:
        t.add_column(f, justify="right", no_wrap=True)
    for r in rows:
        key = "bytes_per_sequence_constant" if r["max_entries"] else "bytes_per_token"
        t.add_row(r["name"], "seq" if r["max_entries"] else "token", *[_b(r["bytes"][f][key]) for f in formats])
    t.add_row("total", "token", *[_b(model.kv_bytes_per_token(resolve_format(f))) for f in formats])
    if any(r["max_entries"] for r in rows):
        t.add_row("total", "seq", *[_b(model.kv_bytes_per_sequence_constant(resolve_format(f))) for f in formats])
    return t


def _context_table(model: ModelSpec, formats: list[str], tokens: int):
    from rich.table import Table

    t = Table(title=f"One sequence of {tokens:,} tokens ({model.name}): exact bytes, windows and "
                    "state included; a compressed component holds complete windows only",
              title_justify="left")
    for col in ("format", "bytes", "GB", "GiB", "B/token at this context"):
        t.add_column(col, justify="right")
    for f, d in context_rows(model, formats, tokens).items():
        b = d["total_bytes"]
        t.add_row(f, f"{b:,}", f"{b / GB:,.3f}", f"{b / GiB:,.3f}", _b(round(b / tokens, 4)))
    return t


def print_model(console: Any, model: ModelSpec, formats: list[str], context: int | None) -> None:
    """The model's KV tables: totals per format, components, and the context's total."""
    console.print(_summary_table(model, formats))
    rows = component_rows(model, formats)
    if len(rows) > 1 or any(r["max_entries"] for r in rows):
        console.print(_components_table(model, rows))
        for i in range(0, len(formats), FORMATS_PER_TABLE):  # a table fits 120 columns
            console.print(_bytes_table(model, rows, formats[i:i + FORMATS_PER_TABLE]))
    else:
        r = rows[0]
        console.print(f"  one component: {r['name']}, {r['vectors']} x {r['elements']} elements per "
                      f"token on {r['layers']} layers ({r['description']})", markup=False)
    if context:
        console.print(_context_table(model, formats, context))
    if SHIPPED in formats:
        for name in dict.fromkeys(r["shipped"] for r in rows if r["shipped"]):
            console.print(f"  shipped: {_layout_text(name)}", markup=False)
    console.print(f"  source: {model.source_url} (retrieved {model.retrieved})", markup=False)
    for p in model.provenance:
        fields = p["fields"] if isinstance(p["fields"], str) else ", ".join(map(str, p["fields"]))
        console.print(f"    {fields}: {p['source']} (retrieved {p['retrieved']})", markup=False)


def _layout_text(name: str) -> str:
    from kvbench.kvcomponents import STORED_LAYOUTS

    if name in STORED_LAYOUTS:
        return f"{name} ({STORED_LAYOUTS[name].description})"
    return f"{name} (kvbench format: {FORMATS[name].description})"
