"""Allocation reports: tracemalloc sites within a bounded window, or the cheap memory summary."""

from __future__ import annotations

import tracemalloc

from profiling.allocations import AllocationTracker, MemorySummary

_kept: list[bytes] = []


def allocate_recognisably() -> None:
    _kept.extend(bytes(1000) for _ in range(2000))


def test_tracker_reports_the_sites_that_grew_and_stops_tracing():
    assert not tracemalloc.is_tracing()
    tracker = AllocationTracker(frames=1)
    tracker.start()
    allocate_recognisably()
    report = tracker.stop(top=10)
    assert not tracemalloc.is_tracing()
    lines = report.splitlines()
    first_row = lines[lines.index(next(x for x in lines if x.lstrip().startswith("rank"))) + 1]
    assert "test_profiling_allocations.py" in first_row  # the top site is ours
    assert "MiB" in report or "KiB" in report
    _kept.clear()


def test_freeze_ends_the_window_and_later_allocations_are_not_counted():
    tracker = AllocationTracker(frames=1)
    tracker.start()
    tracker.freeze()
    assert not tracemalloc.is_tracing()  # the costly part is over
    allocate_recognisably()
    report = tracker.stop(top=10)
    assert "test_profiling_allocations.py" not in report
    _kept.clear()


def test_someone_elses_tracing_is_left_running():
    tracemalloc.start(1)
    try:
        tracker = AllocationTracker(frames=1)
        tracker.start()
        allocate_recognisably()
        assert "test_profiling_allocations.py" in tracker.stop(top=5)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
        _kept.clear()


def test_memory_summary_says_why_sites_are_missing():
    summary = MemorySummary("trigger 'cpu' is not in profiling.tracemalloc_triggers")
    allocate_recognisably()
    text = summary.stop(top=10)
    assert "not traced" in text and "tracemalloc_triggers" in text and "rss" in text
    assert not tracemalloc.is_tracing()
    _kept.clear()
