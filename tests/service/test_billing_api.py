"""GET /v1/accounts/{id}/billing on SQLite and PostgreSQL through the real pipeline, checked against
an independent computation of the README's rule over generated traffic with spikes, empty
intervals and the two DST months of America/New_York."""

from __future__ import annotations

import math
import random
import time
from datetime import date, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from service.api.schemas import Billing
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import rec, send, stack
from tests.support.meterd import wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]


def half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def expected_bill(records: list[dict], zone: str, year: int, month: int) -> dict:
    """The rule, computed from scratch: local month, every 5-minute interval (empty ones 0)."""
    z = ZoneInfo(zone)
    start = datetime(year, month, 1, tzinfo=z)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=z)
    s, e = int(start.timestamp()), int(end.timestamp())
    n = (e - s) // 300
    cols = {"in": [0] * n, "out": [0] * n}
    for r in records:
        i = (r["timestamp_ms"] // 1000 - s) // 300
        cols["in"][i] += r["bytes_in"]
        cols["out"][i] += r["bytes_out"]
    cols["max"] = [max(a, b) for a, b in zip(cols["in"], cols["out"], strict=True)]
    to_bps = Fraction(8, 300)
    out: dict = {"p95": {}, "peak": {}, "daily_peak_avg": {}}
    for name, v in cols.items():
        ranked = sorted(v, reverse=True)
        out["p95"][name] = half_up(ranked[math.floor(Fraction(5, 100) * n)] * to_bps)
        out["peak"][name] = half_up(ranked[0] * to_bps)
        per_day: dict[date, int] = {}
        for i, x in enumerate(v):
            d = datetime.fromtimestamp(s + i * 300, z).date()
            per_day[d] = max(per_day.get(d, 0), x)
        out["daily_peak_avg"][name] = half_up(Fraction(sum(per_day.values()), len(per_day)) * to_bps)
    def rfc3339(dt: datetime) -> str:  # meterd writes UTC itself with "Z"
        return dt.isoformat().replace("+00:00", "Z") if zone == "UTC" else dt.isoformat()

    return {"intervals": n, "bandwidth_bps": out, "period_start": rfc3339(start),
            "period_end": rfc3339(end), "bytes_in": sum(r["bytes_in"] for r in records),
            "bytes_out": sum(r["bytes_out"] for r in records), "requests": sum(r["requests"] for r in records)}


def month_traffic(acc: str, zone: str, year: int, month: int, seed: int) -> list[dict]:
    """About 70 % of intervals carry one to three records, 1 % of those a spike; the rest are empty."""
    rng = random.Random(seed)
    z = ZoneInfo(zone)
    s = int(datetime(year, month, 1, tzinfo=z).timestamp())
    e = int(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=z).timestamp())
    out = []
    for t in range(s, e, 300):
        if rng.random() < 0.3:
            continue
        for _ in range(rng.randint(1, 3)):
            spike = 1000 if rng.random() < 0.01 else 1
            out.append(rec(acc, (t + rng.randrange(300)) * 1000, rng.choice(["a", "b"]),
                           rng.randrange(10**7) * spike, rng.randrange(10**7), rng.randrange(1, 9)))
    return out


def wait_bill(m: Meterd, acc: str, want_bytes: int, **params: str) -> dict:
    def ready() -> dict | None:
        resp = m.admin.get(f"/v1/accounts/{acc}/billing", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.json()["bytes_in"] == want_bytes else None
    return wait_until(ready, timeout=60, message="billing totals")


@pytest.mark.parametrize(("zone", "month"), [("America/New_York", "2025-11"), ("America/New_York", "2026-03"),
                                             ("UTC", "2026-02")])
def test_billing_matches_independent_computation(stack: Meterd, zone: str, month: str) -> None:
    year, mon = int(month[:4]), int(month[5:])
    created = stack.admin.post("/v1/accounts", json={"name": "bill", "billing_timezone": zone,
                                                      "quota_bytes": 10**12})
    acc = created.json()["id"]
    records = month_traffic(acc, zone, year, mon, seed=year * 100 + mon)
    send(stack, records)
    want = expected_bill(records, zone, year, mon)
    got = wait_bill(stack, acc, want["bytes_in"], month=month)  # the account's billing_timezone
    # The fields billing had before plans, unchanged; plans added `plan` and `bill` (issue 27).
    legacy = {k: v for k, v in got.items() if k not in ("plan", "bill")}
    assert legacy == {"account_id": acc, "month": month, "timezone": zone, "complete": True,
                      "quota_bytes": 10**12, "over_quota": want["bytes_in"] + want["bytes_out"] > 10**12, **want}
    assert set(got) - set(legacy) == {"plan", "bill"}
    Billing.model_validate(got)  # the documented schema, no undocumented field
    # DST months: 30 days + 1 hour in November, 31 days - 1 hour in March.
    assert got["intervals"] == {"2025-11": 8652, "2026-03": 8916, "2026-02": 8064}[month]
    assert got["bandwidth_bps"]["peak"]["in"] > got["bandwidth_bps"]["p95"]["in"]  # spikes were dropped


def test_billing_tz_parameter_and_current_month(stack: Meterd) -> None:
    acc, key = stack.new_account("current", quota_bytes=100)
    now_s = time.time()
    send(stack, [rec(acc, int(now_s * 1000) - 1000, b_in=300, b_out=30, reqs=2)])
    before = int(now_s) - int(now_s) % 300
    with stack.client(key) as c:
        def ready() -> dict | None:
            body = c.get(f"/v1/accounts/{acc}/billing", params={"tz": "Asia/Kolkata"}).json()
            return body if body["bytes_in"] == 300 else None
        body = wait_until(ready, timeout=30, message="current month")
    z = ZoneInfo("Asia/Kolkata")
    today = datetime.now(z).date()
    start = datetime(today.year, today.month, 1, tzinfo=z)
    assert (body["timezone"], body["period_start"], body["complete"], body["over_quota"]) == (
        "Asia/Kolkata", start.isoformat(), False, True)
    assert body["month"] == f"{today.year:04d}-{today.month:02d}"
    assert body["period_start"].endswith("+05:30")
    first = int(start.timestamp())
    assert (before - first) // 300 <= body["intervals"] <= (before + 600 - first) // 300


@pytest.mark.parametrize(("params", "field"), [
    ({"month": "2026-13"}, "month"), ({"month": "26-01"}, "month"), ({"month": "2026-1"}, "month"),
    ({"month": "２０２６-01"}, "month"), ({"month": "2099-01"}, "month"), ({"tz": "Nowhere/Land"}, "tz"),
])
def test_billing_bad_parameters(stack: Meterd, params: dict, field: str) -> None:
    acc, _ = stack.new_account("bad-bill")
    resp = stack.admin.get(f"/v1/accounts/{acc}/billing", params=params)
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_billing_access(stack: Meterd) -> None:
    acc, key = stack.new_account("mine")
    _, other_key = stack.new_account("theirs")
    with stack.client(other_key) as c:
        assert_problem(c.get(f"/v1/accounts/{acc}/billing"), 404)
    with stack.client(key) as c:
        assert c.get(f"/v1/accounts/{acc}/billing").status_code == 200
    with stack.client("") as c:
        assert_problem(c.get(f"/v1/accounts/{acc}/billing"), 401)
