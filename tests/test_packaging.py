"""pyproject.toml lists every package of the tree, so a plain (non-editable) install
carries all of kvbench."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kvbench").rglob("__init__.py")
            if "__pycache__" not in p.parts}
    assert listed - {"kvbench_kernels"} == tree
