"""Rollups, time zones and the per-node breakdown through the real pipeline and HTTP API, on SQLite
and on PostgreSQL: every answer is compared with sums computed here from the records sent."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.api.schemas import Account, Balance, Usage
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import iso, ms, rec, send, stack, totals, utc
from tests.support.meterd import wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]  # the module-scoped fixture, one meterd per backend

DAY0 = utc(2026, 9, 1)


def expected_buckets(records: list[dict], starts: list[datetime], by_node: bool = False) -> dict:
    """Independent bucketing: each record goes to the last bucket start at or before it."""
    out: dict = defaultdict(lambda: [0, 0, 0])
    stamps = [int(s.timestamp() * 1000) for s in starts]
    for r in records:
        i = max(j for j, s in enumerate(stamps) if s <= r["timestamp_ms"])
        key = (r["node_id"], starts[i].isoformat()) if by_node else starts[i].isoformat()
        for n, f in enumerate(("bytes_in", "bytes_out", "requests")):
            out[key][n] += r[f]
    return dict(out)


def got_points(points: list[dict]) -> dict:
    return {datetime.fromisoformat(p["ts"].replace("Z", "+00:00")).isoformat():
            [p["bytes_in"], p["bytes_out"], p["requests"]] for p in points}


@pytest.fixture(scope="module")
def three_days(stack: Meterd) -> tuple[str, list[dict]]:
    """One account, four nodes, random traffic over 3 UTC days of last September."""
    acc, _ = stack.new_account("rollups")
    rng = random.Random(20)
    records = [rec(acc, ms(DAY0) + rng.randrange(3 * 86400 * 1000), rng.choice(["n1", "n2", "n3", "edge-x"]),
                   rng.randrange(10**6), rng.randrange(10**6), rng.randrange(1, 50)) for _ in range(3000)]
    send(stack, records)
    stack.wait_totals(acc, totals(records), start=iso(DAY0), end=iso(DAY0 + timedelta(days=3)), step="1d")
    return acc, records


@pytest.mark.parametrize("step", ["1m", "1h", "1d"])
def test_steps_agree_with_records(stack: Meterd, three_days: tuple[str, list[dict]], step: str) -> None:
    acc, records = three_days
    width = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}[step]
    end = DAY0 + timedelta(days=3) if step != "1m" else DAY0 + timedelta(hours=12)
    starts = [DAY0 + width * i for i in range(int((end - DAY0) / width))]
    subset = [r for r in records if r["timestamp_ms"] < ms(end)]
    body = stack.usage(acc, start=iso(DAY0), end=iso(end), step=step)
    assert got_points(body["points"]) == expected_buckets(subset, starts)
    assert body["totals"] == totals(subset)
    assert body["timezone"] == "UTC" and body["start"] == "2026-09-01T00:00:00Z"


def test_group_by_node_and_filters(stack: Meterd, three_days: tuple[str, list[dict]]) -> None:
    acc, records = three_days
    starts = [DAY0 + timedelta(hours=i) for i in range(72)]
    params = {"start": iso(DAY0), "end": iso(DAY0 + timedelta(days=3)), "step": "1h"}
    body = stack.usage(acc, **params, group_by="node_id")
    Usage.model_validate(body)  # what /openapi.json documents, with no undocumented field
    assert [s["node_id"] for s in body["series"]] == ["edge-x", "n1", "n2", "n3"]
    want = expected_buckets(records, starts, by_node=True)
    for s in body["series"]:
        mine = [r for r in records if r["node_id"] == s["node_id"]]
        assert got_points(s["points"]) == {ts: v for (n, ts), v in want.items() if n == s["node_id"]}
        assert s["totals"] == totals(mine)
    assert body["totals"] == totals(records)

    resp = stack.admin.get(f"/v1/accounts/{acc}/usage", params=[*params.items(), ("node_id", "n1"),
                                                                  ("node_id", "n3"), ("step", "1d")])
    assert resp.status_code == 200, resp.text
    picked = [r for r in records if r["node_id"] in ("n1", "n3")]
    assert resp.json()["node_id"] == ["n1", "n3"]
    assert resp.json()["totals"] == totals(picked)
    assert got_points(resp.json()["points"]) == expected_buckets(picked, [DAY0 + timedelta(days=i)
                                                                         for i in range(3)])


def _tz_records(acc: str, stamps: list[datetime]) -> list[dict]:
    return [rec(acc, ms(t), "n1", 10 ** i, 1, 1) for i, t in enumerate(stamps)]


@pytest.mark.parametrize(("zone", "stamps"), [
    # Shanghai midnight is 16:00Z: 15:59Z and 16:00Z fall on different local days.
    ("Asia/Shanghai", [utc(2026, 10, 5, 15, 59), utc(2026, 10, 5, 16, 0), utc(2026, 10, 6, 3)]),
    # New York leaves DST on 2026-11-01: that local day is 25 hours, 04:00Z to 05:00Z next day.
    ("America/New_York", [utc(2026, 11, 1, 3, 59), utc(2026, 11, 1, 4), utc(2026, 11, 2, 4, 59),
                          utc(2026, 11, 2, 5)]),
    # +05:30: local days start at 18:30Z and are read from the 5-minute rollup.
    ("Asia/Kolkata", [utc(2026, 10, 5, 18, 29), utc(2026, 10, 5, 18, 30), utc(2026, 10, 6, 18, 29)]),
])
def test_local_day_buckets(stack: Meterd, zone: str, stamps: list[datetime]) -> None:
    acc, _ = stack.new_account(f"tz-{zone}")
    records = _tz_records(acc, stamps)
    send(stack, records)
    z = ZoneInfo(zone)
    first = stamps[0].astimezone(z) - timedelta(days=1)
    days = (stamps[-1].astimezone(z).date() - first.date()).days + 2
    starts = [datetime.combine(first.date() + timedelta(days=i), datetime.min.time(), z) for i in range(days + 1)]
    params = {"start": starts[0].isoformat(), "end": starts[-1].isoformat(), "step": "1d", "tz": zone}
    stack.wait_totals(acc, totals(records), **params)
    body = stack.usage(acc, **params)
    assert got_points(body["points"]) == expected_buckets(records, starts[:-1])
    assert [p["ts"] for p in body["points"]] == sorted({starts[max(j for j, s in enumerate(starts[:-1])
                                                                   if s <= t)].isoformat() for t in stamps})
    assert body["timezone"] == zone and body["start"] == starts[0].isoformat()
    Usage.model_validate(body)


def test_dst_day_has_25_hourly_points(stack: Meterd) -> None:
    acc, _ = stack.new_account("dst-hours")
    z = ZoneInfo("America/New_York")
    day = datetime(2026, 11, 1, tzinfo=z)
    stamps = [utc(2026, 11, 1, 4) + timedelta(hours=h, minutes=30) for h in range(25)]
    records = _tz_records(acc, stamps)
    for r in records:
        r["bytes_in"] = 7
    send(stack, records)
    params = {"start": day.isoformat(), "end": datetime(2026, 11, 2, tzinfo=z).isoformat(), "step": "1h",
              "tz": "America/New_York"}
    body = stack.wait_totals(acc, totals(records), **params)
    ts = [p["ts"] for p in body["points"]]
    assert len(ts) == 25
    assert ts[:3] == ["2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]
    assert ts[-1] == "2026-11-01T23:00:00-05:00"
    spring = stack.usage(acc, start="2026-03-08T00:00:00-05:00", end="2026-03-09T00:00:00-04:00", step="1h",
                         tz="America/New_York")
    assert spring["points"] == [] and spring["end"] == "2026-03-09T00:00:00-04:00"


@pytest.mark.parametrize(("params", "field"), [
    ({"tz": "Mars/Olympus"}, "tz"),
    ({"tz": "../../etc/passwd"}, "tz"),
    ({"tz": "localtime"}, "tz"),
    ({"group_by": "account"}, "group_by"),
    ({"group_by": "node_id", "step": "1m"}, "group_by"),
    ({"node_id": "n1", "step": "1m"}, "node_id"),
    ({"node_id": "x" * 129, "step": "1h"}, "node_id"),
    ({"node_id": "edge\x00one", "step": "1h"}, "node_id"),  # NUL fails a PostgreSQL query
    # Out-of-range local times at step=1m (N16): the boundaries are fine, the local offset is not.
    ({"start": "0001-01-01T00:00:00Z", "end": "0001-01-01T01:00:00Z", "tz": "America/New_York"}, "start"),
    ({"start": "9999-12-31T22:00:00Z", "end": "9999-12-31T23:00:00Z", "tz": "Asia/Tokyo"}, "start"),
    ({"group_by": "node_id", "step": "1h", "tz": "Asia/Kolkata"}, "tz"),
    # 20 years of local days in a non-UTC zone reads hourly rows: far past the row limit.
    ({"start": "2006-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "step": "1d", "tz": "Asia/Shanghai"}, "start"),
    # +05:30 reads 5-minute rows: 60 days of them is 17,280.
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-03-02T00:00:00Z", "step": "1d", "tz": "Asia/Kolkata"}, "start"),
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-05-01T00:00:00Z", "step": "1h",
      "node_id": ["a", "b", "c", "d"]}, "start"),
])
def test_bad_parameters_name_the_field(stack: Meterd, params: dict, field: str) -> None:
    acc, _ = stack.new_account("bad-params")
    resp = stack.admin.get(f"/v1/accounts/{acc}/usage", params=params)
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_long_utc_daily_range_reads_daily_rollup(stack: Meterd, three_days: tuple[str, list[dict]]) -> None:
    """Twenty years at step=1d in UTC is 7,305 daily rows: allowed (the issue's 10-year case)."""
    acc, records = three_days
    body = stack.usage(acc, start="2010-01-01T00:00:00Z", end="2030-01-01T00:00:00Z", step="1d")
    assert body["totals"] == totals(records) and len(body["points"]) == 3


def test_group_by_row_limit(stack: Meterd) -> None:
    """group_by without filters cannot be estimated up front; more than 10,000 node rows is a 400."""
    acc, _ = stack.new_account("many-nodes")
    base = ms(utc(2026, 6, 1))
    records = [rec(acc, base + h * 3_600_000, f"node-{n:02d}") for n in range(11) for h in range(1000)]
    send(stack, records)
    params = {"start": iso(utc(2026, 6, 1)), "end": iso(utc(2026, 6, 1) + timedelta(hours=1000)), "step": "1h"}
    stack.wait_totals(acc, totals(records), **params)
    resp = stack.admin.get(f"/v1/accounts/{acc}/usage", params={**params, "group_by": "node_id"})
    assert "group_by" in problem_fields(assert_problem(resp, 400))
    ok = stack.admin.get(f"/v1/accounts/{acc}/usage", params={**params, "group_by": "node_id", "step": "1d"})
    assert ok.status_code == 200 and len(ok.json()["series"]) == 11


def test_billing_timezone_on_account_and_balance(stack: Meterd) -> None:
    created = stack.admin.post("/v1/accounts", json={"name": "tz", "billing_timezone": "Asia/Shanghai",
                                                      "quota_bytes": 100})
    assert created.status_code == 201 and created.json()["billing_timezone"] == "Asia/Shanghai"
    acc = created.json()["id"]
    send(stack, [rec(acc, ms(datetime.now(ZoneInfo("UTC"))), b_in=70, b_out=40)])
    z = ZoneInfo("Asia/Shanghai")
    now = datetime.now(z)
    month_start = datetime(now.year, now.month, 1, tzinfo=z).isoformat()

    def balance() -> dict | None:
        b = stack.admin.get(f"/v1/accounts/{acc}/balance").json()
        return b if b["used_bytes"] == 110 else None

    b = wait_until(balance, timeout=30, message="balance")
    Balance.model_validate(b)
    Account.model_validate(created.json())
    assert (b["timezone"], b["period_start"], b["over_quota"], b["remaining_bytes"]) == (
        "Asia/Shanghai", month_start, True, 0)
    bad = stack.admin.patch(f"/v1/accounts/{acc}", json={"billing_timezone": "Nowhere/City"})
    assert "billing_timezone" in problem_fields(assert_problem(bad, 400))
    patched = stack.admin.patch(f"/v1/accounts/{acc}", json={"billing_timezone": "UTC"})
    assert patched.json()["billing_timezone"] == "UTC"
    bad = stack.admin.post("/v1/accounts", json={"name": "x", "billing_timezone": "Asia/Nowhere"})
    assert "billing_timezone" in problem_fields(assert_problem(bad, 400))


def test_csv_and_ndjson_export(stack: Meterd, three_days: tuple[str, list[dict]]) -> None:
    acc, _ = three_days
    params = {"start": iso(DAY0), "end": iso(DAY0 + timedelta(days=3)), "step": "1h", "tz": "Asia/Shanghai"}
    body = stack.usage(acc, **params)
    url = f"/v1/accounts/{acc}/usage"
    resp = stack.admin.get(url, params=params, headers={"accept": "text/csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(resp.text)))
    assert resp.text.startswith("ts,bytes_in,bytes_out,requests\r\n")
    assert [{k: (v if k == "ts" else int(v)) for k, v in r.items()} for r in parsed] == body["points"]
    assert body["points"][0]["ts"].endswith("+08:00")

    resp = stack.admin.get(url, params=params, headers={"accept": "application/x-ndjson"})
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in resp.text.splitlines()] == body["points"]

    by_node = stack.usage(acc, **params, group_by="node_id")
    resp = stack.admin.get(url, params={**params, "group_by": "node_id"},
                           headers={"accept": "application/json;q=0.5, text/csv"})
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["node_id"], r["ts"], int(r["bytes_in"])) for r in rows] == [
        (s["node_id"], p["ts"], p["bytes_in"]) for s in by_node["series"] for p in s["points"]]
    assert stack.admin.get(url, params=params, headers={"accept": "text/csv;q=0.1, application/json"}
                           ).headers["content-type"].startswith("application/json")
    assert_problem(stack.admin.get(url, params=params, headers={"accept": "image/png"}), 406)
