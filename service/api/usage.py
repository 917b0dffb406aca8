"""An account's usage (bucketed, by node or region, JSON/CSV/NDJSON) and its balance this month."""

from __future__ import annotations

import time
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.context import ApiContext, json_response
from service.api.export import JSON, export_response, negotiate
from service.api.problems import Problem
from service.api.regions_api import region_usage_body
from service.api.timeparams import format_local, month_bounds, parse_zone, usage_window
from service.api.usage_body import UsageQuery, point_rows, usage_body
from service.api.usage_query import bucketed_usage


def usage_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo = ctx.repo

    async def usage(request: Request) -> Response:
        row = await ctx.readable_account(request)
        media = negotiate(request.headers.get("accept"))
        query = UsageQuery.parse(request.query_params)
        bounds, step_name, step = usage_window(dict(request.query_params), int(time.time()), query.zone)
        if query.regional:
            if media != JSON:
                raise Problem(406, "Not Acceptable", "usage by region is JSON only")
            return json_response(await region_usage_body(repo, row["id"], bounds, step, query, ctx.default_region))
        sums = await bucketed_usage(repo, row["id"], bounds, step, by_node=query.by_node, node_ids=query.node_ids)
        if media != JSON:
            # By node, rows come out node by node (each node's buckets in time order).
            rows = sorted(point_rows(bounds, sums, query.zone), key=lambda r: r[0]) if query.by_node \
                else point_rows(bounds, sums, query.zone)
            return export_response(media, rows, query.by_node)
        return json_response(usage_body(row["id"], step_name, bounds, sums, query))

    async def balance(request: Request) -> Response:
        row = await ctx.readable_account(request)
        zone = parse_zone(row["billing_timezone"], "billing_timezone")
        today = datetime.now(zone).date()
        start, end = month_bounds(today.year, today.month, zone)
        used = await repo.bytes_used(row["id"], start, end)
        quota = row["quota_bytes"]
        return json_response({
            "account_id": row["id"], "timezone": zone.key, "period_start": format_local(start, zone),
            "period_end": format_local(end, zone), "quota_bytes": quota, "used_bytes": used,
            "remaining_bytes": None if quota is None else max(0, quota - used),
            "over_quota": quota is not None and used > quota})

    return [Route("/v1/accounts/{account_id}/usage", usage, methods=["GET"]),
            Route("/v1/accounts/{account_id}/balance", balance, methods=["GET"])]
