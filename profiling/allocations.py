"""Allocation report of a capture: hot spots between start and stop with tracemalloc, or a cheap
memory summary when tracing is off for that capture.

tracemalloc is started only if nobody else started it, and stopped only if we started it, so an
application that traces memory on its own keeps doing so.
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
from datetime import UTC, datetime

import psutil

from .settings import ProfilingSettings


class MemorySummary:
    """What memory did during a capture without tracing allocations: nearly free."""

    def __init__(self, reason: str) -> None:
        self._reason = reason
        self._started_at = datetime.now(UTC)
        self._rss = _rss()
        self._blocks = sys.getallocatedblocks()
        self._collections = [s["collections"] for s in gc.get_stats()]

    def stop(self, top: int) -> str:
        rss, blocks = _rss(), sys.getallocatedblocks()
        collections = [s["collections"] for s in gc.get_stats()]
        pairs = zip(self._collections, collections, strict=False)
        gc_runs = ", ".join(f"gen{i}: {b - a}" for i, (a, b) in enumerate(pairs))
        return "\n".join(
            [
                f"# Memory summary, capture start ({self._started_at.isoformat()}) to stop "
                f"({datetime.now(UTC).isoformat()})",
                f"# Allocation sites were not traced: {self._reason}.",
                "# For sites, start a capture with tracemalloc (POST start with tracemalloc=true) or list",
                "# this trigger in profiling.tracemalloc_triggers; tracing slows allocation-heavy code.",
                "",
                f"rss            {_size(self._rss)} -> {_size(rss)} ({_signed(rss - self._rss)})",
                f"python blocks  {self._blocks} -> {blocks} ({blocks - self._blocks:+d})",
                f"gc collections {gc_runs}",
                f"gc objects now {sum(gc.get_count())} pending in young generations",
            ]
        ) + "\n"


class AllocationTracker:
    def __init__(self, frames: int = 1) -> None:
        self._frames = frames
        self._owned = False
        self._baseline: tracemalloc.Snapshot | None = None
        self._frozen: tuple[tracemalloc.Snapshot, int, int, datetime] | None = None
        self._started_at: datetime | None = None
        self._lock = threading.Lock()  # freeze() runs from a timer and from stop(), in threads

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

    def freeze(self) -> None:
        """End the traced window early (tracing is costly): snapshot now, stop tracing if ours."""
        with self._lock:
            if self._baseline is None or self._frozen is not None or not tracemalloc.is_tracing():
                return
            current, peak = tracemalloc.get_traced_memory()
            self._frozen = (tracemalloc.take_snapshot(), current, peak, datetime.now(UTC))
            if self._owned:
                tracemalloc.stop()
                self._owned = False

    def stop(self, top: int) -> str:
        """The report of the traced window; stops tracing if we started it."""
        self.freeze()
        if self._baseline is None or self._frozen is None:
            return "# tracemalloc was not tracing during this capture\n"
        snapshot, current, peak, until = self._frozen
        baseline, self._baseline, self._frozen = self._baseline, None, None
        return format_report(snapshot, baseline, top, current, peak, self._started_at, until)


def format_report(
    snapshot: tracemalloc.Snapshot,
    baseline: tracemalloc.Snapshot,
    top: int,
    current: int,
    peak: int,
    started_at: datetime | None,
    until: datetime | None = None,
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
        f"# and the end of tracing ({(until or datetime.now(UTC)).isoformat()}); memory still held then,",
        "# by source line.",
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


def _rss() -> int:
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return 0


def _signed(n: int) -> str:
    return ("+" if n >= 0 else "-") + _size(abs(n))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def start_allocations(settings: ProfilingSettings, trigger: str, trace: bool | None,
                      duration: float) -> tuple[AllocationTracker | MemorySummary, float | None]:
    """What a capture records about memory, and when allocation tracing freezes (None: never)."""
    if trace is None:
        trace = trigger in settings.tracemalloc_triggers
    if settings.tracemalloc and trace:
        tracker = AllocationTracker(settings.tracemalloc_frames)
        tracker.start()
        return tracker, min(settings.tracemalloc_max_s, duration)
    if settings.tracemalloc:
        return MemorySummary(f"trigger {trigger!r} is not in profiling.tracemalloc_triggers"), None
    return MemorySummary("profiling.tracemalloc is off"), None
