"""Starlette application: account API, traffic ingestion, health, metrics, docs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from governance import DependencyUnavailable
from governance.problem import MEDIA_TYPE, problem_body, retry_after_seconds
from service.api.batches import batch_lookup
from service.api.bodies import AccountCreate, AccountPatch, parse_model, read_json
from service.api.openapi import DOCS_HTML, openapi_document
from service.api.problems import Problem, forbidden, not_found, problem_response, unauthorized
from service.api.readiness import Readiness, ReadinessCheck
from service.api.timeparams import format_rfc3339, usage_window
from service.api.traffic_json import parse_traffic
from service.auth import Authenticator, Principal
from service.ingest.errors import BatchConflict, DependencyDown, ForeignRecords, IngestError, InvalidBatch
from service.ingest.writer import IngestService
from service.storage import Repository
from service.storage.ledger import Ledger

log = logging.getLogger("meterd.api")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def account_json(row: dict) -> dict:
    return {"id": row["id"], "name": row["name"], "status": row["status"], "quota_bytes": row["quota_bytes"],
            "created_at": format_rfc3339(row["created_at_ms"] / 1000),
            "updated_at": format_rfc3339(row["updated_at_ms"] / 1000)}


def ingest_problem(exc: IngestError) -> Problem:
    if isinstance(exc, InvalidBatch):
        return Problem(400, "Invalid Batch", exc.detail, slug="invalid-batch",
                       errors=[{"field": v.field, "detail": v.description} for v in exc.violations])
    if isinstance(exc, ForeignRecords):
        return Problem(403, "Forbidden", exc.detail, slug="foreign-records")
    if isinstance(exc, BatchConflict):
        return Problem(409, "Batch Conflict", exc.detail, slug="batch-conflict")
    if isinstance(exc, DependencyDown):  # the same reply as governance's DependencyUnavailable
        retry = retry_after_seconds(exc.retry_after)
        return Problem(503, "Dependency Unavailable", exc.detail, headers={"Retry-After": str(retry)},
                       retry_after=retry)
    return Problem(500, "Internal Server Error", "internal error")


@dataclass
class ApiContext:
    repo: Repository
    auth: Authenticator
    ingest: IngestService | None
    registry: CollectorRegistry
    max_body_bytes: int
    body_timeout: float = 10.0
    readiness: list[ReadinessCheck] = field(default_factory=list)
    extra_routes: Sequence[BaseRoute] = ()
    ledger: Ledger | None = None  # batch lookup


class Api:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def principal(self, request: Request) -> Principal:
        p = await self.ctx.auth.authenticate(request.headers.get("authorization"))
        if p is None:
            raise unauthorized()
        request.state.principal = p
        return p

    async def admin(self, request: Request) -> Principal:
        p = await self.principal(request)
        if not p.is_admin:
            raise forbidden()
        return p

    async def readable_account(self, request: Request) -> dict:
        p = await self.principal(request)
        account_id = request.path_params["account_id"]
        # Another account's id answers 404, not 403: a key must not learn which ids exist.
        row = await self.ctx.repo.get_account(account_id) if p.may_read(account_id) else None
        if row is None:
            raise not_found("account")
        return row

    # -- accounts ---------------------------------------------------------------------------
    async def create_account(self, request: Request) -> Response:
        await self.admin(request)
        body = parse_model(AccountCreate, await read_json(request, self.ctx.max_body_bytes, self.ctx.body_timeout))
        row = await self.ctx.repo.create_account(body.name, body.quota_bytes, body.status)
        return json_response(account_json(row), 201, {"Location": f"/v1/accounts/{row['id']}"})

    async def get_account(self, request: Request) -> Response:
        return json_response(account_json(await self.readable_account(request)))

    async def patch_account(self, request: Request) -> Response:
        await self.admin(request)
        body = parse_model(AccountPatch, await read_json(request, self.ctx.max_body_bytes, self.ctx.body_timeout))
        changes = body.model_dump(exclude_unset=True)
        if "name" in changes and changes["name"] is None or "status" in changes and changes["status"] is None:
            raise Problem(400, "Invalid Request", "name and status cannot be null", slug="invalid-request")
        account_id = request.path_params["account_id"]
        row = (await self.ctx.repo.update_account(account_id, changes) if changes
               else await self.ctx.repo.get_account(account_id))
        if row is None:
            raise not_found("account")
        if self.ctx.ingest is not None:
            self.ctx.ingest.accounts.invalidate(account_id)
        return json_response(account_json(row))

    async def create_key(self, request: Request) -> Response:
        await self.admin(request)
        account_id = request.path_params["account_id"]
        if await self.ctx.repo.get_account(account_id) is None:
            raise not_found("account")
        key = await self.ctx.repo.create_key(account_id)
        return json_response({"id": key["id"], "prefix": key["prefix"], "key": key["key"],
                              "account_id": account_id,
                              "created_at": format_rfc3339(key["created_at_ms"] / 1000)}, 201)

    async def delete_key(self, request: Request) -> Response:
        await self.admin(request)
        if not await self.ctx.repo.revoke_key(request.path_params["account_id"], request.path_params["key_id"]):
            raise not_found("key")
        return Response(status_code=204)

    async def usage(self, request: Request) -> Response:
        row = await self.readable_account(request)
        start, end, step_name, step = usage_window(dict(request.query_params), int(time.time()))
        rows = await self.ctx.repo.usage(row["id"], start, end, step)
        points = [{"ts": format_rfc3339(r.ts), "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
                   "requests": r.requests} for r in rows]
        totals = {"bytes_in": sum(r.bytes_in for r in rows), "bytes_out": sum(r.bytes_out for r in rows),
                  "requests": sum(r.requests for r in rows)}
        return json_response({"account_id": row["id"], "step": step_name, "start": format_rfc3339(start),
                              "end": format_rfc3339(end), "points": points, "totals": totals})

    async def balance(self, request: Request) -> Response:
        row = await self.readable_account(request)
        now = datetime.now(UTC)
        month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
        used = await self.ctx.repo.bytes_used_since(row["id"], int(month_start.timestamp()))
        quota = row["quota_bytes"]
        return json_response({
            "account_id": row["id"], "period_start": format_rfc3339(month_start.timestamp()),
            "quota_bytes": quota, "used_bytes": used,
            "remaining_bytes": None if quota is None else max(0, quota - used),
            "over_quota": quota is not None and used > quota})

    # -- ingestion ----------------------------------------------------------------------------
    async def post_traffic(self, request: Request) -> Response:
        principal = await self.principal(request)
        if self.ctx.ingest is None:
            raise Problem(503, "Service Unavailable", "this process does not accept traffic")
        batch_id, records = parse_traffic(await read_json(request, self.ctx.max_body_bytes, self.ctx.body_timeout))
        result = await self.ctx.ingest.write(principal, batch_id, records, "http")
        return json_response({"batch_id": result.batch_id, "accepted": result.accepted,
                              "duplicate": result.duplicate}, 202)

    # -- operations ---------------------------------------------------------------------------
    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)


async def readiness_response(readiness: Readiness) -> Response:
    checks = await readiness.status()
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        return Response(problem_body(503, f"not ready: {', '.join(failing)}", title="Not Ready", checks=checks),
                        status_code=503, media_type=MEDIA_TYPE)
    return json_response({"status": "ready", "checks": checks})


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
    return problem_response(Problem(exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {})),
                            request.url.path)


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(Problem(500, "Internal Server Error", "internal error"), request.url.path)


def routes(api: Api) -> list[BaseRoute]:
    return [
        Route("/v1/accounts", api.create_account, methods=["POST"]),
        Route("/v1/accounts/{account_id}", api.get_account, methods=["GET"]),
        Route("/v1/accounts/{account_id}", api.patch_account, methods=["PATCH"]),
        Route("/v1/accounts/{account_id}/keys", api.create_key, methods=["POST"]),
        Route("/v1/accounts/{account_id}/keys/{key_id}", api.delete_key, methods=["DELETE"]),
        Route("/v1/accounts/{account_id}/usage", api.usage, methods=["GET"]),
        Route("/v1/accounts/{account_id}/balance", api.balance, methods=["GET"]),
        Route("/v1/traffic", api.post_traffic, methods=["POST"]),
        *([Route("/v1/batches/{batch_id}", batch_lookup(api.ctx.ledger, api.principal, json_response), methods=["GET"])]
          if api.ctx.ledger is not None else []),
        *ops_routes(api.ctx.registry, api.ctx.readiness),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/docs", api.docs, methods=["GET"]),
    ]


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: _problem_handler, IngestError: _problem_handler, HTTPException: _http_exception,
    DependencyUnavailable: _dependency_down,
    Exception: _internal,
}


def build_api(ctx: ApiContext) -> Starlette:
    api = Api(ctx)
    return Starlette(routes=[*routes(api), *ctx.extra_routes], exception_handlers=EXCEPTION_HANDLERS)


def ops_routes(registry: CollectorRegistry, readiness: Sequence[ReadinessCheck]) -> list[BaseRoute]:
    """/healthz, /readyz, /metrics: the same on the API and on the writer/consumer admin port."""

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    checked = Readiness(readiness)  # cached for a second: probes cannot turn into a load on the database

    async def readyz(request: Request) -> Response:
        return await readiness_response(checked)

    async def metrics(request: Request) -> Response:
        # OpenMetrics when the scraper asks for it (Prometheus does): the format that carries exemplars.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]


def build_admin_app(registry: CollectorRegistry, readiness: list[ReadinessCheck],
                    extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """/metrics, /healthz, /readyz for roles that serve no user HTTP (writer, consumer)."""
    return Starlette(routes=[*ops_routes(registry, readiness), *extra_routes], exception_handlers=EXCEPTION_HANDLERS)
