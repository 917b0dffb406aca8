"""Unit tests of the billing arithmetic's edges (the API test covers it end to end)."""

from __future__ import annotations

from service.billing import bandwidth, bps, p95


def test_p95_drops_floor_of_five_percent() -> None:
    assert p95([]) == 0
    assert p95(list(range(1, 20))) == 19  # 19 intervals: floor(0.95) = 0 dropped, the maximum
    assert p95(list(range(1, 21))) == 19  # 20 intervals: the top one dropped
    assert p95(list(range(1, 41))) == 38  # 40: two dropped
    assert p95([5] * 100) == 5


def test_bps_rounds_half_up_once() -> None:
    assert bps(300) == 8  # 300 bytes in 300 s = 8 bit/s exactly
    assert bps(19) == 1  # 0.507 bit/s
    assert bps(18) == 0  # 0.48 bit/s
    assert bps(75, 4) == 1  # 75 bytes over 4 intervals: 0.5 bit/s, half up
    assert bps(10**30) == 10**30 * 8 // 300 + 1  # exact far past 64 bits (…6.67 rounds up)
    assert bps(5, 0) == 0


def test_bandwidth_counts_empty_intervals_and_days() -> None:
    day = 86400
    rows = {0: (300, 600), day: (3000, 0)}  # one busy interval on each of two days
    bw = bandwidth(0, 2 * day, [0, day, 2 * day], rows)
    assert bw.peak == {"in": 80, "out": 16, "max": 80}
    assert bw.p95 == {"in": 0, "out": 0, "max": 0}  # 576 intervals: 28 dropped, the rest empty
    assert bw.daily_peak_avg == {"in": 44, "out": 8, "max": 48}  # (8 + 80) / 2, (16 + 0) / 2, (16 + 80) / 2
