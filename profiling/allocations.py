"""Allocation hot spots between the start and the stop of a capture, with tracemalloc.

tracemalloc is started only if nobody else started it, and stopped only if we started it, so an
application that traces memory on its own keeps doing so.
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime


class AllocationTracker:
    def __init__(self, frames: int = 1) -> None:
        self._frames = frames
        self._owned = False
        self._baseline: tracemalloc.Snapshot | None = None
        self._started_at: datetime | None = None

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self._frames)
            self._owned = True
        else:
            tracemalloc.reset_peak()
        self._started_at = datetime.now(UTC)
        # Tracing just began, so this is nearly empty and cheap; when someone else was tracing,
        # it is what makes the report cover only the capture.
        self._baseline = tracemalloc.take_snapshot()

    def stop(self, top: int) -> str:
        """Snapshot, compare with the start and return the report; stops tracing if we started it."""
        if self._baseline is None or not tracemalloc.is_tracing():
            return "# tracemalloc was not tracing during this capture\n"
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        if self._owned:
            tracemalloc.stop()
            self._owned = False
        baseline, self._baseline = self._baseline, None
        return format_report(snapshot, baseline, top, current, peak, self._started_at)


def format_report(
    snapshot: tracemalloc.Snapshot,
    baseline: tracemalloc.Snapshot,
    top: int,
    current: int,
    peak: int,
    started_at: datetime | None,
) -> str:
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ]
    diffs = snapshot.filter_traces(ignore).compare_to(baseline.filter_traces(ignore), "lineno")
    grown = [d for d in diffs if d.size_diff > 0]
    total_growth = sum(d.size_diff for d in grown)
    lines = [
        f"# Allocation sites that grew between capture start ({started_at and started_at.isoformat()})",
        f"# and stop ({datetime.now(UTC).isoformat()}); memory still held at stop, by source line.",
        f"# traced now: {_size(current)}, peak during capture: {_size(peak)}, "
        f"growth at listed sites: {_size(total_growth)}",
        "",
        f"{'rank':>4}  {'size diff':>12}  {'size':>12}  {'blocks diff':>11}  site",
    ]
    for rank, diff in enumerate(grown[:top], start=1):
        frame = diff.traceback[0]
        lines.append(
            f"{rank:>4}  {_size(diff.size_diff):>12}  {_size(diff.size):>12}  {diff.count_diff:>+11}  "
            f"{frame.filename}:{frame.lineno}"
        )
    if not grown:
        lines.append("   (no allocation site grew)")
    return "\n".join(lines) + "\n"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"
