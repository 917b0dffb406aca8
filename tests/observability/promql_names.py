"""Metric names used by PromQL expressions, by plain tokenising (no full parser needed).

Strings, label matchers `{...}`, ranges `[...]` and label lists after by/without/on/ignoring/
group_left/group_right are removed first; what remains is function calls (an identifier followed
by "("), keywords, numbers and metric names.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_FUNCTION = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(")
# Not preceded by a word character or dot: keeps "5m", "1e3" and "0.5" out.
_IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "atan2",
        "start",
        "end",
    }
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub(" ", expr)
    while _BRACES.search(text):
        text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _FUNCTION.sub(" ( ", text)
    return {tok for tok in _IDENT.findall(text) if tok not in _KEYWORDS}


def template_query_names(query: str) -> set[str]:
    """Grafana variable queries: label_values(<selector>, label) names only the selector's metric."""
    if match := _LABEL_VALUES.match(query):
        return metric_names(match.group(1))
    return metric_names(query)
