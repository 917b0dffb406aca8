"""Closing a billing month: the admin freezes an ended month's bill; GET billing then answers the
stored JSON byte for byte, and records that arrive for it later are shown as a late adjustment
in the first open month after it (they are counted in usage as always)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.context import ApiContext
from service.api.problems import Problem, not_found
from service.api.timeparams import month_bounds, parse_month, parse_zone
from service.storage import Repository

# Parameters that ask for something other than the account's own bill: answered live.
LIVE_ONLY = frozenset({"tz", "mode", "direction", "days", "region", "group_by"})


def month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def previous(key: str) -> str:
    year, month = int(key[:4]), int(key[5:])
    return month_key(year - 1, 12) if month == 1 else month_key(year, month - 1)


async def frozen_bill(repo: Repository, row: dict, params: Mapping[str, str], today: date) -> bytes | None:
    """The stored JSON of a closed month asked for plainly (no tz, mode or region parameters)."""
    if LIVE_ONLY & set(params):
        return None
    key = month_key(*parse_month(params.get("month"), today))
    stored = await repo.closed_period(row["id"], key)
    return None if stored is None else bytes(stored["bill_json"])


async def late_adjustments(repo: Repository, account_id: str, key: str) -> list[dict[str, Any]]:
    """Late records of the closed months right before ``key`` (the first open month after them):
    live totals minus the totals frozen at close, for each month where they differ."""
    out = []
    expected = previous(key)
    for closed in await repo.closed_before(account_id, key):
        if closed["month"] != expected:
            break  # an open month in between got these adjustments
        zone = parse_zone(closed["timezone"], "billing_timezone")
        start, end = month_bounds(int(closed["month"][:4]), int(closed["month"][5:]), zone)
        live = await repo.month_totals(account_id, start, end)
        delta = [live[i] - int(closed[c]) for i, c in enumerate(("bytes_in", "bytes_out", "requests"))]
        if any(delta):
            out.append({"month": closed["month"], "bytes_in": delta[0], "bytes_out": delta[1], "requests": delta[2]})
        expected = previous(expected)
    return out


def period_routes(ctx: ApiContext,
                  bill: Callable[[dict, Mapping[str, str], int], Awaitable[dict[str, Any]]]) -> list[BaseRoute]:
    repo, admin = ctx.repo, ctx.admin

    async def close(request: Request) -> Response:
        await admin(request)
        row = await repo.get_account(request.path_params["account_id"])
        if row is None:
            raise not_found("account")
        key = month_key(*parse_month(request.path_params["month"], date.today()))
        stored = await repo.closed_period(row["id"], key)
        if stored is None:
            body = await bill(row, {"month": key}, int(time.time()))
            if not body["complete"]:
                raise Problem(409, "Month Not Ended", f"{key} has not ended in {body['timezone']}; close it after "
                                                      f"{body['period_end']}")
            totals = [body["bytes_in"], body["bytes_out"], body["requests"]]
            stored = await repo.close_period(row["id"], key, body["timezone"], orjson.dumps(body), totals)
        return Response(bytes(stored["bill_json"]), media_type="application/json")

    return [Route("/v1/accounts/{account_id}/periods/{month}/close", close, methods=["POST"])]
