"""Usage as CSV or NDJSON, chosen by the Accept header (JSON stays the default)."""

from __future__ import annotations

import csv
import io

import orjson
from starlette.responses import Response

from service.api.problems import Problem

JSON, CSV, NDJSON = "application/json", "text/csv", "application/x-ndjson"
_WILDCARDS = {"*/*": JSON, "application/*": JSON, "text/*": CSV}


def negotiate(accept: str | None) -> str:
    """The supported type the client weights highest (ties: the order listed); 406 if none fits."""
    if not accept:
        return JSON
    best, best_q = None, 0.0
    for part in accept.split(",")[:32]:
        fields = part.split(";")
        media = fields[0].strip().lower()
        q = 1.0
        for f in fields[1:]:
            name, _, value = f.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        chosen = media if media in (JSON, CSV, NDJSON) else _WILDCARDS.get(media)
        if chosen and q > best_q:
            best, best_q = chosen, q
    if best is None:
        raise Problem(406, "Not Acceptable", f"usage is available as {JSON}, {CSV} or {NDJSON}")
    return best


# A spreadsheet runs a cell starting with one of these as a formula; node ids come from account
# keys, so such a cell is prefixed with ' (OWASP's CSV-injection advice) and shows as text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def export_response(media: str, rows: list[tuple[str, str, list[int]]], by_node: bool) -> Response:
    """``rows`` are (node_id or "", RFC 3339 bucket start, [bytes_in, bytes_out, requests])."""
    head = ["node_id"] if by_node else []
    if media == CSV:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180 line ends
        w.writerow([*head, "ts", "bytes_in", "bytes_out", "requests"])
        for node, ts, v in rows:
            w.writerow([*([csv_text(node)] if by_node else []), ts, *v])
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="usage.csv"'})
    lines = [orjson.dumps({**({"node_id": node} if by_node else {}), "ts": ts, "bytes_in": v[0],
                           "bytes_out": v[1], "requests": v[2]}) for node, ts, v in rows]
    return Response(b"".join(line + b"\n" for line in lines), media_type=NDJSON)
