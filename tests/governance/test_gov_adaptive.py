"""Deterministic decisions of the adaptive limiter: fake clock, fake CPU and loop-lag samples."""

from __future__ import annotations

import pytest

from governance.plugins.adaptive import AdaptiveLimiter, AdaptiveSettings
from tests.governance.gov_helpers import FakeClock


def fill_history(lim: AdaptiveLimiter, clock: FakeClock, *, seconds: float, per_bucket: int, rt: float) -> None:
    """`per_bucket` successful calls of latency `rt` in every 100 ms bucket for `seconds`."""
    for _ in range(round(seconds / 0.1)):
        for _ in range(per_bucket):
            assert lim.acquire() is None
            lim.release(rt, success=True)
        clock.advance(0.1)


def heat(lim: AdaptiveLimiter, clock: FakeClock, *, cpu: float, lag: float, ticks: int = 20) -> None:
    for _ in range(ticks):
        clock.advance(0.05)
        lim.tick(cpu, lag)


@pytest.fixture
def lim(clock: FakeClock) -> AdaptiveLimiter:
    return AdaptiveLimiter(AdaptiveSettings(), clock=clock)


def test_window_estimates_little_law_capacity(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.05)
    lim.tick(0.0, 0.0)
    assert lim.max_pass == 10
    assert lim.min_rt == pytest.approx(0.05)
    assert lim.max_inflight == 5  # 10 per 100 ms x 50 ms


def test_hot_cpu_sheds_beyond_capacity_bbr_rule(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.05)
    heat(lim, clock, cpu=0.95, lag=0.0)
    assert lim.cpu >= 0.8 and lim.conc_armed
    admitted = [lim.acquire() for _ in range(6)]
    assert admitted == [None] * 6  # in-flight may reach max_inflight + 1 (probing headroom)
    assert lim.acquire() == "concurrency"
    assert lim.inflight == 6


def test_cpu_reacts_within_a_second(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=1, per_bucket=10, rt=0.05)
    heat(lim, clock, cpu=1.0, lag=0.0, ticks=14)  # 0.7 s of saturated samples
    assert lim.conc_armed, f"cpu EMA only {lim.cpu:.2f} after 0.7 s"


def test_cool_cpu_without_queueing_never_sheds(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.05)
    heat(lim, clock, cpu=0.5, lag=0.001)
    assert [lim.acquire() for _ in range(50)] == [None] * 50


def test_latency_gradient_sheds_io_bound_overload_with_idle_cpu(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.02)  # capacity 10/100ms at 20 ms
    heat(lim, clock, cpu=0.1, lag=0.0, ticks=2)
    assert not lim.conc_armed
    fill_history(lim, clock, seconds=1, per_bucket=10, rt=0.08)  # queueing downstream: 4x latency
    heat(lim, clock, cpu=0.1, lag=0.0, ticks=1)
    assert lim.conc_armed and lim.cpu < 0.8
    assert lim.max_inflight == 2
    assert [lim.acquire() for _ in range(3)] == [None, None, None]
    assert lim.acquire() == "concurrency"


def test_cooloff_keeps_shedding_for_one_second_after_last_drop(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.05)
    heat(lim, clock, cpu=0.95, lag=0.0)
    for _ in range(6):
        lim.acquire()
    assert lim.acquire() == "concurrency"
    heat(lim, clock, cpu=0.0, lag=0.0, ticks=12)  # 0.6 s later the CPU is cool again
    assert not lim.conc_armed
    assert lim.acquire() == "concurrency"  # still inside the cool-off
    clock.advance(1.01)
    assert lim.acquire() is None


def test_failures_are_not_passes(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    for _ in range(20):
        for _ in range(10):
            lim.acquire()
            lim.release(0.01, success=False)
        clock.advance(0.1)
    lim.tick(1.0, 0.0)
    assert lim.max_pass == 0 and lim.max_inflight == 0 and lim.inflight == 0


def test_loop_lag_arms_rate_cap_when_inflight_cannot_see_the_queue(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    # CPU-bound asyncio route: one call at a time, 10 ms each, 10 per bucket -> 100 calls/s.
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.01)
    heat(lim, clock, cpu=1.0, lag=0.05, ticks=4)  # the ready queue holds ~50 ms of work
    assert lim.rate_armed
    start_rate = lim.rate
    assert 0 < start_rate <= 100.0
    assert lim.acquire() is None
    lim.release(0.01, True)
    assert lim.acquire() == "queueing"  # no token yet: in-flight is 0, yet we shed
    clock.advance(1.0 / lim.rate)
    assert lim.acquire() is None
    lim.release(0.01, True)
    # Lag stays high -> the admission rate keeps shrinking (multiplicative decrease).
    heat(lim, clock, cpu=1.0, lag=0.05, ticks=3)
    assert lim.rate < start_rate
    low = lim.rate
    # Queue drained -> rate probes upward again.
    heat(lim, clock, cpu=1.0, lag=0.0, ticks=20)
    assert lim.rate > low


def test_rate_cap_disarms_after_cooloff_when_lag_is_gone(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.01)
    heat(lim, clock, cpu=1.0, lag=0.05, ticks=4)
    lim.acquire()
    lim.release(0.01, True)
    assert lim.acquire() == "queueing"
    heat(lim, clock, cpu=0.3, lag=0.0, ticks=30)  # 1.5 s quiet
    assert not lim.rate_armed
    assert [lim.acquire() for _ in range(20)] == [None] * 20


def test_lag_below_noise_floor_is_not_overload(clock: FakeClock) -> None:
    lim = AdaptiveLimiter(AdaptiveSettings(lag_floor=0.005), clock=clock)
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.001)  # min_rt 1 ms < floor
    heat(lim, clock, cpu=0.5, lag=0.004)
    assert not lim.rate_armed


def test_retry_after_comes_from_cooloff_and_queue_delay(lim: AdaptiveLimiter, clock: FakeClock) -> None:
    fill_history(lim, clock, seconds=2, per_bucket=10, rt=0.01)
    assert lim.retry_after() == 1.0
    heat(lim, clock, cpu=1.0, lag=2.5, ticks=40)
    assert lim.retry_after() == 4.0  # ceil(1 s cool-off + ~2.5 s of queue)


def test_release_balances_inflight(lim: AdaptiveLimiter) -> None:
    for _ in range(5):
        lim.acquire()
    for _ in range(5):
        lim.release(0.01, success=False)
    assert lim.inflight == 0
