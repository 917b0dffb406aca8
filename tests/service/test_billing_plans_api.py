"""Billing plans over HTTP on SQLite and PostgreSQL: stored per account, validated, applied and
overridden per request, and the README's worked example sent through the real pipeline with
each mode's figure read from the README table."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.api.schemas import Account, Billing
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import rec, send, stack
from tests.support.meterd import wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]

README = Path(__file__).resolve().parents[2] / "README.md"
MBIT = 37_500_000  # bytes in a 5-minute interval at 1 Mbit/s
DEFAULT_PLAN = {"mode": "month95", "direction": "max", "days": "all", "region_scope": "all", "day_rank": 5,
                "night_window": "00:00-08:00", "unit_prices": {}}


def readme_examples() -> dict[str, int]:
    """mode -> the bits/s figure the README's table gives for the worked example."""
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| .+ \| `([0-9]+)` \|$", README.read_text(), re.M)
    return {mode: int(bps) for mode, bps in rows}


def example_records(acc: str) -> list[dict]:
    """The README example: April 21-30 2026 (UTC), night at 40 Mbit/s, 6 bursts, the rest at 10."""
    out = []
    for i, day in enumerate(range(21, 31), start=1):
        midnight = int(datetime(2026, 4, day, tzinfo=UTC).timestamp())
        for k in range(288):
            mbit = 40 if k < 96 else (100 + 10 * i if 144 <= k < 150 else 10)
            out.append(rec(acc, (midnight + 300 * k + 7) * 1000, b_in=0, b_out=mbit * MBIT, reqs=1))
    return out


def billing(m: Meterd, acc: str, **params: str) -> dict:
    resp = m.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04", **params})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    Billing.model_validate(body)
    return body


def test_readme_worked_example_every_mode(stack: Meterd) -> None:
    examples = readme_examples()
    assert set(examples) == {"month95", "day_peak", "month_avg_day_peak", "month_4th_day_peak",
                             "month_avg_day95", "month_top5_day_peak", "night_half95"}
    plan = {"mode": "month95", "direction": "out", "days": "valid"}
    acc = stack.admin.post("/v1/accounts", json={"name": "plan", "billing_plan": plan}).json()["id"]
    records = example_records(acc)
    send(stack, records)
    total = sum(r["bytes_out"] for r in records)
    wait_until(lambda: billing(stack, acc)["bytes_out"] == total, timeout=60, message="example counted")
    valid = billing(stack, acc)
    assert valid["plan"] == {**DEFAULT_PLAN, **plan}
    assert {k: valid["bill"][k] for k in ("bps", "valid_days", "days_in_period", "samples", "rank", "proration",
                                          "billable_bps")} == {
        "bps": 40_000_000, "valid_days": 10, "days_in_period": 30, "samples": 2880, "rank": 145,
        "proration": "0.33333333", "billable_bps": 13_333_333}
    for mode, want in examples.items():
        got = billing(stack, acc, mode=mode, days="all")["bill"]
        assert (got["mode"], got["days"], got["bps"]) == (mode, "all", want), mode
        assert got["proration"] == "1.00000000" and got["billable_bps"] == want
    assert billing(stack, acc, mode="month95", days="all")["bill"]["rank"] == 433
    assert billing(stack, acc, direction="in")["bill"]["bps"] == 0  # outbound-only traffic


def test_plan_is_stored_patched_and_reset(stack: Meterd) -> None:
    created = stack.admin.post("/v1/accounts", json={"name": "p", "billing_plan": {"mode": "night_half95",
                                                                                   "night_window": "23:00-07:00"}})
    assert created.status_code == 201, created.text
    acc = created.json()["id"]
    want = {**DEFAULT_PLAN, "mode": "night_half95", "night_window": "23:00-07:00"}
    assert created.json()["billing_plan"] == want
    Account.model_validate(created.json())
    assert stack.admin.get(f"/v1/accounts/{acc}").json()["billing_plan"] == want
    # A plan sent replaces the stored one: omitted fields fall back to their defaults.
    patched = stack.admin.patch(f"/v1/accounts/{acc}", json={"billing_plan": {"mode": "day_peak"}})
    assert patched.json()["billing_plan"] == {**DEFAULT_PLAN, "mode": "day_peak"}
    bill = stack.admin.get(f"/v1/accounts/{acc}/billing").json()
    assert bill["plan"]["mode"] == bill["bill"]["mode"] == "day_peak"
    # Other fields leave the plan alone; null restores the default (and the field disappears).
    assert stack.admin.patch(f"/v1/accounts/{acc}", json={"name": "q"}).json()["billing_plan"]["mode"] == "day_peak"
    reset = stack.admin.patch(f"/v1/accounts/{acc}", json={"billing_plan": None}).json()
    assert "billing_plan" not in reset
    assert stack.admin.get(f"/v1/accounts/{acc}/billing").json()["plan"] == DEFAULT_PLAN


@pytest.mark.parametrize(("plan", "field"), [
    ({"mode": "p95"}, "billing_plan.mode"), ({"direction": "both"}, "billing_plan.direction"),
    ({"days": "some"}, "billing_plan.days"), ({"region_scope": "mars"}, "billing_plan.region_scope"),
    ({"day_rank": 0}, "billing_plan.day_rank"), ({"day_rank": "5"}, "billing_plan.day_rank"),
    ({"night_window": "00:07-08:00"}, "billing_plan.night_window"),
    ({"night_window": "08:00-08:00"}, "billing_plan.night_window"),
    ({"night_window": "25:00-08:00"}, "billing_plan.night_window"),
    ({"night_window": "midnight"}, "billing_plan.night_window"),
    ({"price": 3}, "billing_plan.price"), ("month95", "billing_plan"),
])
def test_bad_plan_is_a_problem_naming_the_field(stack: Meterd, plan: object, field: str) -> None:
    resp = stack.admin.post("/v1/accounts", json={"name": "bad", "billing_plan": plan})
    assert field in problem_fields(assert_problem(resp, 400)), resp.text
    acc, _ = stack.new_account("bad-patch")
    resp = stack.admin.patch(f"/v1/accounts/{acc}", json={"billing_plan": plan})
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


@pytest.mark.parametrize(("params", "field"), [
    ({"mode": "p95"}, "mode"), ({"direction": "up"}, "direction"), ({"days": "weekdays"}, "days")])
def test_bad_mode_parameters(stack: Meterd, params: dict, field: str) -> None:
    acc, key = stack.new_account("bad-mode")
    with stack.client(key) as c:  # the account's own key may compare modes too
        assert c.get(f"/v1/accounts/{acc}/billing", params={"mode": "month_avg_day95"}).status_code == 200
        resp = c.get(f"/v1/accounts/{acc}/billing", params=params)
    assert list(problem_fields(assert_problem(resp, 400))) == [field], resp.text
