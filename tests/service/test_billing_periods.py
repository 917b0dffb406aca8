"""Closing a billing month on SQLite and PostgreSQL: the bill is frozen byte for byte under late
writes, late records show up in usage and as an adjustment of the first open month, a close is
idempotent, and a month that has not ended cannot be closed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from service.api.schemas import Billing
from service.storage import Repository, create_database
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import PAST_SECONDS, rec, send, stack
from tests.support.meterd import meterd_env, running_meterd, wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]


def at(month: int, day: int) -> int:
    return int(datetime(2026, month, day, 12, tzinfo=UTC).timestamp() * 1000)


def usage_in(m: Meterd, acc: str, start: str, end: str) -> int:
    body = m.admin.get(f"/v1/accounts/{acc}/usage", params={"start": start, "end": end, "step": "1d"}).json()
    return int(body["totals"]["bytes_in"])


def wait_usage(m: Meterd, acc: str, month: int, want: int) -> None:
    start, end = f"2026-{month:02d}-01T00:00:00Z", f"2026-{month + 1:02d}-01T00:00:00Z"
    wait_until(lambda: usage_in(m, acc, start, end) == want, timeout=60, message="usage counted")


def test_a_closed_month_is_frozen_and_late_records_adjust_the_next(stack: Meterd) -> None:
    acc, key = stack.new_account("close")
    send(stack, [rec(acc, at(3, d), b_in=1000 * d, b_out=10) for d in (2, 9, 20)])
    wait_usage(stack, acc, 3, 31_000)
    closed = stack.admin.post(f"/v1/accounts/{acc}/periods/2026-03/close")
    assert closed.status_code == 200, closed.text
    Billing.model_validate(closed.json())
    assert (closed.json()["bytes_in"], closed.json()["complete"]) == (31_000, True)
    with stack.client(key) as c:
        assert c.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-03"}).content == closed.content
    # Late records for March: counted in usage, the March bill does not move, April shows them.
    send(stack, [rec(acc, at(3, 30), b_in=500, b_out=5, reqs=2)])
    wait_usage(stack, acc, 3, 31_500)
    assert stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-03"}).content == closed.content
    assert stack.admin.post(f"/v1/accounts/{acc}/periods/2026-03/close").content == closed.content  # idempotent
    april = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04"}).json()
    Billing.model_validate(april)
    assert april["late_adjustments"] == [{"month": "2026-03", "bytes_in": 500, "bytes_out": 5, "requests": 2}]
    assert april["bytes_in"] == 0  # April's own usage is untouched
    # Asking for another mode (or zone) is a live computation, late records included.
    live = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-03", "mode": "day_peak"}).json()
    assert live["bytes_in"] == 31_500


def test_late_records_land_in_the_first_open_month(stack: Meterd) -> None:
    acc, _ = stack.new_account("close-two")
    send(stack, [rec(acc, at(5, 3), b_in=7), rec(acc, at(6, 3), b_in=11)])
    wait_usage(stack, acc, 6, 11)
    for month in ("2026-05", "2026-06"):
        assert stack.admin.post(f"/v1/accounts/{acc}/periods/{month}/close").status_code == 200
    send(stack, [rec(acc, at(5, 4), b_in=3, b_out=0, reqs=1)])
    wait_usage(stack, acc, 5, 10)
    july = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-07"}).json()
    assert july["late_adjustments"] == [{"month": "2026-05", "bytes_in": 3, "bytes_out": 0, "requests": 1}]
    assert "late_adjustments" not in stack.admin.get(f"/v1/accounts/{acc}/billing",
                                                     params={"month": "2026-08"}).json()


def test_closing_needs_an_ended_month(stack: Meterd) -> None:
    acc, key = stack.new_account("close-early")
    now = datetime.now(UTC)
    resp = stack.admin.post(f"/v1/accounts/{acc}/periods/{now:%Y-%m}/close")
    assert assert_problem(resp, 409)["title"] == "Month Not Ended"
    assert "month" in problem_fields(assert_problem(stack.admin.post(f"/v1/accounts/{acc}/periods/2026-13/close"), 400))
    assert_problem(stack.admin.post("/v1/accounts/acc_nope/periods/2026-01/close"), 404)
    with stack.client(key) as c:
        assert_problem(c.post(f"/v1/accounts/{acc}/periods/2026-01/close"), 403)


def test_the_consumer_closes_ended_months_after_the_grace(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    prev = f"{now.year - (now.month == 1):04d}-{(now.month - 2) % 12 + 1:02d}"
    env = meterd_env(tmp_path, METERD_INGEST__MAX_PAST_SECONDS=str(PAST_SECONDS),
                     METERD_CONSUMER__DEDUPE_RETENTION_SECONDS=str(PAST_SECONDS),
                     METERD_BILLING__AUTO_CLOSE_AFTER_SECONDS="1", METERD_BILLING__CLOSE_POLL_SECONDS="0.2",
                     METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.3")
    with running_meterd(tmp_path, "up", env=env) as proc, proc.client() as c:
        acc = c.post("/v1/accounts", json={"name": "auto"}).json()["id"]
        async def stored() -> dict | None:  # read straight from meterd's database file
            db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'meterd.db'}")
            try:
                return await Repository(db).closed_period(acc, prev)
            finally:
                await db.close()

        def closed() -> bool:
            return asyncio.run(stored()) is not None
        wait_until(closed, timeout=30, message="the previous month closed")
        when = int(datetime(int(prev[:4]), int(prev[5:]), 15, tzinfo=UTC).timestamp() * 1000)
        resp = c.post("/v1/traffic", json={"batch_id": "late-1", "records": [rec(acc, when, b_in=42, b_out=0)]})
        assert resp.status_code == 202, resp.text

        def adjusted() -> list | None:
            return c.get(f"/v1/accounts/{acc}/billing").json().get("late_adjustments")
        late = wait_until(adjusted, timeout=30, message="the late record as an adjustment")
        assert late == [{"month": prev, "bytes_in": 42, "bytes_out": 0, "requests": 1}]
        assert c.get(f"/v1/accounts/{acc}/billing", params={"month": prev}).json()["bytes_in"] == 0
