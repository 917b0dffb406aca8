"""The bill forecast: the weekly-repeat projection checked against months built by hand, the cheapest
mode at the plan's prices, and over HTTP on SQLite and PostgreSQL: a month that has ended forecasts
exactly its bill in every mode."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from service.api.schemas import Forecast
from service.billing_forecast import forecast, projected_samples
from service.billing_modes import Period, compute_bill
from service.billing_plan import MODES, BillingPlan
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import rec, send, stack
from tests.service.test_billing_modes import UNIT, period
from tests.support.meterd import wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]


def flat_day(p: Period, day: int, units: int) -> dict[int, tuple[int, int]]:
    return {t: (0, UNIT * units) for t in range(p.day_bounds[day], p.day_bounds[day + 1], 300)}


def test_each_future_interval_repeats_the_same_weekday() -> None:
    full = period(2026, 6)  # June 2026 in UTC: the 1st is a Monday
    observed: dict[int, tuple[int, int]] = {}
    for d in range(14):  # two weeks: each weekday its own level
        observed |= flat_day(full, d, d % 7 + 1)
    cutoff = full.day_bounds[14]
    got = projected_samples(observed, full.start, cutoff, full.day_bounds[-1])
    for d in range(14, 30):
        weekday = datetime.fromtimestamp(full.day_bounds[d], UTC).weekday()  # Monday 0
        assert {got[t] for t in range(full.day_bounds[d], full.day_bounds[d + 1], 300)} == {(0, UNIT * (weekday + 1))}


def test_with_less_than_a_week_the_latest_day_repeats() -> None:
    full = period(2026, 6)
    observed = flat_day(full, 0, 5) | flat_day(full, 1, 9) | {full.day_bounds[2] + 600: (0, UNIT * 3)}
    cutoff = full.day_bounds[2] + 3600  # an hour into the 3rd
    got = projected_samples(observed, full.start, cutoff, full.day_bounds[-1])
    # The rest of the 3rd repeats the 2nd; the 4th's first hour repeats the 3rd's, then the 2nd's.
    assert got[full.day_bounds[2] + 7200] == (0, UNIT * 9)
    assert got[full.day_bounds[3] + 600] == (0, UNIT * 3) and full.day_bounds[3] + 300 not in got
    assert got[full.day_bounds[3] + 7200] == (0, UNIT * 9)
    assert projected_samples({}, full.start, full.start, full.day_bounds[-1]) == {}


def test_the_projected_month_is_billed_like_a_hand_built_one() -> None:
    full = period(2026, 6)
    plan = BillingPlan(direction="out", days="valid", unit_prices={"month95": "2.5", "day_peak": "0.1",
                                                                   "month_avg_day95": "2.4"})
    observed = {t: v for d in range(7) for t, v in flat_day(full, d, 10 + d).items()}
    observed[full.day_bounds[3] + 300] = (0, UNIT * 1000)  # one spike, repeated every week
    cutoff = full.day_bounds[7]
    got = forecast(observed, Period(full.start, cutoff, full.day_bounds, full.zone), full.day_bounds[-1], plan)
    by_hand = {}
    for d in range(30):
        by_hand |= flat_day(full, d, 10 + d % 7)
        if d % 7 == 3:
            by_hand[full.day_bounds[d] + 300] = (0, UNIT * 1000)
    for row in got["forecasts"]:
        want = compute_bill(by_hand, full, plan.model_copy(update={"mode": row["mode"]}))
        assert (row["bps"], row["billable_bps"], row["valid_days"]) == (
            want["bps"], want["billable_bps"], want["valid_days"]), row["mode"]
    rows = {r["mode"]: r for r in got["forecasts"]}
    assert rows["month95"]["cost"] == str((Decimal(rows["month95"]["billable_bps"]) / 10**6 * Decimal("2.5"))
                                          .quantize(Decimal("0.01")))
    assert rows["month_4th_day_peak"]["cost"] is None and rows["month_4th_day_peak"]["unit_price"] is None
    costs = {m: Decimal(r["cost"]) for m, r in rows.items() if r["cost"] is not None}
    assert got["cheapest"] == min(costs, key=lambda m: (costs[m], MODES.index(m)))


def test_no_prices_no_cheapest() -> None:
    full = period(2026, 6)
    got = forecast({}, full, full.day_bounds[-1], BillingPlan())
    assert got["cheapest"] is None and {r["bps"] for r in got["forecasts"]} == {0}


# -- over HTTP -------------------------------------------------------------------------------------

def test_a_month_that_has_ended_forecasts_its_bill(stack: Meterd) -> None:
    plan = {"direction": "out", "days": "valid", "unit_prices": {"month95": "3", "month_avg_day_peak": "2.75",
                                                                 "day_peak": "0.09"}}
    acc = stack.admin.post("/v1/accounts", json={"name": "forecast", "billing_plan": plan}).json()["id"]
    start = int(datetime(2026, 4, 10, tzinfo=UTC).timestamp())
    records = [rec(acc, (start + 300 * i + 1) * 1000, b_in=0, b_out=(i * 7919) % 10**8, reqs=1) for i in range(3000)]
    send(stack, records)
    total = sum(r["bytes_out"] for r in records)

    def counted() -> dict | None:
        body = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04"}).json()
        return body if body["bytes_out"] == total else None
    wait_until(counted, timeout=60, message="traffic counted")
    resp = stack.admin.get(f"/v1/accounts/{acc}/billing/forecast", params={"month": "2026-04"})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    Forecast.model_validate(got)
    assert (got["complete"], got["as_of"], got["method"]) == (True, "2026-05-01T00:00:00Z", "weekly-repeat")
    assert [r["mode"] for r in got["forecasts"]] == list(MODES)
    for row in got["forecasts"]:
        bill = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04", "mode": row["mode"]}).json()
        assert (row["bps"], row["billable_bps"]) == (bill["bill"]["bps"], bill["bill"]["billable_bps"]), row["mode"]
    priced = {r["mode"]: Decimal(r["cost"]) for r in got["forecasts"] if r["cost"] is not None}
    assert set(priced) == {"month95", "month_avg_day_peak", "day_peak"}
    assert got["cheapest"] == min(priced, key=lambda m: (priced[m], MODES.index(m)))
    current = stack.admin.get(f"/v1/accounts/{acc}/billing/forecast").json()
    Forecast.model_validate(current)
    assert current["complete"] is False


@pytest.mark.parametrize(("prices", "field"), [({"month95": "-1"}, "billing_plan.unit_prices.month95"),
                                               ({"month95": "1.0000001"}, "billing_plan.unit_prices.month95"),
                                               ({"p95": "1"}, "billing_plan.unit_prices.p95.[key]"),
                                               ({"month95": "NaN"}, "billing_plan.unit_prices.month95")])
def test_bad_unit_prices(stack: Meterd, prices: dict, field: str) -> None:
    resp = stack.admin.post("/v1/accounts", json={"name": "bad-price", "billing_plan": {"unit_prices": prices}})
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_forecast_parameters(stack: Meterd) -> None:
    acc, key = stack.new_account("forecast-params")
    with stack.client(key) as c:
        assert "mode" in problem_fields(assert_problem(c.get(f"/v1/accounts/{acc}/billing/forecast",
                                                             params={"mode": "month95"}), 400))
        assert "month" in problem_fields(assert_problem(c.get(f"/v1/accounts/{acc}/billing/forecast",
                                                              params={"month": "2099-01"}), 400))
        assert c.get(f"/v1/accounts/{acc}/billing/forecast", params={"days": "valid"}).status_code == 200
