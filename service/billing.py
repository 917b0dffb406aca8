"""Bandwidth billing arithmetic: byte counts stay exact integers and each bits/s figure is rounded
once, to the nearest integer (halves up). The order statistics come from the database
(service.storage.billing_sql); the rule is in the README."""

from __future__ import annotations

INTERVAL = 300  # seconds in a billing interval


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
