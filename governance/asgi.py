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
    SUCCESS,
    Call,
    Chain,
    Outcome,
    Plan,
    Rejection,
    rejection_status,
)
from governance.outbound import DependencyUnavailable
from governance.problem import PROBLEM_TYPE, problem_body, problem_headers, rejection_reply, retry_after_seconds

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
UNMATCHED = "<unmatched>"
_NO_METHODS: dict[str, Any] = {}


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
        # path -> method -> (route, plan) when the resolver is the path-cached Starlette one: one
        # lookup per request instead of a resolver call plus a plan lookup. Same bound as its cache.
        self._by_path: dict[str, dict[str, tuple[str, Plan]]] | None = \
            {} if isinstance(self.route_resolver, StarletteRouteResolver) else None

    def _route_plan(self, scope: Scope, method: str) -> tuple[str, Plan]:
        route = self.route_resolver(scope)
        found = route, self.chain.plan("http", method, route)
        by_path = self._by_path
        if by_path is not None:
            if len(by_path) >= 4096:
                by_path.clear()
            by_path.setdefault(scope["path"], {})[method] = found
        return found

    def early_reply(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """For a server, before it starts handling an HTTP request: (status, headers, body) of a
        refusal decided now (see core.Plan.early), or None to handle the request as usual. The
        refused call is accounted for as any refusal (metrics, rejection counters, traces)."""
        method = scope["method"]
        by_path = self._by_path
        found = by_path.get(scope["path"], _NO_METHODS).get(method) if by_path is not None else None
        route, plan = found if found is not None else self._route_plan(scope, method)
        early = plan.early
        if early is None:
            return None
        refused = early[1]()
        if refused is None:
            return None
        call = Call("http", route, method, self.client_key(scope) if self.client_key else None, time.perf_counter(),
                    {"carrier": scope["headers"]})
        return refusal_response(self.chain.refuse_early(call, plan, refused))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        by_path = self._by_path
        found = by_path.get(scope["path"], _NO_METHODS).get(method) if by_path is not None else None
        route, plan = found if found is not None else self._route_plan(scope, method)
        chain = self.chain
        call = Call("http", route, method, self.client_key(scope) if self.client_key else None, start,
                    {"carrier": scope["headers"]})
        sync = plan.sync
        refused: Rejection | None = None
        if sync:
            refused = chain.try_admit_sync(call, plan)  # no exception: refusals are common under overload
        else:
            try:
                await chain.admit(call, plan)
            except Rejection as rej:
                refused = rej
        if refused is not None:
            await _send_reply(send, *refusal_response(refused))
            return

        status = 0

        # A plain function handing back send's awaitable: the app awaits that directly, so the
        # wrapper costs no coroutine of its own per message.
        def send_wrapper(message: MutableMapping[str, Any]) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = call.response_headers
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            await chain.release(call, plan, Outcome(CANCELLED, status or 499, time.perf_counter() - start))
            raise
        except DependencyUnavailable as exc:
            if status == 0:  # nothing sent yet: answer 503 like any other "unavailable"
                body = problem_body(503, None, str(exc), dependency=exc.name)
                await _send_reply(send, 503, list(problem_headers(body, retry_after_seconds(exc.retry_after))), body)
                await chain.release(call, plan, Outcome(FAILURE, 503, time.perf_counter() - start))
                return
            await chain.release(call, plan, Outcome(FAILURE, status, time.perf_counter() - start))
            raise
        except BaseException:
            await chain.release(call, plan, Outcome(FAILURE, status or 500, time.perf_counter() - start))
            raise
        outcome = Outcome(FAILURE if status >= 500 or status == 0 else SUCCESS, status or 500,
                          time.perf_counter() - start)
        if sync:
            chain.release_sync(call, plan, outcome)
        else:
            await chain.release(call, plan, outcome)


def encode_headers(pairs: list[tuple[Any, Any]]) -> list[tuple[bytes, bytes]]:
    """Plugin response headers as ASGI wants them. Plugins may hand over (str, str) pairs, or
    pre-encoded (lowercase bytes, bytes) pairs to save the encoding on every call."""
    return [(k, v) if type(k) is bytes else (k.lower().encode(), v.encode()) for k, v in pairs]


def refusal_response(refused: Rejection) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of a rejection's HTTP reply, the plugin's own headers included: what
    the adapter sends, and what `early_reply` hands a server."""
    code = int(rejection_status("http", refused))
    body, headers = rejection_reply(refused, code)
    extra = refused.headers
    return code, [*headers, *encode_headers(extra)] if extra else list(headers), body


async def _send_reply(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def dependency_unavailable_handler(request: Any, exc: Exception) -> Any:
    """Starlette exception handler: `exception_handlers={DependencyUnavailable: this}` -> 503 problem."""
    from starlette.responses import Response

    assert isinstance(exc, DependencyUnavailable)
    retry = retry_after_seconds(exc.retry_after)
    return Response(problem_body(503, None, str(exc), dependency=exc.name), status_code=503,
                    media_type=PROBLEM_TYPE, headers={"Retry-After": str(retry)})
