"""The billing modes (service.billing_plan) computed over a period's 5-minute samples.

A sample is one 5-minute interval's bytes in the plan's direction; an interval without a row is 0.
Figures stay exact fractions of bytes per interval until the end, where each bits/s figure is
rounded once, half up (service.billing.bps). The README documents each mode with an example."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from service.billing import INTERVAL
from service.billing_plan import BillingPlan, window_minutes

DAY_MODES = ("day_peak", "month_avg_day_peak", "month_4th_day_peak", "month_avg_day95", "month_top5_day_peak")
TOP_DAYS = 5  # month_top5_day_peak averages this many daily figures


@dataclass(frozen=True, slots=True)
class Period:
    start: int
    cutoff: int  # intervals before this are counted (the period end, or the last complete interval)
    day_bounds: list[int]  # local day starts from start to the period end (its last element)
    zone: ZoneInfo


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    values: list[int]  # scaled samples from the day's start to its end or the cutoff
    complete: bool
    valid: bool  # more than 0 bytes in the plan's direction


def half_up_bps(interval_bytes: Fraction) -> int:
    """Bits per second of a (fractional) byte count per interval, rounded once, halves up."""
    x = interval_bytes * 8 / INTERVAL
    return (x.numerator * 2 + x.denominator) // (2 * x.denominator)


def decimal_8(x: Fraction) -> str:
    """A non-negative fraction with 8 decimals, rounded half up (Baidu's 26 / 31 = 0.83870968)."""
    q = (x.numerator * 10**8 * 2 + x.denominator) // (2 * x.denominator)
    return f"{q // 10**8}.{q % 10**8:08d}"


def rank_95(n: int) -> int:
    """1-based rank of the 95th percentile among n samples: the top floor(5 % x n) are dropped."""
    return n * 5 // 100 + 1


def kth_highest(values: list[int], k: int) -> int:
    """The k-th highest value (1-based); 0 when there are fewer than k (missing samples are 0)."""
    if k > len(values):
        return 0
    return heapq.nlargest(k, values)[-1]


def _raw(samples: Mapping[int, tuple[int, int]], direction: str, a: int, b: int) -> list[int]:
    """The day's samples in a direction; avg is kept doubled (in + out) so it stays an integer."""
    get, zero, ts = samples.get, (0, 0), range(a, b, INTERVAL)
    if direction == "in":
        return [get(t, zero)[0] for t in ts]
    if direction == "out":
        return [get(t, zero)[1] for t in ts]
    if direction == "max":
        return [max(get(t, zero)) for t in ts]
    return [sum(get(t, zero)) for t in ts]


def _night_minutes(plan: BillingPlan) -> tuple[int, int]:
    return window_minutes(plan.night_window)


def _in_window(minute: int, window: tuple[int, int]) -> bool:
    a, b = window
    return a <= minute < b if a < b else minute >= a or minute < b  # a window may wrap midnight


def _local_minutes(a: int, b: int, zone: ZoneInfo) -> list[int]:
    """Local minute of the day of each interval start in [a, b)."""
    first, last = datetime.fromtimestamp(a, zone), datetime.fromtimestamp(max(a, b - INTERVAL), zone)
    off = first.utcoffset()
    if off is not None and off == last.utcoffset():  # no DST change inside: plain arithmetic
        shift = int(off.total_seconds())
        return [(t + shift) % 86400 // 60 for t in range(a, b, INTERVAL)]
    out = []
    for t in range(a, b, INTERVAL):
        dt = datetime.fromtimestamp(t, zone)
        out.append(dt.hour * 60 + dt.minute)
    return out


def build_days(samples: Mapping[int, tuple[int, int]], period: Period, plan: BillingPlan) -> tuple[list[Day], int]:
    """The begun local days with their scaled samples, and the divisor that turns a scaled value
    back into bytes per interval."""
    divisor = 2 if plan.direction == "avg" else 1
    night = _night_minutes(plan) if plan.mode == "night_half95" else None
    if night is not None:
        divisor *= 2  # day samples doubled, night samples kept: night counts at half
    days = []
    for a, b in zip(period.day_bounds, period.day_bounds[1:], strict=False):
        if a >= period.cutoff:
            break
        end = min(b, period.cutoff)
        raw = _raw(samples, plan.direction, a, end)
        values = raw
        if night is not None:
            values = [v if _in_window(m, night) else 2 * v
                      for v, m in zip(raw, _local_minutes(a, end, period.zone), strict=True)]
        days.append(Day(datetime.fromtimestamp(a, period.zone).date(), values, b <= period.cutoff,
                        any(raw)))
    return days, divisor


def _daily_figure(values: list[int], plan: BillingPlan) -> tuple[int, int]:
    """(figure, rank) of one day under a day-based mode."""
    if plan.mode == "month_avg_day95":
        rank = rank_95(len(values))
    elif plan.mode == "month_top5_day_peak":
        rank = plan.day_rank
    else:
        rank = 1
    return kth_highest(values, rank), rank


def _mean(values: list[int]) -> Fraction:
    return Fraction(sum(values), len(values)) if values else Fraction(0)


def compute_bill(samples: Mapping[int, tuple[int, int]], period: Period, plan: BillingPlan) -> dict[str, Any]:
    """The `bill` object of the billing response for ``plan`` (see the README for each rule)."""
    days, divisor = build_days(samples, period, plan)
    days_in_period = len(period.day_bounds) - 1
    valid_days = sum(d.valid for d in days)
    counted = [d for d in days if d.valid or plan.days == "all"]
    prorate = plan.days == "valid" and plan.mode != "day_peak"  # day_peak bills each day on its own
    factor = Fraction(valid_days, days_in_period) if prorate else Fraction(1)
    out: dict[str, Any] = {"mode": plan.mode, "direction": plan.direction, "days": plan.days,
                           "valid_days": valid_days, "days_in_period": days_in_period,
                           "proration": decimal_8(factor)}
    if plan.mode in DAY_MODES:
        figure, rank, per_day, n_samples = _day_mode(days, counted, plan, divisor)
        out.update(samples=n_samples, rank=rank, days_counted=sum(1 for d in counted if d.complete),
                   daily=per_day)
    else:
        values = [v for d in counted for v in d.values]
        rank = rank_95(len(values)) if values else 0
        figure = Fraction(kth_highest(values, rank), divisor) if values else Fraction(0)
        out.update(samples=len(values), rank=rank, days_counted=None, daily=None)
    if plan.mode == "day_peak":
        out["bps"] = sum(d["bps"] for d in out["daily"] if d["counted"])
        out["billable_bps"] = out["bps"]
    else:
        out["bps"] = half_up_bps(figure)
        out["billable_bps"] = half_up_bps(figure * factor)
    return out


def _day_mode(days: list[Day], counted: list[Day], plan: BillingPlan,
              divisor: int) -> tuple[Fraction, int | None, list[dict[str, Any]], int]:
    """Monthly figure (bytes per interval), rank, the per-day list and the samples counted. Only
    complete days count: the running day's figure is still moving (it is listed, not counted)."""
    counted_ids = {id(d) for d in counted if d.complete}
    per_day, figures, ranks = [], [], set()
    for d in days:
        fig, rank = _daily_figure(d.values, plan)
        use = id(d) in counted_ids
        per_day.append({"date": d.day.isoformat(), "bps": half_up_bps(Fraction(fig, divisor)), "rank": rank,
                        "samples": len(d.values), "valid": d.valid, "complete": d.complete, "counted": use})
        if use:
            figures.append(fig)
            ranks.add(rank)
    n_samples = sum(len(d.values) for d in days if id(d) in counted_ids)
    if plan.mode == "month_4th_day_peak":
        return Fraction(kth_highest(figures, 4), divisor), 4, per_day, n_samples
    if plan.mode == "month_top5_day_peak":
        top = heapq.nlargest(TOP_DAYS, figures)
        return _mean(top) / divisor, plan.day_rank, per_day, n_samples
    month_rank = ranks.pop() if len(ranks) == 1 else None  # month_avg_day95 on DST days: see each day
    return _mean(figures) / divisor, month_rank if plan.mode == "month_avg_day95" else 1, per_day, n_samples
