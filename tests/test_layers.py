"""The house's layers, read from the import statements: benchmarks never import each
other (shared measurement code lives in kvbench.measure), and the movers below them
import nothing from the benchmark layer."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kvbench"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_benchmark_imports_another():
    benches = {p.stem for p in (PKG / "bench").glob("*.py") if p.stem != "__init__"}
    found = []
    for p in sorted((PKG / "bench").glob("*.py")):
        for mod in imported_modules(p):
            parts = mod.split(".")
            if parts[:2] == ["kvbench", "bench"] and len(parts) > 2 and parts[2] in benches \
                    and parts[2] != p.stem:
                found.append(f"{p.name} imports {mod}")
    assert not found, found


def test_lower_layers_import_no_benchmark():
    lower = [PKG / "movers.py", *(PKG / "measure").glob("*.py"), PKG / "timing.py", PKG / "store.py",
             PKG / "attention.py", *(PKG / "tiers").glob("*.py"), *(PKG / "formats").glob("*.py")]
    found = [f"{p.relative_to(PKG)} imports {m}" for p in lower for m in imported_modules(p)
             if m == "kvbench.bench" or m.startswith("kvbench.bench.")]
    assert not found, found
