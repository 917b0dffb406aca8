"""Starlette application: account API, traffic ingestion, health, metrics, docs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from governance import DependencyUnavailable
from governance.problem import MEDIA_TYPE, problem_body, retry_after_seconds
from service.api.adjustments_api import adjustment_routes
from service.api.admin_routes import admin_routes, allowed_methods, refuse_if_deleted
from service.api.batches import batch_lookup
from service.api.billing_api import billing_routes
from service.api.bodies import AccountCreate, AccountPatch, parse_model, read_json
from service.api.export import JSON, export_response, negotiate
from service.api.openapi import DOCS_ASSETS, DOCS_CSP, DOCS_HTML, docs_asset, openapi_document
from service.api.problems import Problem, forbidden, invalid, not_found, problem_response, unauthorized
from service.api.readiness import Readiness, ReadinessCheck
from service.api.regions_api import region_routes, region_usage_body
from service.api.strict_query import StrictQuery
from service.api.timeparams import (
    format_local,
    format_rfc3339,
    month_bounds,
    parse_zone,
    usage_window,
)
from service.api.tokens_api import token_routes
from service.api.traffic_json import parse_traffic
from service.api.usage_body import UsageQuery, point_rows, usage_body
from service.api.usage_query import bucketed_usage
from service.auth import Authenticator, Principal
from service.billing_plan import plan_json
from service.ingest.errors import (
    BatchConflict,
    DependencyDown,
    ForeignRecords,
    IngestError,
    InvalidBatch,
    ReadOnlyCredential,
)
from service.ingest.writer import IngestService
from service.storage import Repository
from service.storage.ledger import Ledger
from service.storage.quota_alerts import PPM, thresholds_ppm
from service.storage.repository import new_id
from service.webhooks import delivery_json, event_body

log = logging.getLogger("meterd.api")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def account_json(row: dict) -> dict:
    return {"id": row["id"], "name": row["name"], "status": row["status"], "quota_bytes": row["quota_bytes"],
            "billing_timezone": row["billing_timezone"],
            "alert_thresholds": [t / PPM for t in thresholds_ppm(row["alert_thresholds"])],
            "webhook_url": row["webhook_url"],
            **({} if row.get("billing_plan") is None else {"billing_plan": orjson.loads(row["billing_plan"])}),
            "created_at": format_rfc3339(row["created_at_ms"] / 1000),
            "updated_at": format_rfc3339(row["updated_at_ms"] / 1000)}


def ingest_problem(exc: IngestError) -> Problem:
    if isinstance(exc, InvalidBatch):
        return Problem(400, "Invalid Batch", exc.detail, slug="invalid-batch",
                       errors=[{"field": v.field, "detail": v.description} for v in exc.violations])
    if isinstance(exc, ForeignRecords):
        return Problem(403, "Forbidden", exc.detail, slug="foreign-records")
    if isinstance(exc, ReadOnlyCredential):
        return Problem(403, "Forbidden", exc.detail, slug="read-only-token")
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
    ledger: Ledger  # batch claims and the log: batch lookup
    auth: Authenticator
    ingest: IngestService | None
    registry: CollectorRegistry
    max_body_bytes: int
    body_timeout: float = 10.0
    readiness: list[ReadinessCheck] = field(default_factory=list)
    extra_routes: Sequence[BaseRoute] = ()
    default_region: str = "default"  # config billing.default_region


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
        row = await self.ctx.repo.create_account(
            body.name, body.quota_bytes, body.status, billing_timezone=body.billing_timezone,
            alert_thresholds=None if body.alert_thresholds is None else orjson.dumps(body.alert_thresholds).decode(),
            webhook_url=body.webhook_url,
            billing_plan=plan_json(body.billing_plan))
        out = account_json(row)
        if row["webhook_secret"]:
            out["webhook_secret"] = row["webhook_secret"]  # shown once; rotate to get a new one
        return json_response(out, 201, {"Location": f"/v1/accounts/{row['id']}"})

    async def get_account(self, request: Request) -> Response:
        return json_response(account_json(await self.readable_account(request)))

    async def patch_account(self, request: Request) -> Response:
        await self.admin(request)
        body = parse_model(AccountPatch, await read_json(request, self.ctx.max_body_bytes, self.ctx.body_timeout))
        changes = body.model_dump(exclude_unset=True)
        account_id = request.path_params["account_id"]
        await refuse_if_deleted(self.ctx.repo.get_account, account_id)
        before = await self.ctx.repo.get_account(account_id) if changes.get("webhook_url") else None
        if "alert_thresholds" in changes and changes["alert_thresholds"] is not None:
            changes["alert_thresholds"] = orjson.dumps(changes["alert_thresholds"]).decode()
        if "billing_plan" in changes:
            changes["billing_plan"] = plan_json(body.billing_plan)
        row = (await self.ctx.repo.update_account(account_id, changes) if changes
               else await self.ctx.repo.get_account(account_id))
        if row is None:
            raise not_found("account")
        if self.ctx.ingest is not None:
            self.ctx.ingest.accounts.invalidate(account_id)
        out = account_json(row)
        url_changed = before is not None and before["webhook_url"] != row["webhook_url"]
        if row["webhook_url"] and (not row["webhook_secret"] or url_changed):
            # A new URL gets a new signing secret at once (the old receiver knows the old one),
            # shown in this response only.
            out["webhook_secret"] = await self.ctx.repo.rotate_webhook_secret(account_id, overlap=False)
        return json_response(out)

    async def rotate_webhook_secret(self, request: Request) -> Response:
        await self.admin(request)
        secret = await self.ctx.repo.rotate_webhook_secret(request.path_params["account_id"])
        if secret is None:
            raise not_found("account")
        return json_response({"webhook_secret": secret})

    async def events(self, request: Request) -> Response:
        row = await self.readable_account(request)
        raw = request.query_params.get("limit", "100")
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise invalid([{"field": "limit", "detail": "must be an integer from 1 to 500"}])
        rows = await self.ctx.repo.list_events(row["id"], int(raw))
        return json_response({"account_id": row["id"],
                              "events": [{**event_body(r), "delivery": delivery_json(r)} for r in rows]})

    async def redeliver(self, request: Request) -> Response:
        await self.admin(request)
        account_id, event_id = request.path_params["account_id"], request.path_params["event_id"]
        outcome = await self.ctx.repo.redeliver(account_id, event_id)
        if outcome == "no_event":
            raise not_found("event")
        if outcome == "no_webhook_url":
            raise Problem(409, "Conflict", "the account has no webhook_url to deliver to")
        (row,) = await self.ctx.repo.list_events(account_id, 1, event_id=event_id)
        return json_response({**event_body(row), "delivery": delivery_json(row)}, 202)

    async def create_key(self, request: Request) -> Response:
        await self.admin(request)
        account_id = request.path_params["account_id"]
        await refuse_if_deleted(self.ctx.repo.get_account, account_id)
        key = await self.ctx.repo.create_key(account_id)
        return json_response({"id": key["id"], "prefix": key["prefix"], "key": key["key"],
                              "account_id": account_id,
                              "created_at": format_rfc3339(key["created_at_ms"] / 1000)}, 201)

    async def delete_key(self, request: Request) -> Response:
        await self.admin(request)
        if not await self.ctx.repo.revoke_key(request.path_params["account_id"], request.path_params["key_id"]):
            raise not_found("key")
        self.ctx.auth.forget_account(request.path_params["account_id"])
        return Response(status_code=204)

    async def usage(self, request: Request) -> Response:
        row = await self.readable_account(request)
        media = negotiate(request.headers.get("accept"))
        query = UsageQuery.parse(request.query_params)
        bounds, step_name, step = usage_window(dict(request.query_params), int(time.time()), query.zone)
        if query.regional:
            if media != JSON:
                raise Problem(406, "Not Acceptable", "usage by region is JSON only")
            return json_response(await region_usage_body(self.ctx.repo, row["id"], bounds, step, query,
                                                         self.ctx.default_region))
        sums = await bucketed_usage(self.ctx.repo, row["id"], bounds, step, by_node=query.by_node,
                                    node_ids=query.node_ids)
        if media != JSON:
            # By node, rows come out node by node (each node's buckets in time order).
            rows = sorted(point_rows(bounds, sums, query.zone), key=lambda r: r[0]) if query.by_node \
                else point_rows(bounds, sums, query.zone)
            return export_response(media, rows, query.by_node)
        return json_response(usage_body(row["id"], step_name, bounds, sums, query))

    async def balance(self, request: Request) -> Response:
        row = await self.readable_account(request)
        zone = parse_zone(row["billing_timezone"], "billing_timezone")
        today = datetime.now(zone).date()
        start, end = month_bounds(today.year, today.month, zone)
        used = await self.ctx.repo.bytes_used(row["id"], start, end)
        quota = row["quota_bytes"]
        return json_response({
            "account_id": row["id"], "timezone": zone.key, "period_start": format_local(start, zone),
            "period_end": format_local(end, zone), "quota_bytes": quota, "used_bytes": used,
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
        return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP})

    async def docs_asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        body = docs_asset(name)
        if body is None:
            raise not_found("file")
        media = "text/javascript; charset=utf-8" if name == "init.js" else DOCS_ASSETS[name]
        return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=86400"})


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
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the first matching route's methods only
        headers["Allow"] = allowed_methods(request)
    return problem_response(Problem(exc.status_code, title, str(exc.detail), headers=headers), request.url.path)


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
        *billing_routes(api.ctx.repo, api.readable_account, api.admin, json_response, api.ctx.default_region),
        *adjustment_routes(api.ctx.repo, api.admin, api.readable_account, json_response, api.ctx.max_body_bytes,
                           api.ctx.body_timeout, new_id),
        Route("/v1/accounts/{account_id}/events", api.events, methods=["GET"]),
        Route("/v1/accounts/{account_id}/webhook-secret", api.rotate_webhook_secret, methods=["POST"]),
        Route("/v1/accounts/{account_id}/events/{event_id}/redeliver", api.redeliver, methods=["POST"]),
        *admin_routes(api, account_json, json_response),
        Route("/v1/traffic", api.post_traffic, methods=["POST"]),
        Route("/v1/batches/{batch_id}", batch_lookup(api.ctx.ledger, api.principal, json_response), methods=["GET"]),
        *region_routes(api.ctx.repo, api.admin, api.ctx.default_region, json_response),
        *token_routes(api.ctx.repo, api.ctx.auth, api.principal, json_response, api.ctx.max_body_bytes,
                      api.ctx.body_timeout),
        *ops_routes(api.ctx.registry, api.ctx.readiness),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/docs", api.docs, methods=["GET"]),
        Route("/docs/{asset}", api.docs_asset, methods=["GET"]),
    ]


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: _problem_handler, IngestError: _problem_handler, HTTPException: _http_exception,
    DependencyUnavailable: _dependency_down,
    Exception: _internal,
}


def build_api(ctx: ApiContext) -> Starlette:
    api = Api(ctx)
    return Starlette(routes=[*routes(api), *ctx.extra_routes], exception_handlers=EXCEPTION_HANDLERS,
                     middleware=[Middleware(StrictQuery)])


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
