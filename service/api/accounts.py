"""Accounts: create, read, change, keys, the event log and its webhook (list and delete: admin_routes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.bodies import AccountCreate, AccountPatch, parse_model, read_json
from service.api.context import ApiContext, json_response
from service.api.problems import Problem, invalid, not_found
from service.api.timeparams import format_rfc3339
from service.billing_plan import plan_json
from service.storage.quota_alerts import PPM, thresholds_ppm
from service.webhooks import delivery_json, event_body


def account_json(row: dict) -> dict:
    return {"id": row["id"], "name": row["name"], "status": row["status"], "quota_bytes": row["quota_bytes"],
            "billing_timezone": row["billing_timezone"],
            "alert_thresholds": [t / PPM for t in thresholds_ppm(row["alert_thresholds"])],
            "webhook_url": row["webhook_url"],
            **({} if row.get("billing_plan") is None else {"billing_plan": orjson.loads(row["billing_plan"])}),
            "created_at": format_rfc3339(row["created_at_ms"] / 1000),
            "updated_at": format_rfc3339(row["updated_at_ms"] / 1000)}


async def refuse_if_deleted(get_account: Callable[[str], Awaitable[dict | None]], account_id: str) -> dict:
    """A deleted account keeps its usage for reading but cannot be changed or given keys again."""
    row = await get_account(account_id)
    if row is None:
        raise not_found("account")
    if row["status"] == "deleted":
        raise Problem(409, "Conflict", "the account is deleted: its usage stays readable, it cannot change")
    return row


def account_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo = ctx.repo

    async def create_account(request: Request) -> Response:
        await ctx.admin(request)
        body = parse_model(AccountCreate, await read_json(request, ctx.max_body_bytes, ctx.body_timeout))
        row = await repo.create_account(
            body.name, body.quota_bytes, body.status, billing_timezone=body.billing_timezone,
            alert_thresholds=None if body.alert_thresholds is None else orjson.dumps(body.alert_thresholds).decode(),
            webhook_url=body.webhook_url,
            billing_plan=plan_json(body.billing_plan))
        out = account_json(row)
        if row["webhook_secret"]:
            out["webhook_secret"] = row["webhook_secret"]  # shown once; rotate to get a new one
        return json_response(out, 201, {"Location": f"/v1/accounts/{row['id']}"})

    async def get_account(request: Request) -> Response:
        return json_response(account_json(await ctx.readable_account(request)))

    async def patch_account(request: Request) -> Response:
        await ctx.admin(request)
        body = parse_model(AccountPatch, await read_json(request, ctx.max_body_bytes, ctx.body_timeout))
        changes = body.model_dump(exclude_unset=True)
        account_id = request.path_params["account_id"]
        await refuse_if_deleted(repo.get_account, account_id)
        before = await repo.get_account(account_id) if changes.get("webhook_url") else None
        if "alert_thresholds" in changes and changes["alert_thresholds"] is not None:
            changes["alert_thresholds"] = orjson.dumps(changes["alert_thresholds"]).decode()
        if "billing_plan" in changes:
            changes["billing_plan"] = plan_json(body.billing_plan)
        row = await repo.update_account(account_id, changes) if changes else await repo.get_account(account_id)
        if row is None:
            raise not_found("account")
        if ctx.ingest is not None:
            ctx.ingest.accounts.invalidate(account_id)
        out = account_json(row)
        url_changed = before is not None and before["webhook_url"] != row["webhook_url"]
        if row["webhook_url"] and (not row["webhook_secret"] or url_changed):
            # A new URL gets a new signing secret at once (the old receiver knows the old one),
            # shown in this response only.
            out["webhook_secret"] = await repo.rotate_webhook_secret(account_id, overlap=False)
        return json_response(out)

    return [
        Route("/v1/accounts", create_account, methods=["POST"]),
        Route("/v1/accounts/{account_id}", get_account, methods=["GET"]),
        Route("/v1/accounts/{account_id}", patch_account, methods=["PATCH"]),
    ]


def event_routes(ctx: ApiContext) -> list[BaseRoute]:
    """An account's event log (quota crossings), redelivered to its webhook on request."""
    repo = ctx.repo

    async def events(request: Request) -> Response:
        row = await ctx.readable_account(request)
        raw = request.query_params.get("limit", "100")
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 500:
            raise invalid([{"field": "limit", "detail": "must be an integer from 1 to 500"}])
        rows = await repo.list_events(row["id"], int(raw))
        return json_response({"account_id": row["id"],
                              "events": [{**event_body(r), "delivery": delivery_json(r)} for r in rows]})

    async def redeliver(request: Request) -> Response:
        await ctx.admin(request)
        account_id, event_id = request.path_params["account_id"], request.path_params["event_id"]
        outcome = await repo.redeliver(account_id, event_id)
        if outcome == "no_event":
            raise not_found("event")
        if outcome == "no_webhook_url":
            raise Problem(409, "Conflict", "the account has no webhook_url to deliver to")
        (row,) = await repo.list_events(account_id, 1, event_id=event_id)
        return json_response({**event_body(row), "delivery": delivery_json(row)}, 202)

    return [
        Route("/v1/accounts/{account_id}/events", events, methods=["GET"]),
        Route("/v1/accounts/{account_id}/events/{event_id}/redeliver", redeliver, methods=["POST"]),
    ]


def secret_routes(ctx: ApiContext) -> list[BaseRoute]:
    """What authenticates to or for an account: its API keys and its webhook signing secret."""
    repo = ctx.repo

    async def create_key(request: Request) -> Response:
        await ctx.admin(request)
        account_id = request.path_params["account_id"]
        await refuse_if_deleted(repo.get_account, account_id)
        key = await repo.create_key(account_id)
        return json_response({"id": key["id"], "prefix": key["prefix"], "key": key["key"],
                              "account_id": account_id,
                              "created_at": format_rfc3339(key["created_at_ms"] / 1000)}, 201)


    async def delete_key(request: Request) -> Response:
        await ctx.admin(request)
        if not await repo.revoke_key(request.path_params["account_id"], request.path_params["key_id"]):
            raise not_found("key")
        ctx.auth.forget_account(request.path_params["account_id"])
        return Response(status_code=204)


    async def rotate_webhook_secret(request: Request) -> Response:
        await ctx.admin(request)
        secret = await repo.rotate_webhook_secret(request.path_params["account_id"])
        if secret is None:
            raise not_found("account")
        return json_response({"webhook_secret": secret})

    return [
        Route("/v1/accounts/{account_id}/keys", create_key, methods=["POST"]),
        Route("/v1/accounts/{account_id}/keys/{key_id}", delete_key, methods=["DELETE"]),
        Route("/v1/accounts/{account_id}/webhook-secret", rotate_webhook_secret, methods=["POST"]),
    ]
