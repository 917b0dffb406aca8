"""Static check: secrets are compared only with hmac.compare_digest, never with == / != / in.

An early-exit comparison of a token leaks, through response time, how many leading characters of
a guess were right. The check walks the AST of a module and reports every Python comparison
(==, !=, in, not in) where either side names something token-like. SQLAlchemy column expressions
(`table.c.key_hash == digest`) build SQL, not a Python comparison, and are exempt.
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
    if isinstance(node, ast.Constant):
        return False  # `name == "authorization"` compares a header *name*
    if any(SECRET_NAME.search(n) and not PUBLIC_NAME.search(n) for n in _names(node)):
        return True
    return any(isinstance(sub, ast.Constant) and isinstance(sub.value, str) and SECRET_LITERAL.search(sub.value)
               for sub in ast.walk(node))


def check_source(source: str, path: str = "<string>") -> list[Finding]:
    findings = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, _EQUALITY) or _is_sql_column(left) or _is_sql_column(right):
                continue
            if _secret_like(left) or _secret_like(right):
                findings.append(Finding(path, node.lineno, ast.get_source_segment(source, node) or ""))
    return findings


def check_file(path: Path) -> list[Finding]:
    return check_source(path.read_text(), str(path))


def compare_digest_calls(source: str) -> int:
    """How many hmac.compare_digest / secrets.compare_digest calls a module makes."""
    return sum(1 for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "compare_digest")
