"""The in-process quota windows evict expired windows as new ones open, never by rebuilding the table
(issue 18: past 50,000 live windows every new window used to copy the whole table)."""

from __future__ import annotations

from typing import Any

from governance.plugins.quota import LocalFixedWindows


class _CountingDict(dict):  # type: ignore[type-arg]
    """Counts full walks of the table: a rebuild goes through items()/values()/keys()/iter."""

    walks = 0

    def items(self) -> Any:
        type(self).walks += 1
        return super().items()

    def values(self) -> Any:
        type(self).walks += 1
        return super().values()

    def keys(self) -> Any:
        type(self).walks += 1
        return super().keys()


def test_expired_windows_are_evicted_as_new_ones_open() -> None:
    store = LocalFixedWindows()
    for i in range(10_000):
        store.incr(f"k{i}", 1.0, now=100.0)
    # Every one of those windows has expired: opening a new one evicts them, table stays small.
    assert store.incr("fresh", 1.0, now=102.0) == (1, 103.0)
    assert len(store.windows) == 1


def test_live_windows_are_kept_and_counted() -> None:
    store = LocalFixedWindows()
    store.incr("long", 60.0, now=0.0)
    for i in range(100):
        store.incr(f"short{i}", 1.0, now=0.0)
    store.incr("other", 1.0, now=5.0)  # short ones expired, the 60 s window is live
    assert set(store.windows) == {"long", "other"}
    assert store.incr("long", 60.0, now=30.0) == (2, 60.0)
    assert store.incr("long", 60.0, now=61.0) == (1, 121.0)  # a new window after expiry


def test_no_full_table_walk_past_50000_live_windows() -> None:
    store = LocalFixedWindows()
    _CountingDict.walks = 0
    store.windows = _CountingDict()
    for i in range(50_100):
        store.incr(f"k{i}", 60.0, now=float(i) / 1000)  # all live: nothing to evict
    for i in range(200):
        store.incr(f"new{i}", 60.0, now=51.0)
    assert _CountingDict.walks == 0
    assert len(store.windows) == 50_300
