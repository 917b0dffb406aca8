"""Answers a usage query from the cheapest table: picks the widest rollup whose buckets nest inside
the requested local buckets, refuses queries that would read more than MAX_ROWS rows, and sums the
rows into the local buckets in Python (exact integers, no SQL SUM overflow)."""

from __future__ import annotations

from bisect import bisect_right

from service.api.problems import invalid
from service.storage import Repository

MAX_ROWS = 10_000  # rows one request may read, whatever the table
MAX_NODE_FILTERS = 100
ACCOUNT_WIDTHS = (86400, 3600, 300)  # widest first; 1m steps read the minute table
NODE_WIDTHS = (86400, 3600)


# (bucket index, node_id or "") -> [bytes_in, bytes_out, requests], in key order
Bucketed = dict[tuple[int, str], list[int]]


def pick_width(bounds: list[int], widths: tuple[int, ...]) -> int | None:
    """The widest table width that every boundary is a multiple of (UTC-aligned rollup buckets
    then fall wholly inside one local bucket)."""
    for w in widths:
        if all(b % w == 0 for b in bounds):
            return w
    return None


async def bucketed_usage(repo: Repository, account_id: str, bounds: list[int], step: int, *,
                         by_node: bool, node_ids: list[str]) -> Bucketed:
    nodes = by_node or bool(node_ids)
    if len(node_ids) > MAX_NODE_FILTERS:
        raise invalid([{"field": "node_id", "detail": f"at most {MAX_NODE_FILTERS} node_id filters"}])
    if nodes and step == 60:
        field = "node_id" if node_ids else "group_by"
        raise invalid([{"field": field, "detail": "per-node usage is kept at steps 1h and 1d only"}])
    if step == 60:
        width: int | None = 60
    else:
        width = pick_width(bounds, NODE_WIDTHS if nodes else ACCOUNT_WIDTHS)
    if width is None:
        detail = ("per-node usage needs a zone whose offsets are whole hours" if nodes
                  else "the zone's offset is not a multiple of 5 minutes")
        raise invalid([{"field": "tz", "detail": detail}])
    start, end = bounds[0], bounds[-1]
    rows_per_node = (end - start) // width
    estimate = rows_per_node * (len(set(node_ids)) if node_ids else 1)
    if estimate > MAX_ROWS:
        raise invalid([{"field": "start", "detail":
                        f"the window reads {estimate} rows of {width}-second usage, more than {MAX_ROWS}; "
                        "narrow start/end, use a larger step, or a zone with whole-hour offsets"}])
    rows = await repo.usage_rows(account_id, width, start, end, by_node=nodes, node_ids=node_ids or None,
                                 limit=MAX_ROWS + 1)
    if len(rows) > MAX_ROWS:  # only reachable with group_by=node_id and no filter: nodes x buckets
        raise invalid([{"field": "group_by", "detail":
                        f"more than {MAX_ROWS} node rows in the window; narrow start/end or filter with node_id"}])
    sums: dict[tuple[int, str], list[int]] = {}
    for bucket, node, b_in, b_out, reqs in rows:
        key = (bisect_right(bounds, bucket) - 1, node if by_node else "")
        row = sums.get(key)
        if row is None:
            sums[key] = [b_in, b_out, reqs]
        else:
            row[0] += b_in
            row[1] += b_out
            row[2] += reqs
    return dict(sorted(sums.items()))
