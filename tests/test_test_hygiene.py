"""Checks on the tests themselves: no assertion that passes whatever the code does.

``assert x < a if cond else b`` parses as ``assert (x < a) if cond else b``: on the
branch where ``b`` is a non-zero constant it always passes (it did, on CUDA). An
``assert (x, "message")`` is a non-empty tuple: always true."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def vacuous_asserts(source: str) -> list[tuple[int, str]]:
    """(line, why) for each assert whose truth cannot depend on the code under test."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        t = node.test
        if isinstance(t, ast.IfExp):
            out.append((node.lineno, "conditional expression: parenthesise the bound"))
        elif isinstance(t, ast.Tuple) and t.elts:
            out.append((node.lineno, "a non-empty tuple is always true"))
        elif isinstance(t, ast.Constant) and t.value:
            out.append((node.lineno, "a true constant"))
    return out


def test_the_checker_finds_the_known_shapes():
    src = "assert r < 1e-5 if not ok else 2e-2\nassert (x, 'msg')\nassert r < (1 if a else 2)\n"
    assert [line for line, _ in vacuous_asserts(src)] == [1, 2]


def test_no_test_asserts_vacuously():
    found = [f"{p.name}:{line}: {why}" for p in sorted(TESTS.glob("*.py"))
             for line, why in vacuous_asserts(p.read_text())]
    assert not found, found
