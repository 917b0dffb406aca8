"""The usage endpoint's own parameters (tz, group_by, node_id) and its JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from starlette.datastructures import QueryParams

from service.api.problems import invalid
from service.api.timeparams import format_local, parse_zone
from service.api.usage_query import Bucketed

MAX_NODE_ID = 128  # the ingest limit on node_id


@dataclass(frozen=True)
class UsageQuery:
    zone: ZoneInfo
    by_node: bool
    node_ids: list[str]
    by_region: bool = False  # group_by=region (service.api.regions_api)
    region_names: tuple[str, ...] = ()  # region= filters

    @property
    def regional(self) -> bool:
        return self.by_region or bool(self.region_names)

    @classmethod
    def parse(cls, params: QueryParams) -> UsageQuery:
        group_by = params.get("group_by")
        if group_by not in (None, "node_id", "region"):
            raise invalid([{"field": "group_by", "detail": "must be node_id or region"}])
        node_ids = params.getlist("node_id")
        for n in node_ids:
            # Control characters cannot be in a stored node id (and NUL fails a PostgreSQL query).
            if not n or len(n) > MAX_NODE_ID or not n.isprintable():
                raise invalid([{"field": "node_id",
                                "detail": f"must be 1 to {MAX_NODE_ID} printable characters"}])
        regions = tuple(params.getlist("region"))
        if (group_by == "region" or regions) and (group_by == "node_id" or node_ids):
            raise invalid([{"field": "region", "detail": "regions and nodes cannot be combined in one query"}])
        return cls(parse_zone(params.get("tz")), group_by == "node_id", sorted(set(node_ids)),
                   group_by == "region", regions)


def counts_json(v: list[int]) -> dict[str, int]:
    return {"bytes_in": v[0], "bytes_out": v[1], "requests": v[2]}


def total_json(values: list[list[int]]) -> dict[str, int]:
    return counts_json([sum(v[i] for v in values) for i in range(3)])


def point_rows(bounds: list[int], sums: Bucketed, zone: ZoneInfo) -> list[tuple[str, str, list[int]]]:
    """(node_id or "", local RFC 3339 bucket start, counts) in bucket order: shared by JSON and export."""
    return [(node, format_local(bounds[i], zone), v) for (i, node), v in sums.items()]


def usage_body(account_id: str, step_name: str, bounds: list[int], sums: Bucketed, q: UsageQuery) -> dict[str, Any]:
    body: dict[str, Any] = {"account_id": account_id, "step": step_name, "timezone": q.zone.key,
                            "start": format_local(bounds[0], q.zone), "end": format_local(bounds[-1], q.zone)}
    if q.node_ids:
        body["node_id"] = q.node_ids
    if q.by_node:
        series: dict[str, list[tuple[str, list[int]]]] = {}
        for node, ts, v in point_rows(bounds, sums, q.zone):
            series.setdefault(node, []).append((ts, v))
        body["series"] = [{"node_id": node, "points": [{"ts": ts, **counts_json(v)} for ts, v in pts],
                           "totals": total_json([v for _, v in pts])} for node, pts in sorted(series.items())]
    else:
        body["points"] = [{"ts": ts, **counts_json(v)} for _, ts, v in point_rows(bounds, sums, q.zone)]
    body["totals"] = total_json(list(sums.values()))
    return body
