"""The HTTP surface: the route list (each area's handlers live in its own module) and the exception table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from governance import DependencyUnavailable
from governance.problem import retry_after_seconds
from service.api.accounts import account_routes, event_routes, secret_routes
from service.api.adjustments_api import adjustment_routes
from service.api.admin_routes import admin_routes
from service.api.billing_api import billing_routes
from service.api.context import ApiContext
from service.api.ingest import ingest_routes
from service.api.ops import docs_routes, ops_routes
from service.api.problems import Problem, problem_response
from service.api.readiness import ReadinessCheck
from service.api.regions_api import region_routes
from service.api.strict_query import StrictQuery
from service.api.tokens_api import token_routes
from service.api.usage import usage_routes
from service.ingest.errors import DependencyDown, IngestError, InvalidBatch

__all__ = ["EXCEPTION_HANDLERS", "ApiContext", "ReadinessCheck", "build_admin_app", "build_api", "ingest_problem",
           "ops_routes", "routes"]

log = logging.getLogger("meterd.api")


def routes(ctx: ApiContext) -> list[BaseRoute]:
    return [*account_routes(ctx), *secret_routes(ctx), *event_routes(ctx), *usage_routes(ctx), *billing_routes(ctx),
            *adjustment_routes(ctx), *admin_routes(ctx), *ingest_routes(ctx), *region_routes(ctx),
            *token_routes(ctx), *ops_routes(ctx.registry, ctx.readiness), *docs_routes()]


def ingest_problem(exc: IngestError) -> Problem:
    """The problem+json answer an ingest error names (service.ingest.errors), with its extra fields."""
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidBatch):
        extra["errors"] = [{"field": v.field, "detail": v.description} for v in exc.violations]
    if isinstance(exc, DependencyDown):
        extra["retry_after"] = retry_after_seconds(exc.retry_after)
        headers["Retry-After"] = str(extra["retry_after"])
    return Problem(exc.status, exc.http_title, exc.public_detail, slug=exc.slug, headers=headers, **extra)


def allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (the Allow header of a 405)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, IngestError):
        return problem_response(ingest_problem(exc), request.url.path)
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


async def _dependency_down(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DependencyUnavailable)
    retry = retry_after_seconds(exc.retry_after)
    return problem_response(Problem(503, "Dependency Unavailable", str(exc), headers={"Retry-After": str(retry)},
                                    dependency=exc.name, retry_after=retry), request.url.path)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the first matching route's methods only
        headers["Allow"] = allowed_methods(request)
    return problem_response(Problem(exc.status_code, title, str(exc.detail), headers=headers), request.url.path)


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(Problem(500, "Internal Server Error", "internal error"), request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: _problem_handler, IngestError: _problem_handler, HTTPException: _http_exception,
    DependencyUnavailable: _dependency_down,
    Exception: _internal,
}


def build_api(ctx: ApiContext) -> Starlette:
    return Starlette(routes=[*routes(ctx), *ctx.extra_routes], exception_handlers=EXCEPTION_HANDLERS,
                     middleware=[Middleware(StrictQuery)])


def build_admin_app(registry: CollectorRegistry, readiness: list[ReadinessCheck],
                    extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """/metrics, /healthz, /readyz for roles that serve no user HTTP (writer, consumer)."""
    return Starlette(routes=[*ops_routes(registry, readiness), *extra_routes], exception_handlers=EXCEPTION_HANDLERS)
