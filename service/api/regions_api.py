"""Billing regions over HTTP: the admin's node -> region map, and usage by region.

Nodes without a mapping bill in the default region (stored as "", shown under the configured
``billing.default_region`` name). A mapping applies to usage counted after it is made."""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.api.context import ApiContext, json_response
from service.api.problems import Problem, invalid, not_found
from service.api.timeparams import format_local
from service.api.usage_body import UsageQuery, counts_json, point_rows, total_json
from service.api.usage_query import MAX_ROWS
from service.config import REGION_NAME
from service.ingest.validate import NODE_ID, NODE_ID_RULE
from service.storage import Repository
from service.storage.regions import DEFAULT, MAX_MAPPED_NODES, UNMAPPED_WINDOW

UNMAPPED_LISTED = 100



def check_region(value: str, field: str = "region") -> str:
    if not re.fullmatch(REGION_NAME, value):
        raise invalid([{"field": field, "detail": "must be 1 to 64 of a-z 0-9 . _ - starting with a letter "
                                                  "or digit"}])
    return value


def stored_region(name: str, default_region: str) -> str:
    """The stored key of a region name: the default region is kept as ""."""
    return DEFAULT if name == default_region else name


def shown_region(stored: str, default_region: str) -> str:
    return default_region if stored == DEFAULT else stored


def parse_regions(names: tuple[str, ...] | list[str], default_region: str) -> list[str]:
    """The repeatable ``region=`` filter as stored keys (at most 100)."""
    if len(names) > 100:
        raise invalid([{"field": "region", "detail": "at most 100 region filters"}])
    return sorted({stored_region(check_region(n), default_region) for n in names})


async def region_bucketed_usage(repo: Repository, account_id: str, bounds: list[int],
                                regions: list[str] | None) -> dict[tuple[int, str], list[int]]:
    """(bucket index, stored region) -> [bytes_in, bytes_out, requests] from the 5-minute region rows."""
    if any(b % 300 for b in bounds):
        raise invalid([{"field": "tz", "detail": "the zone's offset is not a multiple of 5 minutes"}])
    start, end = bounds[0], bounds[-1]
    rows = await repo.region_usage_rows(account_id, start, end, regions or None, MAX_ROWS + 1)
    if len(rows) > MAX_ROWS:
        raise invalid([{"field": "start", "detail": f"the window reads more than {MAX_ROWS} rows of 5-minute region "
                                                    "usage; narrow start/end or filter with region"}])
    sums: dict[tuple[int, str], list[int]] = {}
    for bucket, region, b_in, b_out, reqs in rows:
        key = (bisect_right(bounds, bucket) - 1, region)
        row = sums.setdefault(key, [0, 0, 0])
        row[0] += b_in
        row[1] += b_out
        row[2] += reqs
    return dict(sorted(sums.items()))


async def region_usage_body(repo: Repository, account_id: str, bounds: list[int], step: int, q: UsageQuery,
                            default_region: str) -> dict[str, Any]:
    """The usage body for group_by=region and/or region= filters: JSON only, steps 1h and 1d."""
    if step == 60:
        raise invalid([{"field": "group_by" if q.by_region else "region",
                        "detail": "region usage is kept at 5 minutes: use step 1h or 1d"}])
    names = parse_regions(q.region_names, default_region)
    sums = await region_bucketed_usage(repo, account_id, bounds, names or None)
    body: dict[str, Any] = {"account_id": account_id, "step": {3600: "1h", 86400: "1d"}[step],
                            "timezone": q.zone.key, "start": format_local(bounds[0], q.zone),
                            "end": format_local(bounds[-1], q.zone)}
    if names:
        body["region"] = sorted(shown_region(n, default_region) for n in names)
    if q.by_region:
        series: dict[str, list[tuple[str, list[int]]]] = {}
        for region, ts, v in point_rows(bounds, sums, q.zone):
            series.setdefault(shown_region(region, default_region), []).append((ts, v))
        body["regions"] = [{"region": r, "points": [{"ts": ts, **counts_json(v)} for ts, v in pts],
                            "totals": total_json([v for _, v in pts])} for r, pts in sorted(series.items())]
    else:
        merged: dict[tuple[int, str], list[int]] = {}
        for (i, _), v in sums.items():
            row = merged.setdefault((i, ""), [0, 0, 0])
            for k in range(3):
                row[k] += v[k]
        body["points"] = [{"ts": ts, **counts_json(v)} for _, ts, v in point_rows(bounds, merged, q.zone)]
    body["totals"] = total_json(list(sums.values()))
    return body


def region_routes(ctx: ApiContext) -> list[BaseRoute]:
    repo, admin, default_region = ctx.repo, ctx.admin, ctx.default_region

    async def overview(request: Request) -> Response:
        await admin(request)
        mapping, count, ids = await repo.region_overview(int(time.time()) - UNMAPPED_WINDOW, UNMAPPED_LISTED)
        return json_response({
            "default_region": default_region,
            "regions": [{"region": r, "nodes": nodes} for r, nodes in sorted(mapping.items())],
            "unmapped_nodes": {"count": count, "node_ids": ids,
                               "detail": f"nodes with usage in the last {UNMAPPED_WINDOW // 86400} days and no "
                                         f"region: they bill in {default_region!r}"}})

    def target(request: Request) -> tuple[str, str]:
        region = check_region(request.path_params["region"])
        node = request.path_params["node_id"]
        if not NODE_ID.fullmatch(node):  # ingest's rule: a node it counts can be mapped, no other
            raise invalid([{"field": "node_id", "detail": NODE_ID_RULE}])
        return region, node

    async def put_node(request: Request) -> Response:
        await admin(request)
        region, node = target(request)
        if region == default_region:
            raise invalid([{"field": "region", "detail": f"{region!r} is the default region: nodes without a "
                                                         "mapping bill there; DELETE the node's mapping instead"}])
        if not await repo.set_node_region(node, region):
            raise Problem(409, "Region Map Full", f"the region map holds {MAX_MAPPED_NODES} nodes; remove some first")
        return json_response({"node_id": node, "region": region})

    async def delete_node(request: Request) -> Response:
        await admin(request)
        region, node = target(request)
        if not await repo.unset_node_region(node, region):
            raise not_found("node mapping")
        return Response(status_code=204)

    return [Route("/v1/regions", overview, methods=["GET"]),
            # :path, as ingest allows '/' in node ids; the template (path_format) stays {node_id}.
            Route("/v1/regions/{region}/nodes/{node_id:path}", put_node, methods=["PUT"]),
            Route("/v1/regions/{region}/nodes/{node_id:path}", delete_node, methods=["DELETE"])]
