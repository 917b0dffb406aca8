"""A wrong local-time computation in boundaries() fails fast instead of looping for ever (the
audit's mutant: local midnight computed in UTC never advances west of UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from service import timezones

pytestmark = pytest.mark.timeout(10)
NY = ZoneInfo("America/New_York")
START = 1_780_000_000


def test_correct_boundaries_still_work() -> None:
    days = timezones.boundaries(START, START + 10 * 86400, 86400, NY)
    assert len(days) in (11, 12) and days == sorted(set(days))


@pytest.mark.parametrize("broken", [
    lambda b, step, zone: b,  # never advances
    lambda b, step, zone: b - step,  # goes backwards
    lambda b, step, zone: b + 1,  # advances, far too slowly
])
def test_a_boundary_that_does_not_advance_raises(monkeypatch: pytest.MonkeyPatch, broken) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(timezones, "next_boundary", broken)
    with pytest.raises(timezones.BoundaryError):
        timezones.boundaries(START, START + 30 * 86400, 86400, NY)


def test_midnight_in_utc_mutant_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    def utc_midnight(day: date, zone: ZoneInfo) -> int:
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())

    monkeypatch.setattr(timezones, "local_midnight", utc_midnight)
    with pytest.raises(timezones.BoundaryError):
        timezones.boundaries(START, START + 3 * 86400, 86400, NY)
