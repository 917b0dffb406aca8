"""Pure-ASGI adapter: one middleware, no BaseHTTPMiddleware, no per-message work beyond the status.

Labels are route templates ("/v1/accounts/{id}/usage"), resolved from a Starlette app's routes
before the chain runs (plugins need the route to pick per-route overrides); anything unmatched is
"<unmatched>", so label values stay bounded whatever paths clients send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from governance.core import (
    CANCELLED,
    FAILURE,
    Call,
    Chain,
    Outcome,
    OutcomeKind,
    Rejection,
    outcome_kind,
    rejection_status,
)
from governance.outbound import DependencyUnavailable
from governance.problem import dependency_reply, rejection_reply

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
UNMATCHED = "<unmatched>"


class StarletteRouteResolver:
    """scope -> route template by walking a Starlette app's routes (Mounts included), cached per path."""

    def __init__(self, app: Any, unmatched: str = UNMATCHED, cache_size: int = 4096) -> None:
        self._app, self._unmatched, self._cache_size = app, unmatched, cache_size
        self._cache: dict[str, str] = {}

    def __call__(self, scope: Scope) -> str:
        path = scope["path"]
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        template = self._match(getattr(self._app, "routes", ()), scope, "") or self._unmatched
        if len(self._cache) >= self._cache_size:  # id-heavy paths: start over rather than grow
            self._cache.clear()
        self._cache[path] = template
        return template

    def _match(self, routes: Any, scope: Scope, prefix: str) -> str | None:
        from starlette.routing import Host, Match, Mount

        partial = None
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.NONE:
                continue
            path = getattr(route, "path", "")
            if isinstance(route, (Mount, Host)):
                sub_routes = route.routes
                found = self._match(sub_routes, {**scope, **child}, prefix + path)
                if found is not None:
                    return found
                if sub_routes:
                    continue
                return f"{prefix}{path}/{{path}}"
            template = prefix + path
            if match is Match.FULL:
                return template
            partial = partial or template  # e.g. wrong method: still that route (405)
        return partial


def _default_resolver(app: Any) -> Callable[[Scope], str]:
    if hasattr(app, "routes"):
        return StarletteRouteResolver(app)
    return lambda scope: UNMATCHED


class GovernanceMiddleware:
    def __init__(self, app: ASGIApp, chain: Chain, *, client_key: Callable[[Scope], str | None] | None = None,
                 route_resolver: Callable[[Scope], str] | None = None) -> None:
        self.app = app
        self.chain = chain
        self.client_key = client_key
        self.route_resolver = route_resolver or _default_resolver(app)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        route = self.route_resolver(scope)
        plan = self.chain.plan("http", method, route)
        call = Call("http", route, method, self.client_key(scope) if self.client_key else None, start,
                    scope["headers"])
        client = scope.get("client")
        if client:
            call.peer = client[0]
        call.request_bytes = content_length(scope["headers"])
        admitted = self.chain.admit(call, plan) if plan.sync else await self.chain.admit_async(call, plan)
        if isinstance(admitted, Rejection):
            await _send_reply(send, *refusal_response(admitted))
            return
        status = 0

        # A plain function handing back send's awaitable: no coroutine of its own per message.
        def send_wrapper(message: MutableMapping[str, Any]) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if call.response_headers:
                    message["headers"] = [*message.get("headers", ()), *call.response_headers]
            result: Awaitable[None] = send(message)
            return result

        kind: OutcomeKind | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            kind, status = CANCELLED, status or 499
            raise
        except DependencyUnavailable as exc:
            kind = FAILURE
            if status:
                raise
            status = 503  # nothing sent yet: answer like any other "unavailable"
            await _send_reply(send, 503, *dependency_reply(exc))
        except BaseException:
            kind, status = FAILURE, status or 500
            raise
        finally:
            if kind is None:
                status = status or 500
                kind = outcome_kind("http", status)
            self.chain.unwind(admitted, Outcome(kind, status, time.perf_counter() - start, call))


def content_length(headers: Any) -> int:
    """The declared body size (0 when absent, chunked or malformed): admission happens before the
    body is read, so a refusal never pays for receiving it."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def refusal_response(refused: Rejection) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of a rejection's HTTP reply, the plugin's own headers included."""
    code = int(rejection_status("http", refused))
    body, headers = rejection_reply(refused, code)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refused.headers]
    return code, [*headers, *extra], body


async def _send_reply(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def dependency_unavailable_handler(request: Any, exc: Exception) -> Any:
    """Starlette exception handler: `exception_handlers={DependencyUnavailable: this}` -> 503 problem."""
    from starlette.responses import Response

    assert isinstance(exc, DependencyUnavailable)
    headers, body = dependency_reply(exc)
    return Response(body, status_code=503, headers={k.decode(): v.decode() for k, v in headers
                                                    if k != b"content-length"})
