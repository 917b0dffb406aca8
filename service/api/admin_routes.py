"""Admin listing and management: GET /v1/accounts (cursor pages), an account's keys, deletion."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.accounts import account_json
from service.api.context import ApiContext, json_response
from service.api.problems import invalid, not_found
from service.api.timeparams import format_rfc3339

STATUSES = ("active", "suspended", "deleted")
MAX_PAGE = 500
MAX_NAME_FILTER = 200


def encode_cursor(account_id: str) -> str:
    return base64.urlsafe_b64encode(account_id.encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> str:
    try:
        value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode() if raw.isascii() else ""
    except (binascii.Error, UnicodeDecodeError):
        value = ""
    if not value.startswith("acc_") or len(value) > 40:
        raise invalid([{"field": "cursor", "detail": "must be a next_cursor value from a previous page"}])
    return value


def page_limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise invalid([{"field": "limit", "detail": f"must be an integer from 1 to {MAX_PAGE}"}])
    return int(raw)


def key_json(row: dict) -> dict:
    def ts(ms: int | None) -> str | None:
        return None if ms is None else format_rfc3339(ms / 1000)

    return {"id": row["id"], "prefix": row["prefix"], "created_at": ts(row["created_at_ms"]),
            "last_used_at": ts(row["last_used_at_ms"]), "revoked_at": ts(row["revoked_at_ms"])}


def admin_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo = ctx.repo

    async def list_accounts(request: Request) -> Response:
        await ctx.admin(request)
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in STATUSES:
            raise invalid([{"field": "status", "detail": f"must be one of {', '.join(STATUSES)}"}])
        name = params.get("name")
        if name is not None and not 1 <= len(name) <= MAX_NAME_FILTER:
            raise invalid([{"field": "name", "detail": f"must be 1 to {MAX_NAME_FILTER} characters"}])
        limit = page_limit(params.get("limit"))
        after = decode_cursor(params["cursor"]) if "cursor" in params else None
        rows = await repo.list_accounts(limit + 1, after, status=status, name=name)
        more = len(rows) > limit
        rows = rows[:limit]
        return json_response({"accounts": [account_json(r) for r in rows],
                              "next_cursor": encode_cursor(rows[-1]["id"]) if more else None})

    async def list_keys(request: Request) -> Response:
        await ctx.admin(request)
        account_id = request.path_params["account_id"]
        if await repo.get_account(account_id) is None:
            raise not_found("account")
        keys = await repo.list_keys(account_id)
        return json_response({"account_id": account_id, "keys": [key_json(k) for k in keys]})

    async def delete_account(request: Request) -> Response:
        await ctx.admin(request)
        account_id = request.path_params["account_id"]
        if not await repo.delete_account(account_id):
            raise not_found("account")
        ctx.auth.forget_account(account_id)  # its keys stop here at once, elsewhere within 1 s
        if ctx.ingest is not None:
            ctx.ingest.accounts.invalidate(account_id)
        return Response(status_code=204)

    return [Route("/v1/accounts", list_accounts, methods=["GET"]),
            Route("/v1/accounts/{account_id}", delete_account, methods=["DELETE"]),
            Route("/v1/accounts/{account_id}/keys", list_keys, methods=["GET"])]
