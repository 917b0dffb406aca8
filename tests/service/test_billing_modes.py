"""Golden tests of the billing modes: each vendor's published worked example, computed by
service.billing_modes over a month of samples built for it (the README's examples are in
test_billing_plans_api.py, through the API)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from service.billing_modes import Period, compute_bill
from service.billing_plan import BillingPlan
from service.timezones import boundaries

UTC = ZoneInfo("UTC")
# 75 bytes in an interval is exactly 2 bit/s (75 x 8 / 300): the figures below stay readable.
UNIT = 75


def period(year: int, month: int, zone: ZoneInfo = UTC, cutoff_day: int | None = None) -> Period:
    start = int(datetime(year, month, 1, tzinfo=zone).timestamp())
    end = int(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone).timestamp())
    bounds = boundaries(start, end, 86400, zone)
    cutoff = end if cutoff_day is None else bounds[cutoff_day - 1]
    return Period(start, cutoff, bounds, zone)


def distinct_from_day(p: Period, first_day: int) -> dict[int, tuple[int, int]]:
    """Every interval from local day ``first_day`` on carries a different outbound value, 1..n units."""
    start = p.day_bounds[first_day - 1]
    return {t: (0, UNIT * (i + 1)) for i, t in enumerate(range(start, p.cutoff, 300))}


def bill(samples: dict[int, tuple[int, int]], p: Period, **plan: object) -> dict:
    return compute_bill(samples, p, BillingPlan.model_validate({"direction": "out", **plan}))


def test_byteplus_16_valid_days_takes_the_231st_point() -> None:
    # BytePlus: a customer active from the 16th of a 31-day month has 16 valid days, 16 x 288 =
    # 4,608 points; the top floor(5 % x 4,608) = 230 are dropped and the 231st is billed.
    p = period(2026, 1)
    got = bill(distinct_from_day(p, 16), p, days="valid")
    assert (got["valid_days"], got["days_in_period"], got["samples"], got["rank"]) == (16, 31, 4608, 231)
    assert got["bps"] == 2 * (4608 - 230)  # the 231st highest of 1..4608 units
    assert got["proration"] == "0.51612903"  # 16 / 31
    assert got["billable_bps"] == round(2 * 4378 * 16 / 31)
    # Today's rule (days=all) counts all 8,928 intervals: the 447th highest, unprorated.
    all_days = bill(distinct_from_day(p, 16), p, days="all")
    assert (all_days["samples"], all_days["rank"], all_days["bps"], all_days["proration"]) == (
        8928, 447, 2 * (4608 - 446), "1.00000000")


@pytest.mark.parametrize(("month", "points", "rank"), [(1, 8928, 447), (4, 8640, 433), (2, 8064, 404)])
def test_idc_95th_drops_floor_5_percent(month: int, points: int, rank: int) -> None:
    # IDC / transit: 8,928 points (31 days) -> the 447th; 8,640 (30 days) -> the 433rd.
    p = period(2026, month)
    got = bill(distinct_from_day(p, 1), p, days="valid")
    assert (got["samples"], got["rank"], got["bps"]) == (points, rank, 2 * (points - rank + 1))
    assert got["proration"] == "1.00000000" and got["billable_bps"] == got["bps"]


def test_huawei_valid_days_times_288() -> None:
    # Huawei: 95th over X x 288 points for X valid days (here 10: 2,880 points, the 145th).
    p = period(2026, 6)
    samples = {t: v for t, v in distinct_from_day(p, 1).items() if t < p.day_bounds[10]}
    got = bill(samples, p, days="valid")
    assert (got["valid_days"], got["samples"], got["rank"]) == (10, 2880, 145)
    assert got["bps"] == 2 * (2880 - 144) and got["proration"] == "0.33333333"


def test_baidu_26_of_31_days_proration() -> None:
    # Baidu: 26 days used in a 31-day month bills 26 / 31 = 0.83870968 of the monthly figure.
    p = period(2026, 3)
    samples = {p.day_bounds[d] + 3600: (0, UNIT * 10) for d in range(26)}  # one busy hour a day
    got = bill(samples, p, days="valid")
    assert (got["valid_days"], got["days_in_period"], got["proration"]) == (26, 31, "0.83870968")
    # 26 x 288 = 7,488 points, 26 of them at 20 bit/s: the 375th highest is 0.
    assert (got["rank"], got["bps"]) == (375, 0)
    peak = bill(samples, p, days="valid", mode="month_avg_day_peak")
    assert (peak["bps"], peak["billable_bps"]) == (20, round(20 * 26 / 31))


@pytest.mark.parametrize("days", ["all", "valid"])
def test_alibaba_4th_daily_peak_is_0_with_fewer_than_4_days(days: str) -> None:
    p = period(2026, 5)
    three = {p.day_bounds[d]: (0, UNIT * (d + 1)) for d in range(3)}
    got = bill(three, p, mode="month_4th_day_peak", days=days)
    assert (got["bps"], got["rank"]) == (0, 4)
    four = {**three, p.day_bounds[10]: (0, UNIT * 50)}
    assert bill(four, p, mode="month_4th_day_peak", days=days)["bps"] == 2  # peaks 100, 6, 4, 2 bit/s


def test_avg_day_peak_leaves_out_the_running_day() -> None:
    # Alibaba's average of daily peaks excludes the current day: on the 4th, days 1-3 count.
    p = period(2026, 5, cutoff_day=4)
    samples = {p.day_bounds[0]: (0, UNIT), p.day_bounds[1]: (0, UNIT * 2), p.day_bounds[3] - 300: (0, UNIT * 6),
               p.day_bounds[3]: (0, UNIT * 1000)}  # the running day's spike is not counted
    p = Period(p.start, p.day_bounds[3] + 600, p.day_bounds, p.zone)
    got = bill(samples, p, mode="month_avg_day_peak")
    assert (got["bps"], got["days_counted"]) == (6, 3)  # (2 + 4 + 12) / 3
    assert [d["counted"] for d in got["daily"]] == [True, True, True, False]
    assert got["daily"][3] == {"date": "2026-05-04", "bps": 2000, "rank": 1, "samples": 2, "valid": True,
                               "complete": False, "counted": False}


def test_top5_day_peak_takes_each_days_nth_sample_and_the_top_5_days() -> None:
    # Tencent / Huawei packages: a day's peak is its 5th-highest of 288 points; the month is the
    # mean of the 5 highest daily peaks.
    p = period(2026, 4)
    samples = {}
    for d in range(7):  # day d: ten samples 1..10 units, plus d units on each
        for i in range(10):
            samples[p.day_bounds[d] + 300 * i] = (0, UNIT * (i + 1 + d))
    got = bill(samples, p, mode="month_top5_day_peak")
    # Day d's 5th highest is 6 + d units; the top 5 days are d = 2..6: mean 10 units = 20 bit/s.
    assert (got["bps"], got["rank"]) == (20, 5)
    assert bill(samples, p, mode="month_top5_day_peak", day_rank=1)["bps"] == 2 * 14  # mean of 12..16 units


def test_avg_day95_and_day_peak() -> None:
    p = period(2026, 4)
    samples = {p.day_bounds[d] + 300 * i: (0, UNIT * (i + 1)) for d in range(2) for i in range(288)}
    got = bill(samples, p, mode="month_avg_day95")
    # Each 288-point day drops its top 14 and takes the 15th: 274 units; days 3-30 take 0.
    assert (got["rank"], got["days_counted"]) == (15, 30)
    assert got["bps"] == round(2 * 274 * 2 / 30)
    peaks = bill(samples, p, mode="day_peak")
    assert peaks["bps"] == 2 * 576 and [d["bps"] for d in peaks["daily"][:3]] == [576, 576, 0]


def test_night_half95_halves_the_window() -> None:
    p = period(2026, 4, ZoneInfo("Asia/Shanghai"))
    # One busy day in Shanghai: a 95th over its 288 points (days=valid) takes the 15th highest.
    dense = {t: (0, UNIT * 1000) for t in range(p.start, p.start + 86400, 300)}
    default = bill(dense, p, mode="night_half95", days="valid")
    assert (default["samples"], default["rank"], default["bps"]) == (288, 15, 2000)  # 16 h at full price
    # 00:00-23:00 at half leaves 12 full-price points: the 15th highest is a halved one.
    long_night = bill(dense, p, mode="night_half95", days="valid", night_window="00:00-23:00")
    assert long_night["bps"] == 1000
    # A window may wrap midnight: 22:00-21:00 leaves one full-price hour (12 points).
    assert bill(dense, p, mode="night_half95", days="valid", night_window="22:00-21:00")["bps"] == 1000
    assert bill(dense, p, mode="month95", days="valid")["bps"] == 2000


@pytest.mark.parametrize("direction", ["in", "out", "max", "avg"])
def test_directions(direction: str) -> None:
    p = period(2026, 4)
    samples = {p.start: (300, 150), p.start + 300: (75, 600)}
    got = bill(samples, p, mode="day_peak", direction=direction)
    # in: 8 / 2 bit/s; out: 4 / 16; max: 8 / 16; avg: 6 / 9 -> the day's peak.
    assert got["daily"][0]["bps"] == {"in": 8, "out": 16, "max": 16, "avg": 9}[direction]


def test_night_window_follows_the_local_clock_across_dst() -> None:
    # New York springs forward at 02:00 on 2026-03-08: a 23-hour day of 276 samples (rank 14).
    # With the window 03:00-01:00 only 01:00-01:55 is full price (12 samples): the 14th is halved.
    ny = ZoneInfo("America/New_York")
    p = period(2026, 3, ny)
    day = p.day_bounds[7]
    assert p.day_bounds[8] - day == 23 * 3600
    dense = {t: (0, UNIT * 1000) for t in range(day, p.day_bounds[8], 300)}
    got = bill(dense, p, mode="night_half95", days="valid", night_window="03:00-01:00")
    assert (got["samples"], got["rank"], got["bps"]) == (276, 14, 1000)
