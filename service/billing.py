"""95th-percentile bandwidth billing over a calendar month's 5-minute intervals (rule in README).

Pure arithmetic on integers: byte counts stay exact and each bits/s figure is rounded once, to
the nearest integer (halves up), at the end."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

INTERVAL = 300  # seconds in a billing interval


def bps(total_bytes: int, intervals: int = 1) -> int:
    """Mean bits per second of ``total_bytes`` spread over ``intervals`` intervals, rounded half up."""
    if intervals == 0:
        return 0
    return (16 * total_bytes + INTERVAL * intervals) // (2 * INTERVAL * intervals)


def p95(values: list[int]) -> int:
    """Sorted high to low, the top floor(5 % of n) dropped, the next one taken (0 when empty)."""
    if not values:
        return 0
    # Only the top floor(5 %) + 1 values matter: a bounded heap instead of a full sort.
    return heapq.nlargest(len(values) * 5 // 100 + 1, values)[-1]


@dataclass(frozen=True)
class Bandwidth:
    p95: dict[str, int]
    peak: dict[str, int]
    daily_peak_avg: dict[str, int]


def bandwidth(start: int, cutoff: int, day_bounds: list[int], rows: dict[int, tuple[int, int]]) -> Bandwidth:
    """``rows`` maps interval start -> (bytes_in, bytes_out) for intervals with traffic; every
    interval in [start, cutoff) counts, those without a row as 0. ``day_bounds`` are the local day
    starts covering [start, cutoff) (the last one at or after cutoff)."""
    n = max(0, (cutoff - start) // INTERVAL)
    ins, outs = [0] * n, [0] * n
    for t, (b_in, b_out) in rows.items():
        ins[(t - start) // INTERVAL] = b_in
        outs[(t - start) // INTERVAL] = b_out
    series = {"in": ins, "out": outs, "max": list(map(max, ins, outs))}
    days = [((a - start) // INTERVAL, (min(b, cutoff) - start) // INTERVAL)
            for a, b in zip(day_bounds, day_bounds[1:], strict=False) if a < cutoff]
    out_p95, out_peak, out_daily = {}, {}, {}
    for name, values in series.items():
        out_p95[name] = bps(p95(values))
        out_peak[name] = bps(max(values, default=0))
        peaks = [max(values[a:b]) for a, b in days if b > a]
        out_daily[name] = bps(sum(peaks), len(peaks))
    return Bandwidth(out_p95, out_peak, out_daily)
