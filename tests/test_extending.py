"""README's "Extending kvbench" holds: every path it names exists and is where that
change goes, and a new benchmark is one module plus one registry line: the report,
its headline, tables and plots pick up what the module declares.

The benchmark here is test input: a made-up module with made-up figures."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Extending kvbench"):text.index("## Layout of the repository")]


def test_every_path_in_the_extending_section_exists():
    paths = re.findall(r"`((?:kvbench|kernels|configs|tests)/[^`<>]*?)`", _section())
    assert paths
    for p in paths:
        assert (ROOT / p).exists(), p


@pytest.mark.parametrize("path,holds", [
    ("kvbench/bench/__init__.py", "BENCH_MODULES = ("),
    ("kvbench/tiers/__init__.py", "def register_tier("),
    ("kvbench/spec.py", "FORMATS: dict[str, KVFormat] = {"),
    ("kvbench/movers.py", "def register_copy_method("),
    ("kvbench/plotkit.py", "def new_figure("),
])
def test_the_named_places_hold_what_the_readme_says(path, holds):
    assert holds in (ROOT / path).read_text()


def _fake_bench(monkeypatch):
    from kvbench import bench
    from kvbench.bench import Benchmark, Highlights, Plot
    from kvbench.report import cases

    def draw(doc):
        from kvbench import plotkit

        fig = plotkit.new_figure(4, 3)
        fig.subplots().bar([0], [doc["cases"][0]["metrics"]["widgets_s"]])
        return fig, "widgets per second"

    mod = types.ModuleType("kvbench.bench.widgets")
    mod.BENCH = Benchmark(key="widgets", description="test input", plan=lambda ctx: [],
                          headline="widgets_s", headline_unit="widgets/s", columns=("spare",),
                          plots=(Plot("widgets.png", draw),),
                          highlights=lambda doc: Highlights("widgets: test input", [("rate", "widgets/s")],
                                                            [[c["metrics"]["widgets_s"]] for c in doc["cases"]]))
    monkeypatch.setitem(sys.modules, "kvbench.bench.widgets", mod)
    monkeypatch.setattr(bench, "BENCH_MODULES", (*bench.BENCH_MODULES, "widgets"))
    cases.benchmarks.cache_clear()
    return cases


def test_a_new_benchmark_is_shown_from_its_declarations(monkeypatch):
    from kvbench.report.page import render_html
    from kvbench.report.run_report import build_report
    from kvbench.results import SCHEMA, make_case

    cases = _fake_bench(monkeypatch)
    try:
        case = make_case("widgets", "w1", {}, samples={"widgets_s": [41.0, 42.0, 43.0]},
                         metrics={"spare": 7.0, "ignored": 1.0}, units={"widgets_s": "widgets/s"})
        doc = {"schema": SCHEMA, "run": {"id": "t", "status": "complete", "mode": "cpu-fallback",
                                         "quick": True, "kvbench_version": "0", "benches": ["widgets"]},
               "environment": {}, "method": {}, "cases": [case]}
        page = build_report(doc, "test", plots=True)
        tables = [body for kind, body in page.blocks + page.headline if kind == "table"]
        assert any(t.title == "widgets: test input" for t in tables)
        main = next(t for t in tables if t.title.startswith("widgets: 1 ok"))
        assert main.columns[1] == "widgets_s (widgets/s)" and "spare" in main.columns
        assert "ignored" not in main.columns
        assert [p[0] for p in page.plots] == ["widgets.png"]
        assert '<section id="headline">' in render_html(page)
    finally:
        monkeypatch.undo()
        cases.benchmarks.cache_clear()


def test_every_guarantee_names_a_test_that_exists():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## What kvbench guarantees"):text.index("## Extending kvbench")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`test_" in line]
    assert len(rows) >= 10
    for row in rows:
        current = None
        for ref in re.findall(r"`((?:test_\w+\.py)?(?:::\w+)?)`", row.split(" | ")[-1]):
            file, _, name = ref.partition("::")
            current = file or current
            source = (ROOT / "tests" / current).read_text()
            assert not name or f"def {name}(" in source, (current, name)
