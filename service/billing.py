"""Bandwidth billing arithmetic: byte counts stay exact integers and each bits/s figure is rounded
once, to the nearest integer (halves up). The order statistics are taken over the month's
5-minute rows (service.storage.billing_sql.interval_samples); the rule is in the README."""

from __future__ import annotations

import heapq
from collections.abc import Mapping

INTERVAL = 300  # seconds in a billing interval
SERIES = ("in", "out", "max")


def bps(total_bytes: int, intervals: int = 1) -> int:
    """Mean bits per second of ``total_bytes`` spread over ``intervals`` intervals, rounded half up."""
    if intervals == 0:
        return 0
    return (16 * total_bytes + INTERVAL * intervals) // (2 * INTERVAL * intervals)


def bandwidth_bps(stats: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """{p95, peak, daily_peak_avg} x {in, out, max} in bits/s from per-interval byte statistics."""
    return {"p95": {k: bps(v) for k, v in stats["p95"].items()},
            "peak": {k: bps(v) for k, v in stats["peak"].items()},
            "daily_peak_avg": {k: bps(v, stats["days"][k]) for k, v in stats["daily_peak_sum"].items()}}


def interval_stats(samples: Mapping[int, tuple[int, int]], start: int, cutoff: int,
                   day_bounds: list[int]) -> dict[str, dict[str, int]]:
    """Bytes per interval over the intervals [start, cutoff): ``p95`` (the value after dropping the
    top floor(5 % x intervals); intervals without a row are 0), ``peak``, and ``daily_peak_sum``
    with ``days``, the local days begun before cutoff (``day_bounds`` starts at ``start``)."""
    rank = max(0, (cutoff - start) // INTERVAL) * 5 // 100 + 1
    values: dict[str, list[int]] = {name: [] for name in SERIES}
    peak_sums = dict.fromkeys(SERIES, 0)  # days without traffic add 0
    days = 0
    get = samples.get
    for a, b in zip(day_bounds, day_bounds[1:], strict=False):
        if a >= cutoff:
            break
        days += 1
        rows = [v for v in map(get, range(a, min(b, cutoff), INTERVAL)) if v is not None]
        day = {"in": [v[0] for v in rows], "out": [v[1] for v in rows], "max": list(map(max, rows))}
        for name, vs in day.items():
            values[name] += vs
            peak_sums[name] += max(vs, default=0)
    return {"p95": {k: heapq.nlargest(rank, v)[-1] if rank <= len(v) else 0 for k, v in values.items()},
            "peak": {k: max(v, default=0) for k, v in values.items()},
            "daily_peak_sum": peak_sums, "days": dict.fromkeys(SERIES, days)}
