"""What end-to-end tests compare: usage totals per account, as sent and as the HTTP API reports them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import httpx

from tests.support.meterd import ADMIN_TOKEN

Totals = dict[str, list[int]]  # account id -> [bytes_in, bytes_out, requests]


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def add_records(totals: Totals, records: Iterable[Any]) -> None:
    """Adds TrafficRecord-like objects (account_id, bytes_in, bytes_out, requests) into totals."""
    for r in records:
        row = totals.setdefault(r.account_id, [0, 0, 0])
        row[0] += r.bytes_in
        row[1] += r.bytes_out
        row[2] += r.requests


def stored_usage(api: str, accounts: Iterable[str], start: str, end: str,
                 token: str = ADMIN_TOKEN, step: str = "1h") -> Totals:
    """Totals per account from GET /v1/accounts/{id}/usage over [start, end)."""
    out: Totals = {}
    with httpx.Client(base_url=api, headers={"authorization": f"Bearer {token}"}, timeout=10) as c:
        for acc in accounts:
            t = c.get(f"/v1/accounts/{acc}/usage", params={"start": start, "end": end, "step": step})
            t.raise_for_status()
            tot = t.json()["totals"]
            out[acc] = [tot["bytes_in"], tot["bytes_out"], tot["requests"]]
    return out


def totals_table(expected: Totals, stored: Totals) -> str:
    """Markdown table of both sides, one row per account, for the test log."""
    rows = ["| account | acked bytes_in | stored bytes_in | acked bytes_out | stored bytes_out "
            "| acked requests | stored requests | equal |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for acc in sorted(set(expected) | set(stored)):
        e, s = expected.get(acc, [0, 0, 0]), stored.get(acc, [0, 0, 0])
        rows.append(f"| {acc} | {e[0]} | {s[0]} | {e[1]} | {s[1]} | {e[2]} | {s[2]} | {'yes' if e == s else 'NO'} |")
    return "\n".join(rows)
