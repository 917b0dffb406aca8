"""POST /v1/accounts/{id}/adjustments (admin): a signed usage delta at a (node, 5-minute interval)
with a reason and an idempotency key, counted once however often it is sent; and the list of a
month's adjustments (their provenance) for whoever may read the account."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.bodies import NodeId, parse_model, read_json
from service.api.context import ApiContext, json_response
from service.api.problems import Problem, invalid, not_found
from service.api.timeparams import format_local, format_rfc3339, month_bounds, parse_month, parse_rfc3339, parse_zone
from service.storage.adjustments import FIELDS, KeyReused, NodeCapReached, WouldGoNegative
from service.storage.repository import new_id

Delta = Annotated[int, Field(ge=-(1 << 62), le=1 << 62, strict=True)]


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idempotency_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    node_id: NodeId
    interval: str = Field(description="RFC 3339 start of the 5-minute interval")
    bytes_in: Delta = 0
    bytes_out: Delta = 0
    requests: Delta = 0
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


def adjustment_json(row: dict, zone_name: str = "UTC") -> dict[str, Any]:
    return {"id": row["id"], "account_id": row["account_id"], "idempotency_key": row["idempotency_key"],
            "node_id": row["node_id"], "interval": format_local(row["bucket"], parse_zone(zone_name)),
            **{f: row[f] for f in FIELDS}, "reason": row["reason"], "source": "admin-adjustment",
            "created_at": format_rfc3339(row["created_at_ms"] / 1000)}


def adjustment_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo, admin, readable_account, node_cap = ctx.repo, ctx.admin, ctx.readable_account, ctx.max_nodes_per_account
    max_body, body_timeout = ctx.max_body_bytes, ctx.body_timeout

    async def create(request: Request) -> Response:
        await admin(request)
        account_id = request.path_params["account_id"]
        body = parse_model(AdjustmentCreate, await read_json(request, max_body, body_timeout))
        bucket = parse_rfc3339(body.interval, "interval")
        if bucket % 300:
            raise invalid([{"field": "interval", "detail": "must start a 5-minute interval (:00, :05, ... :55)"}])
        if not any(getattr(body, f) for f in FIELDS):
            raise invalid([{"field": "bytes_in", "detail": "an adjustment changes at least one of bytes_in, "
                                                           "bytes_out, requests"}])
        if await repo.get_account(account_id) is None:
            raise not_found("account")
        row = {"id": new_id("adj_"), "account_id": account_id, "idempotency_key": body.idempotency_key,
               "node_id": body.node_id, "bucket": bucket, **{f: getattr(body, f) for f in FIELDS},
               "reason": body.reason}
        try:
            stored, applied = await repo.apply_adjustment(row, node_cap)
        except KeyReused as exc:
            raise Problem(409, "Idempotency Key Reused", str(exc)) from None
        except WouldGoNegative as exc:
            raise Problem(409, "Usage Would Go Negative", str(exc)) from None
        except NodeCapReached:  # worded as ingest refuses a new node past the cap
            raise invalid([{"field": "node_id", "detail": f"new node '{body.node_id}' refused: the account would "
                            f"have more than {node_cap} distinct node ids (ingest.max_nodes_per_account)"}]) from None
        return json_response(adjustment_json(stored), 201 if applied else 200)

    async def listing(request: Request) -> Response:
        row = await readable_account(request)
        zone = parse_zone(row["billing_timezone"], "billing_timezone")
        year, month = parse_month(request.query_params.get("month"), datetime.now(zone).date())
        start, end = month_bounds(year, month, zone)
        rows = await repo.adjustments_in(row["id"], start, end)
        return json_response({"account_id": row["id"], "month": f"{year:04d}-{month:02d}",
                              "adjustments": [adjustment_json(r, zone.key) for r in rows]})

    path = "/v1/accounts/{account_id}/adjustments"
    return [Route(path, create, methods=["POST"]), Route(path, listing, methods=["GET"])]
