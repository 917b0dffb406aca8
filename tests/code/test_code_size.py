"""Acceptance: governance/ stays small enough to hold in one's head: no module over 300 lines and no
function over 50 (counted with the AST, decorators and docstrings included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def oversized(path: str, source: str) -> list[str]:
    problems = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        problems.append(f"{path}: {lines} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{path}:{node.lineno}: {node.name} is {length} lines (max {MAX_FUNCTION_LINES})")
    return problems


def test_no_governance_module_or_function_is_too_long() -> None:
    files = sorted((ROOT / "governance").rglob("*.py"))
    assert files
    problems = [p for f in files for p in oversized(str(f.relative_to(ROOT)), f.read_text())]
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_a_long_function_and_a_long_module() -> None:
    long_function = "def f():\n" + "    x = 1\n" * 60
    assert oversized("f.py", long_function) == ["f.py:1: f is 61 lines (max 50)"]
    long_module = "x = 1\n" * 301
    assert oversized("m.py", long_module) == ["m.py: 301 lines (max 300)"]
