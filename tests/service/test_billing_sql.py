"""The database half of billing (order statistics over the 5-minute rollup) on SQLite and
PostgreSQL, at the rule's edges: few intervals, empty intervals, a 25-hour day, huge values."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from service.storage import Repository
from service.storage.ledger import Flush, Ledger
from service.storage.rollup import BIGINT_MAX
from service.timezones import boundaries
from tests.service.test_storage import db, repo  # noqa: F401  (fixtures)

NY = ZoneInfo("America/New_York")


async def apply(store: Repository, usage: dict) -> None:
    await Ledger(store.db).apply(Flush(usage=usage))


async def test_fewer_than_twenty_intervals_drop_nothing(repo: Repository) -> None:  # noqa: F811
    start = int(datetime(2026, 5, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    await apply(repo, {("a", "n", start + 300 * i): [i + 1, 10 - i, 1] for i in range(10)})
    cutoff = start + 19 * 300  # 19 intervals, 9 of them empty: floor(0.95) = 0 dropped
    totals, stats = await repo.billing_figures("a", start, cutoff, start + 86400, [start, start + 86400])
    assert totals == [55, 55, 10]
    assert stats["p95"] == {"in": 10, "out": 10, "max": 10} == stats["peak"]
    assert stats["days"]["in"] == 1 and stats["daily_peak_sum"] == {"in": 10, "out": 10, "max": 10}


async def test_offset_past_the_rows_is_an_empty_interval(repo: Repository) -> None:  # noqa: F811
    start = int(datetime(2026, 5, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    # 40 intervals, 3 with traffic: the top 2 are dropped, the third is taken; with 2 rows it is 0.
    await apply(repo, {("a", "n", start): [9, 0, 1], ("a", "n", start + 300): [7, 0, 1],
                       ("a", "n", start + 600): [5, 0, 1], ("b", "n", start): [9, 0, 1],
                       ("b", "n", start + 300): [7, 0, 1]})
    _, a = await repo.billing_figures("a", start, start + 40 * 300, start + 86400, [start, start + 86400])
    _, b = await repo.billing_figures("b", start, start + 40 * 300, start + 86400, [start, start + 86400])
    assert (a["p95"]["in"], b["p95"]["in"], b["p95"]["max"]) == (5, 0, 0)


async def test_daily_peaks_follow_local_days_across_dst(repo: Repository) -> None:  # noqa: F811
    start = int(datetime(2026, 11, 1, tzinfo=NY).timestamp())  # a 25-hour day, then an ordinary one
    end = int(datetime(2026, 11, 3, tzinfo=NY).timestamp())
    last_of_day1 = int(datetime(2026, 11, 2, tzinfo=NY).timestamp()) - 300
    big = 1 << 62  # two of them pass 2**63 - 1: the sums must stay exact
    await apply(repo, {("a", "n", start): [big + 100, 1, 1], ("a", "n", last_of_day1): [big, 2, 1],
                       ("a", "n", last_of_day1 + 300): [40, 60, 1]})
    days = boundaries(start, end, 86400, NY)
    assert days[1] - days[0] == 25 * 3600
    totals, stats = await repo.billing_figures("a", start, end, end, days)
    assert totals[0] == 2 * big + 140 > BIGINT_MAX  # exact past 64 bits, summed by meterd
    # Day 1 (25 h) peaks at big + 100 (in) even though its last interval holds big; day 2 is 40/60.
    assert stats["daily_peak_sum"] == {"in": big + 140, "out": 62, "max": big + 160}
    assert stats["days"]["max"] == 2 and stats["peak"]["in"] == big + 100
