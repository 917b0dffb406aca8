"""Property tests: every billing mode, direction and day rule over generated months (spikes, empty
days, a running month's cutoff, the DST months of New York and half-hour Kolkata), written through
the consumers' flush transaction into SQLite and a real PostgreSQL, read back as the API reads it,
and checked against a straightforward implementation of the README's rules written here."""

from __future__ import annotations

import asyncio
import math
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.billing_modes import Period, compute_bill
from service.billing_plan import DAY_RULES, DIRECTIONS, MODES, BillingPlan
from service.storage import Repository, create_database
from service.storage.ledger import Flush, Ledger
from service.timezones import boundaries

EXAMPLES = int(os.environ.get("METERD_BILLING_EXAMPLES", "25"))
MONTHS = [("America/New_York", 2026, 3), ("America/New_York", 2025, 11), ("Asia/Kolkata", 2026, 2),
          ("Asia/Kolkata", 2026, 7), ("UTC", 2026, 4)]


@dataclass
class Backend:
    runner: asyncio.Runner
    repo: Repository


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('billing-props') / 'meterd.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        name = f"t_{uuid.uuid4().hex[:16]}"
        server.create_database(name)
        url = server.url_for(name)
    runner = asyncio.Runner()
    db = create_database(url, pool_size=2)
    try:
        runner.run(db.migrate())
        yield Backend(runner, Repository(db))
    finally:
        runner.run(db.close())
        runner.close()
        if name is not None and server.running:
            server.drop_database(name)


# -- the rules, written out plainly ---------------------------------------------------------------

def to_bps(bytes_per_interval: Fraction) -> int:
    return math.floor(bytes_per_interval * 8 / 300 + Fraction(1, 2))


def sample(direction: str, b_in: int, b_out: int) -> Fraction:
    return {"in": Fraction(b_in), "out": Fraction(b_out), "max": Fraction(max(b_in, b_out)),
            "avg": Fraction(b_in + b_out, 2)}[direction]


def in_night(local: datetime, window: str) -> bool:
    a = int(window[0:2]) * 60 + int(window[3:5])
    b = int(window[6:8]) * 60 + int(window[9:11])
    m = local.hour * 60 + local.minute
    return a <= m < b if a < b else (m >= a or m < b)


def nth_highest(values: list[Fraction], n: int) -> Fraction:
    ranked = sorted(values, reverse=True)
    return ranked[n - 1] if 1 <= n <= len(ranked) else Fraction(0)


def reference(values: dict[int, tuple[int, int]], zone: ZoneInfo, year: int, month: int, cutoff: int,
              plan: BillingPlan) -> dict:
    first = date(year, month, 1)
    dates = [first + timedelta(days=k) for k in range(40) if (first + timedelta(days=k)).month == month]
    midnight = {d: int(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()) for d in
                [*dates, dates[-1] + timedelta(days=1)]}
    days: dict[date, list[Fraction]] = {}
    valid: dict[date, bool] = {}
    for t in range(midnight[dates[0]], min(cutoff, midnight[dates[-1] + timedelta(days=1)]), 300):
        local = datetime.fromtimestamp(t, zone)
        v = sample(plan.direction, *values.get(t, (0, 0)))
        valid[local.date()] = valid.get(local.date(), False) or v > 0
        if plan.mode == "night_half95" and in_night(local, plan.night_window):
            v /= 2
        days.setdefault(local.date(), []).append(v)
    complete = {d: midnight[d + timedelta(days=1)] <= cutoff for d in days}
    use = {d: plan.days == "all" or valid[d] for d in days}
    valid_days = sum(valid.values())
    factor = Fraction(valid_days, len(dates)) if plan.days == "valid" and plan.mode != "day_peak" else Fraction(1)
    out = {"valid_days": valid_days, "days_in_period": len(dates)}
    if plan.mode in ("month95", "night_half95"):
        pool = [v for d, vs in days.items() if use[d] for v in vs]
        rank = len(pool) * 5 // 100 + 1 if pool else 0
        figure = nth_highest(pool, rank)
        return {**out, "samples": len(pool), "rank": rank, "bps": to_bps(figure),
                "billable_bps": to_bps(figure * factor), "daily": None}
    daily = {}
    for d, vs in days.items():
        n = {"month_avg_day95": len(vs) * 5 // 100 + 1, "month_top5_day_peak": plan.day_rank}.get(plan.mode, 1)
        daily[d] = nth_highest(vs, n)
    counted = [d for d in days if use[d] and complete[d]]
    figs = [daily[d] for d in counted]
    if plan.mode == "month_4th_day_peak":
        figure = nth_highest(figs, 4)
    elif plan.mode == "month_top5_day_peak":
        top = sorted(figs, reverse=True)[:5]
        figure = sum(top, Fraction(0)) / len(top) if top else Fraction(0)
    else:
        figure = sum(figs, Fraction(0)) / len(figs) if figs else Fraction(0)
    bps = sum(to_bps(daily[d]) for d in counted) if plan.mode == "day_peak" else to_bps(figure)
    return {**out, "samples": sum(len(days[d]) for d in counted), "days_counted": len(counted), "bps": bps,
            "billable_bps": bps if plan.mode == "day_peak" else to_bps(figure * factor),
            "daily": [(d.isoformat(), to_bps(daily[d]), d in counted) for d in days]}


# -- generated months -----------------------------------------------------------------------------

@st.composite
def months(draw: st.DrawFn) -> dict:
    zone_name, year, month = draw(st.sampled_from(MONTHS))
    return {"zone": ZoneInfo(zone_name), "year": year, "month": month,
            "active_days": draw(st.sets(st.integers(0, 30), max_size=31)),
            "fill": draw(st.sampled_from([0.02, 0.3, 1.0])), "seed": draw(st.integers(0, 2**32)),
            "spikes": draw(st.sampled_from([0.0, 0.01, 0.2])),
            "cutoff_day": draw(st.one_of(st.none(), st.integers(0, 31))),
            "cutoff_extra": draw(st.integers(0, 287))}


plans = st.builds(BillingPlan, mode=st.sampled_from(MODES), direction=st.sampled_from(DIRECTIONS),
                  days=st.sampled_from(DAY_RULES), day_rank=st.integers(1, 300),
                  night_window=st.sampled_from(["00:00-08:00", "01:00-03:00", "22:30-06:00", "05:30-24:00"]))


def generate(spec: dict, bounds: list[int]) -> dict[int, tuple[int, int]]:
    """Per-interval bytes: active days are filled to `fill`, a share of them spiking 1000-fold."""
    rng = random.Random(spec["seed"])
    out = {}
    for d in sorted(spec["active_days"]):
        if d >= len(bounds) - 1:
            continue
        for t in range(bounds[d], bounds[d + 1], 300):
            if rng.random() < spec["fill"]:
                spike = 1000 if rng.random() < spec["spikes"] else 1
                out[t] = (rng.randrange(10**6) * spike, rng.randrange(10**6) * rng.choice([0, 1, 1]))
    return out


def usage_rows(account: str, values: dict[int, tuple[int, int]]) -> dict:
    """An interval's bytes split over two minutes and two nodes, the way traffic arrives."""
    rows = {}
    for t, (b_in, b_out) in values.items():
        rows[(account, "n1", t)] = [b_in // 3, b_out // 3, 1]
        rows[(account, "n2", t + 240)] = [b_in - b_in // 3, b_out - b_out // 3, 1]
    return rows


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=months(), plan=plans)
@example(spec={"zone": ZoneInfo("America/New_York"), "year": 2026, "month": 3, "active_days": {6, 7, 8}, "fill": 1.0,
               "seed": 7, "spikes": 0.01, "cutoff_day": None, "cutoff_extra": 0},
         plan=BillingPlan(mode="night_half95", days="valid", night_window="03:00-01:00"))
def test_every_mode_matches_the_rules(backend: Backend, spec: dict, plan: BillingPlan) -> None:
    zone, year, month = spec["zone"], spec["year"], spec["month"]
    start = int(datetime(year, month, 1, tzinfo=zone).timestamp())
    end = int(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone).timestamp())
    bounds = boundaries(start, end, 86400, zone)
    cutoff = end if spec["cutoff_day"] is None else min(end, bounds[min(spec["cutoff_day"], len(bounds) - 1)]
                                                       + 300 * spec["cutoff_extra"])
    values = generate(spec, bounds)
    account = "acc_" + uuid.uuid4().hex[:20]

    async def run() -> dict:
        await Ledger(backend.repo.db).apply(Flush(usage=usage_rows(account, values)))
        *_, samples = await backend.repo.billing_inputs(account, start, cutoff, end, bounds)
        return compute_bill(samples, Period(start, cutoff, bounds, zone), plan)

    got = backend.runner.run(run())
    want = reference(values, zone, year, month, cutoff, plan)
    if want["daily"] is not None:
        assert [(d["date"], d["bps"], d["counted"]) for d in got["daily"]] == want["daily"]
    assert {k: got[k] for k in want if k != "daily"} == {k: v for k, v in want.items() if k != "daily"}
    if plan.mode == "month_4th_day_peak":
        assert got["rank"] == 4
    if plan.mode == "month_top5_day_peak":
        assert got["rank"] == plan.day_rank
