"""Static check: secrets are compared only with hmac.compare_digest, never with == / != / in.

An early-exit comparison of a token leaks, through response time, how many leading characters of
a guess were right. The check walks the AST of a module and reports every Python comparison
(==, !=, in, not in) where either side holds a secret: something token-like by name, the result
of a secret source (bearer_token(), hash_key(), .get_secret_value(), a digest...), a SecretStr
parameter, or any variable a secret flowed into by assignment, whatever it is called (`x =
s.get_secret_value(); x == y`). SQLAlchemy column expressions (`table.c.key_hash == digest`) build
SQL, not a Python comparison, and are exempt.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

SECRET_NAME = re.compile(r"(?i)(token|secret|passw|api_?key|^_?key$|_key$|hash|digest|signature|credential|"
                         r"authorization|bearer)")
# A header lookup or a "Bearer ..." f-string inside an operand: the operand holds a credential.
SECRET_LITERAL = re.compile(r"(?i)authorization|bearer")
PUBLIC_NAME = re.compile(r"(?i)(_id|_ids|prefix|_name|_type|_len|length|_count|_at_ms)$")
# Calls whose result is a secret whatever the variable it lands in is called.
SECRET_SOURCES = frozenset({"bearer_token", "hash_key", "get_secret_value", "token_urlsafe", "token_hex",
                            "token_bytes", "digest", "hexdigest", "b64encode", "signed_url"})
# Calls that hand their argument's bytes on (str(token), bytes(secret)).
TRANSPARENT_CALLS = frozenset({"str", "bytes", "bytearray", "memoryview"})
_EQUALITY = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    source: str


def _names(node: ast.AST) -> list[str]:
    """Identifiers an operand is made of: `self._admin` -> ["self", "_admin"], `x.encode()` -> ["x", "encode"]."""
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.append(sub.attr)
    return out


def _is_sql_column(node: ast.AST) -> bool:
    # schema.api_keys.c.key_hash: an attribute chain through a Table's `.c` collection.
    while isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Attribute) and node.value.attr == "c":
            return True
        node = node.value
    return False


def _secret_like(node: ast.AST) -> bool:
    """Names a secret on its face: a secret-like identifier, a credential header lookup."""
    return _carries(node, frozenset())


def _carries(node: ast.AST, tainted: frozenset[str]) -> bool:
    """Does this expression's value hold (part of) a secret? By name, by source, or by flow: a
    variable assigned from a secret (tainted), a method result of a secret (`t.encode()`), a slice,
    an f-string around one. Results of other calls are not secrets (`authenticate(token)` returns
    a principal), except the sources in SECRET_SOURCES."""
    if isinstance(node, ast.Constant):
        return False  # `name == "authorization"` compares a header *name*
    if isinstance(node, ast.Name):
        return node.id in tainted or _secret_name(node.id)
    if isinstance(node, ast.Attribute):
        if PUBLIC_NAME.search(node.attr):
            return False
        return _secret_name(node.attr) or _carries(node.value, tainted)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in SECRET_SOURCES:
            return True
        if any(isinstance(a, ast.Constant) and isinstance(a.value, str)
               and (SECRET_LITERAL.search(a.value) or _secret_name(a.value)) for a in node.args):
            return True  # headers.get("authorization"), environ.get("METERD_ADMIN_TOKEN")
        if isinstance(func, ast.Attribute):
            return _carries(func.value, tainted)  # token.encode(), secret.strip()
        if name in TRANSPARENT_CALLS:
            return any(_carries(a, tainted) for a in node.args)
        return False
    if isinstance(node, ast.Subscript):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and _secret_name(key.value):
            return True  # row["key_hash"]
        return _carries(node.value, tainted)
    if isinstance(node, ast.JoinedStr):
        return any(_carries(v, tainted) if isinstance(v, ast.FormattedValue)
                   else isinstance(v, ast.Constant) and isinstance(v.value, str)
                   and bool(SECRET_LITERAL.search(v.value)) for v in node.values)
    if isinstance(node, ast.FormattedValue | ast.Await | ast.Starred | ast.NamedExpr):
        return _carries(node.value, tainted)
    if isinstance(node, ast.BinOp):
        return _carries(node.left, tainted) or _carries(node.right, tainted)
    if isinstance(node, ast.BoolOp):
        return any(_carries(v, tainted) for v in node.values)
    if isinstance(node, ast.IfExp):
        return _carries(node.body, tainted) or _carries(node.orelse, tainted)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_carries(e, tainted) for e in node.elts)
    return False


def _public_constant(node: ast.AST) -> bool:
    """A literal, a collection of literals, or an UPPER_CASE module constant not named like a secret."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_public_constant(e) for e in node.elts)
    if isinstance(node, ast.Name):
        return node.id.upper() == node.id and not _secret_name(node.id)
    return False


def _secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not PUBLIC_NAME.search(name)


def _target_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """Nodes of a module or function body, not descending into nested functions or classes."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _taint(scope: ast.AST, inherited: frozenset[str]) -> frozenset[str]:
    """Names in this scope that hold a secret: SecretStr parameters, then (to a fixed point)
    anything assigned from an expression that carries one."""
    tainted = set(inherited)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        args = scope.args
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
            if arg is not None and arg.annotation is not None and "SecretStr" in ast.unparse(arg.annotation):
                tainted.add(arg.arg)
    flows: list[tuple[ast.AST, ast.AST]] = []  # (target, value)
    for node in _own_nodes(scope):
        if isinstance(node, ast.Assign):
            flows += [(t, node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
            flows.append((node.target, node.value))
        elif isinstance(node, ast.NamedExpr):
            flows.append((node.target, node.value))
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            flows.append((node.target, node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            flows.append((node.optional_vars, node.context_expr))
    changed = True
    while changed:
        changed = False
        frozen = frozenset(tainted)
        for target, value in flows:
            names = set(_target_names(target)) - tainted
            if names and _carries(value, frozen):
                tainted |= names
                changed = True
    return frozenset(tainted)


def _scopes(node: ast.AST, inherited: frozenset[str]) -> list[tuple[ast.AST, frozenset[str]]]:
    """(scope, its tainted names) for the module and every function in it; closures inherit."""
    tainted = _taint(node, inherited)
    out = [(node, tainted)]
    for child in _own_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            out += _scopes(child, tainted if not isinstance(child, ast.ClassDef) else inherited)
    return out


def check_source(source: str, path: str = "<string>") -> list[Finding]:
    findings = []
    for scope, tainted in _scopes(ast.parse(source), frozenset()):
        for node in _own_nodes(scope):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
                if not isinstance(op, _EQUALITY) or _is_sql_column(left) or _is_sql_column(right):
                    continue
                if _public_constant(left) or _public_constant(right):
                    continue  # `scheme != "basic"`: the time taken can only reveal source code
                if _carries(left, tainted) or _carries(right, tainted):
                    findings.append(Finding(path, node.lineno, ast.get_source_segment(source, node) or ""))
                    break
    return sorted(findings, key=lambda f: f.line)


def check_file(path: Path) -> list[Finding]:
    return check_source(path.read_text(), str(path))


def compare_digest_calls(source: str) -> int:
    """How many hmac.compare_digest / secrets.compare_digest calls a module makes."""
    return sum(1 for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "compare_digest")
