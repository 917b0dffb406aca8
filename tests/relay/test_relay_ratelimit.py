"""The per-robot sliding window: at most `limit` sends in any window, and the exact wait."""

from __future__ import annotations

import pytest

from service.relay.ratelimit import SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_spent_and_frees_exactly_one_window_after_each_send() -> None:
    clock = Clock()
    window = SlidingWindow(3, 60.0, clock)
    for step in (0.0, 10.0, 20.0):
        clock.now = 1000.0 + step
        assert window.wait_time() == 0.0
        window.record()
    assert window.remaining() == 0
    clock.now = 1030.0
    assert window.wait_time() == pytest.approx(30.0)  # the first send leaves the window at 1060
    clock.now = 1060.0
    assert window.wait_time() == 0.0 and window.remaining() == 1
    window.record()
    clock.now = 1065.0
    assert window.wait_time() == pytest.approx(5.0)  # next: the send at 1010 expires at 1070


def test_never_more_than_limit_in_any_window() -> None:
    clock = Clock()
    window = SlidingWindow(20, 60.0, clock)
    sends = []
    for _ in range(200):  # greedy sender that sends whenever allowed
        clock.now += window.wait_time() + 0.001
        window.record()
        sends.append(clock.now)
    for i in range(len(sends) - 20):
        assert sends[i + 20] - sends[i] >= 60.0


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0)
    with pytest.raises(ValueError):
        SlidingWindow(1, 0)


def test_preloaded_sends_count_until_they_leave_the_window() -> None:
    clock = Clock()
    window = SlidingWindow(3, 60.0, clock)
    window.preload([50.0, 10.0, 90.0, 59.0])  # 90 s ago is outside the window already
    assert window.remaining() == 0
    assert window.wait_time() == pytest.approx(1.0)  # the send 59 s ago leaves in 1 s
    clock.now += 1.0
    assert window.remaining() == 1
