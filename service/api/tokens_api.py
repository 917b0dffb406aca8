"""Read-only customer tokens over HTTP: the admin or the account's own key issues, lists and
revokes tokens that read one account (a portal or dashboard) and can write nothing."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.bodies import parse_model, read_body
from service.api.context import ApiContext, json_response
from service.api.problems import Problem, forbidden, not_found
from service.api.timeparams import format_rfc3339
from service.storage.read_tokens import MAX_ACTIVE_PER_ACCOUNT

DAY = 86400
MAX_TTL = 30 * DAY


class ReadTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_TTL, strict=True)] = DAY


def token_json(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "prefix": row["prefix"], "account_id": row["account_id"], "read_only": True,
            "created_at": format_rfc3339(row["created_at_ms"] / 1000),
            "expires_at": format_rfc3339(row["expires_at_ms"] / 1000)}


def token_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo, auth, principal = ctx.repo, ctx.auth, ctx.principal
    max_body, body_timeout = ctx.max_body_bytes, ctx.body_timeout

    async def issuer(request: Request) -> str:
        """The account id, for the admin or the account's own API key; 404 for another account."""
        p = await principal(request)
        if p.read_only:
            raise forbidden("a read-only token cannot issue, list or revoke tokens")
        account_id = request.path_params["account_id"]
        if not p.may_read(account_id) or await repo.get_account(account_id) is None:
            raise not_found("account")
        return account_id

    async def create(request: Request) -> Response:
        account_id = await issuer(request)
        raw = await read_body(request, max_body, body_timeout)
        try:
            data = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise Problem(400, "Malformed JSON", f"the body is not valid JSON: {exc}", slug="malformed-json") from None
        body = parse_model(ReadTokenCreate, data)
        row = await repo.create_read_token(account_id, body.ttl_seconds * 1000)
        if row is None:
            raise Problem(409, "Too Many Tokens", f"the account holds {MAX_ACTIVE_PER_ACCOUNT} live read-only "
                                                  "tokens; revoke some first")
        return json_response({**token_json(row), "token": row["token"]}, 201,
                             {"Location": f"/v1/accounts/{account_id}/read-tokens/{row['id']}"})

    async def listing(request: Request) -> Response:
        account_id = await issuer(request)
        rows = await repo.list_read_tokens(account_id)
        return json_response({"account_id": account_id, "tokens": [token_json(r) for r in rows]})

    async def revoke(request: Request) -> Response:
        account_id = await issuer(request)
        if not await repo.revoke_read_token(account_id, request.path_params["token_id"]):
            raise not_found("token")
        auth.forget_account(account_id)  # stops at once here; other processes within the cache's second
        return Response(status_code=204)

    base = "/v1/accounts/{account_id}/read-tokens"
    return [Route(base, create, methods=["POST"]), Route(base, listing, methods=["GET"]),
            Route(base + "/{token_id}", revoke, methods=["DELETE"])]
