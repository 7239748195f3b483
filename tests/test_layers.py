"""The house's layers, read from the import statements: benchmarks never import each
other (shared measurement code lives in kvbench.measure), and the movers below them
import nothing from the benchmark layer."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kvbench"


def _package_of(path: Path) -> list[str]:
    """The dotted package a file sits in, from the repository root ('kvbench.bench')."""
    return list(path.resolve().relative_to(PKG.parent).parent.parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions; relative imports
    resolved against the file's package)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = _package_of(path)[: len(_package_of(path)) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            if module:
                out.add(module)
                out.update(f"{module}.{a.name}" for a in node.names)
    return out


def _benchmark_files() -> dict[Path, str]:
    """Every file of the benchmark layer -> the benchmark it belongs to: a module
    ``bench/<key>.py``, or any module of a package ``bench/<key>/``."""
    bench = PKG / "bench"
    out = {p: p.stem for p in bench.glob("*.py") if p.stem != "__init__"}
    for pkg in bench.iterdir():
        if (pkg / "__init__.py").is_file():
            out.update({p: pkg.name for p in pkg.rglob("*.py") if "__pycache__" not in p.parts})
    return out


def foreign_bench_imports(path: Path, owner: str, benches: set[str]) -> list[str]:
    """The imports in ``path`` (a file of benchmark ``owner``) of another benchmark's
    modules: ``kvbench.bench.<other>`` or anything under it."""
    out = []
    for mod in sorted(imported_modules(path)):
        parts = mod.split(".")
        if parts[:2] == ["kvbench", "bench"] and len(parts) > 2 and parts[2] in benches \
                and parts[2] != owner:
            out.append(mod)
    return out


def test_no_benchmark_imports_another():
    """A module of a benchmark package may import its siblings, never another benchmark."""
    files = _benchmark_files()
    benches = set(files.values())
    assert {"decode", "transfer", "prefix"} <= benches  # modules and packages both found
    found = [f"{p.relative_to(PKG)} imports {m}" for p, owner in sorted(files.items())
             for m in foreign_bench_imports(p, owner, benches)]
    assert not found, found


def test_the_benchmark_rule_sees_inside_packages(tmp_path):
    """A decode module importing transfer is found; importing a decode sibling is not."""
    f = tmp_path / "x.py"
    f.write_text("from kvbench.bench.decode.cache import Cache\n"
                 "def later():\n    from kvbench.bench.transfer import BENCH\n")
    benches = set(_benchmark_files().values())
    assert foreign_bench_imports(f, "decode", benches) == ["kvbench.bench.transfer",
                                                           "kvbench.bench.transfer.BENCH"]
    assert foreign_bench_imports(f, "transfer", benches) == ["kvbench.bench.decode.cache",
                                                             "kvbench.bench.decode.cache.Cache"]


def test_lower_layers_import_no_benchmark():
    lower = [PKG / "movers.py", *(PKG / "measure").glob("*.py"), PKG / "timing.py", PKG / "store.py",
             PKG / "attention.py", PKG / "quantized_pages.py", PKG / "distributed.py", *(PKG / "tiers").glob("*.py"),
             *(PKG / "formats").glob("*.py")]
    found = [f"{p.relative_to(PKG)} imports {m}" for p in lower for m in imported_modules(p)
             if m == "kvbench.bench" or m.startswith("kvbench.bench.")]
    assert not found, found


# ------------------------------------------------------------------ the whole house
#: floors, lowest first: a module may import modules of its own floor or below, never
#: above; prefixes are matched longest first
FLOORS = [
    ("ground", ("kvbench.units", "kvbench.errors", "kvbench.mounts", "kvbench.stats", "kvbench.owner",
                "kvbench.owned_dirs")),
    ("spec and formats", ("kvbench.spec", "kvbench.kvformat", "kvbench.kvcomponents", "kvbench.pagespec",
                          "kvbench.formats", "kvbench.plotkit")),
    ("machine, tiers, movers, kernels",
     ("kvbench.env", "kvbench.disk_identity", "kvbench.timing", "kvbench.tiers", "kvbench.movers", "kvbench.store", "kvbench.distributed",
      "kvbench.gds",
      "kvbench.kernels_loader", "kvbench.attention", "kvbench.quantized_pages", "kvbench.footprint",
      "kernels")),
    ("results", ("kvbench.results",)),
    ("measurement", ("kvbench.measure",)),
    ("benchmarks", ("kvbench.bench", "kvbench.hf")),
    ("runner, presentation, sizing", ("kvbench.runner", "kvbench.launch", "kvbench.fleet", "kvbench.report",
                                      "kvbench.sizing", "kvbench.claims",
                                      "kvbench.model_info")),
    ("command line", ("kvbench.cli", "kvbench.__main__")),
]
ROOT = PKG.parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _floor(module: str) -> int | None:
    if module == "kvbench":  # the package's face: its version
        return 0
    best = None
    for i, (_name, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return best[0] if best else None


def _graph() -> dict[str, set[str]]:
    """module -> the kvbench modules it imports (top level or inside functions)."""
    files = [p for p in [*PKG.rglob("*.py"), *(ROOT / "kernels").rglob("*.py")] if "__pycache__" not in p.parts]
    mods = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        got = set()
        for imp in imported_modules(path):
            while imp and imp not in mods:  # "kvbench.report.cases.unit_of" -> the module
                imp = imp.rpartition(".")[0]
            if imp and imp != mod and imp not in ("kvbench",):
                got.add(imp)
        graph[mod] = got
    return graph


def test_every_module_has_a_floor():
    assert not [m for m in _graph() if _floor(m) is None]


def test_no_import_runs_up_a_floor():
    graph = _graph()
    up = [f"{m} ({FLOORS[_floor(m)][0]}) imports {i} ({FLOORS[_floor(i)][0]})"
          for m, imps in graph.items() for i in imps if _floor(i) > _floor(m)]
    assert not up, "\n".join(sorted(up))


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ may hand on its submodules' names (a face): an edge from a
    # package to its own submodule is not a circle
    def edges(m: str) -> set[str]:
        return {i for i in graph[m] if not i.startswith(m + ".")}
    circles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for i in sorted(edges(m)):
            if state.get(i) == 1:
                circles.append(" -> ".join(stack[stack.index(i):] + [i]))
            elif i not in state:
                visit(i, stack + [i])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


#: what kvbench/formats may import from kvbench: the ground it stands on (spec, errors,
#: units) and itself; never kernels (kvbench_kernels, the loader), tiers, movers, the
#: store, measurement, benchmarks or results
FORMATS_MAY_IMPORT = ("kvbench.spec", "kvbench.errors", "kvbench.units", "kvbench.formats")


def _within(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_formats_import_nothing_from_a_higher_layer():
    found = []
    for p in sorted((PKG / "formats").glob("*.py")):
        for mod in imported_modules(p):
            higher = mod.startswith("kvbench_kernels") or mod.startswith("kernels")
            if mod == "kvbench":  # "from kvbench import x" names modules of the package
                continue
            if higher or (mod.startswith("kvbench.") and not _within(mod, FORMATS_MAY_IMPORT)):
                found.append(f"formats/{p.name} imports {mod}")
    assert not found, found


#: the pure modules of the spec floor: they import errors and each other, never torch
SPEC_MODULES = ("spec.py", "kvformat.py", "kvcomponents.py", "pagespec.py")


def test_spec_imports_only_errors():
    allowed = {"kvbench.errors", "kvbench.kvformat", "kvbench.kvcomponents", "kvbench.pagespec"}
    for name in SPEC_MODULES:
        mods = {m for m in imported_modules(PKG / name) if m.startswith("kvbench")}
        assert {m for m in mods if m not in allowed and m.rpartition(".")[0] not in allowed} == set(), (name, mods)
        assert not any(m == "torch" or m.startswith("torch.") for m in imported_modules(PKG / name)), name


def test_the_layer_rule_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from kvbench.kernels_loader import load_kernels\n"
                   "from kvbench.results import make_case\n")
    mods = imported_modules(bad)
    assert "kvbench.kernels_loader" in mods and "kvbench.results" in mods
    assert not any(_within(m, FORMATS_MAY_IMPORT) for m in mods)
