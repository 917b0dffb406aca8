"""Query strings read as strictly as bodies: a parameter an operation does not take is a 400 naming
it (`stepp=1h` must not quietly answer the default window). What each operation takes is read from
the OpenAPI document, so the documentation and the check cannot disagree."""

from __future__ import annotations

import re
from functools import cache
from urllib.parse import parse_qsl

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.openapi import openapi_document
from service.api.problems import invalid, problem_response

CHECKED_PREFIX = "/v1/"  # the API; probes, /metrics and the docs page keep ignoring extras


@cache
def _operations() -> list[tuple[re.Pattern[str], dict[str, frozenset[str]]]]:
    table = []
    for template, item in openapi_document()["paths"].items():
        if not template.startswith(CHECKED_PREFIX):
            continue
        shared = [p for p in item.get("parameters", []) if p["in"] == "query"]
        methods = {m.upper(): frozenset(p["name"] for p in [*shared, *op.get("parameters", [])]
                                        if p["in"] == "query")
                   for m, op in item.items() if m != "parameters"}
        table.append((compile_path(template)[0], methods))
    return table


def unknown_parameters(method: str, path: str, query: str) -> list[str]:
    if not query or not path.startswith(CHECKED_PREFIX):
        return []
    for pattern, methods in _operations():
        if pattern.match(path):
            allowed = methods.get(method)
            if allowed is None:
                return []  # not this operation: the router answers 405
            names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
            return sorted(names - allowed)
    return []


class StrictQuery:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            unknown = unknown_parameters(scope["method"], scope["path"], query)
            if unknown:
                problem = invalid([{"field": name, "detail": "unknown query parameter"} for name in unknown],
                                  f"unknown query parameter(s): {', '.join(unknown)}")
                await problem_response(problem, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)
