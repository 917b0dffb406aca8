"""Unit tests of the billing arithmetic's rounding (the API test covers the rule end to end)."""

from __future__ import annotations

from service.billing import bandwidth_bps, bps


def test_bps_rounds_half_up_once() -> None:
    assert bps(300) == 8  # 300 bytes in 300 s = 8 bit/s exactly
    assert bps(19) == 1  # 0.507 bit/s
    assert bps(18) == 0  # 0.48 bit/s
    assert bps(75, 4) == 1  # 75 bytes over 4 intervals: 0.5 bit/s, half up
    assert bps(10**30) == 10**30 * 8 // 300 + 1  # exact far past 64 bits (…6.67 rounds up)
    assert bps(5, 0) == 0


def test_bandwidth_bps_divides_daily_peaks_by_days() -> None:
    stats = {"p95": {"in": 300, "out": 0, "max": 300}, "peak": {"in": 3000, "out": 600, "max": 3000},
             "daily_peak_sum": {"in": 3300, "out": 600, "max": 3600}, "days": {"in": 2, "out": 2, "max": 2}}
    assert bandwidth_bps(stats) == {"p95": {"in": 8, "out": 0, "max": 8}, "peak": {"in": 80, "out": 16, "max": 80},
                                    "daily_peak_avg": {"in": 44, "out": 8, "max": 48}}
