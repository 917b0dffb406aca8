"""Finds uses of third-party private names (`_x`, not dunders) in our source, with the AST.

What counts as a use:
- `from pkg import _x`, `import pkg._mod`, `from pkg._mod import x` for a third-party `pkg`;
- `name._x` where `name` was bound by importing a third-party module or object;
- `obj._x` on any other object (a tracer, a sampler, ...) unless the same module defines `_x`
  (assigns `self._x`, defines a function, class or variable `_x`, lists it in `__slots__`);
- `self._x` in a class with a third-party base class unless that class defines `_x` itself;
- getattr/hasattr/setattr/delattr with a literal `_x` name, by the same rules as `obj._x`.
Standard-library modules are not third-party. First-party packages are ours.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

FIRST_PARTY = frozenset({"governance", "profiling", "service", "tests", "benchmarks", "dashboards"})
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def third_party(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top not in FIRST_PARTY and top not in STDLIB


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def own_private_names(trees: Iterable[ast.AST]) -> set[str]:
    """Every `_x` our code defines: attributes it assigns, functions, classes, variables, arguments."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                      for t in node.targets):
                names.update(c.value for c in ast.walk(node.value)
                             if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {n for n in names if is_private(n)}


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, own: set[str]) -> None:
        self.path, self.own = path, own
        self.foreign: set[str] = set()  # names bound to third-party modules/objects
        self.origin: dict[str, tuple[str, str | None]] = {}  # foreign name -> (module, attribute)
        self.stdlib: set[str] = set()
        self.classes: list[tuple[bool, set[str]]] = []  # (has a third-party base, names it defines)
        self.findings: list[Finding] = []

    def flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if third_party(alias.name):
                self.foreign.add(bound)
                self.origin[bound] = (alias.name if alias.asname else bound, None)
                if any(is_private(part) for part in alias.name.split(".")):
                    self.flag(node, f"import {alias.name}")
            elif alias.name.split(".")[0] in STDLIB:
                self.stdlib.add(bound)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level or not third_party(module):
            if module.split(".")[0] in STDLIB:
                self.stdlib.update(a.asname or a.name for a in node.names)
            return
        if any(is_private(part) for part in module.split(".")):
            self.flag(node, f"from {module} import ...")
        for alias in node.names:
            self.foreign.add(alias.asname or alias.name)
            self.origin[alias.asname or alias.name] = (module, alias.name)
            if is_private(alias.name):
                self.flag(node, f"from {module} import {alias.name}")

    def visit_Assign(self, node: ast.Assign) -> None:
        # `base = ThirdPartyClass`: the alias is third-party too.
        if self._root(node.value) in self.foreign:
            self.foreign.update(t.id for t in node.targets if isinstance(t, ast.Name))
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        foreign_bases = [b for b in node.bases if self._root(b) in self.foreign]
        defined = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        defined |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        defined |= {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        # Overriding (or assigning) a private name the third-party base has is reaching into it too.
        for base in map(self._resolve, foreign_bases):
            for name in sorted(n for n in defined if is_private(n) and base is not None and hasattr(base, n)):
                self.flag(node, f"class {node.name} overrides {name} of a third-party base")
        self.classes.append((bool(foreign_bases), defined))
        self.generic_visit(node)
        self.classes.pop()

    def _resolve(self, expr: ast.expr) -> object | None:
        """The third-party object `expr` names, imported for real; None when that fails."""
        origin = self.origin.get(self._root(expr))
        if origin is None or not isinstance(expr, ast.Name):
            return None
        try:
            obj: object = importlib.import_module(origin[0])
            return getattr(obj, origin[1]) if origin[1] else obj
        except (ImportError, AttributeError):
            return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        if (isinstance(fn, ast.Name) and fn.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self._check(node, node.args[0], node.args[1].value)
        self.generic_visit(node)

    def _check(self, node: ast.AST, owner: ast.expr, attr: str) -> None:
        if not is_private(attr):
            return
        root = self._root(owner)
        if root in self.stdlib:
            return
        if root in self.foreign:
            self.flag(node, f"{ast.unparse(owner)}.{attr} (a third-party private name)")
        elif root in ("self", "cls") and isinstance(owner, ast.Name) and self.classes and self.classes[-1][0]:
            if attr not in self.classes[-1][1]:
                self.flag(node, f"{root}.{attr} (inherited from a third-party class)")
        elif attr not in self.own:
            self.flag(node, f"{ast.unparse(owner)}.{attr} (not defined by our code)")

    @staticmethod
    def _root(expr: ast.expr) -> str:
        while isinstance(expr, ast.Attribute | ast.Call | ast.Subscript):
            expr = expr.func if isinstance(expr, ast.Call) else expr.value
        return expr.id if isinstance(expr, ast.Name) else ""


def scan_sources(sources: dict[str, str]) -> list[Finding]:
    """Findings in {path: source}. An `obj._x` counts as ours when the same module defines `_x`
    (a class of ours reading its own kind's state), so a module cannot borrow a coincidence."""
    trees = {path: ast.parse(text, path) for path, text in sources.items()}
    findings: list[Finding] = []
    for path, tree in trees.items():
        scanner = _Scanner(path, own_private_names([tree]))
        scanner.visit(tree)
        findings.extend(scanner.findings)
    return findings


def python_files(root: Path, dirs: Iterable[str], skip: Iterable[str] = ()) -> Iterator[Path]:
    skipped = [root / s for s in skip]
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            if not any(path.is_relative_to(s) for s in skipped):
                yield path
