"""Deterministic decisions of the adaptive limiter on an injected clock, against a batching service
model (tests/governance/gov_limiter_model.py): closed loops are never shed, open-loop overload is,
fast; priorities; guard rails; the read-only snapshot."""

from __future__ import annotations

import dataclasses

import pytest

from governance.adaptive import AdaptiveLimiter, AdaptiveSettings, RouteGuard
from governance.core import SUCCESS, Call, Outcome
from tests.governance.gov_helpers import FakeClock
from tests.governance.gov_limiter_model import Model, Stats

WARM = 5.0  # seconds of traffic below capacity first: growth counts after the limiter's warm-up (3 s)


@pytest.fixture
def model(clock: FakeClock) -> Model:
    return Model(AdaptiveLimiter(AdaptiveSettings(), clock=clock), clock)


@pytest.mark.parametrize("writers", [8, 32, 128])
def test_a_closed_loop_is_never_shed(model: Model, clock: FakeClock, writers: int) -> None:
    stats = Stats()
    model.closed_loop(writers, stats)
    model.run(clock.now + 20)
    assert stats.shed_times == []
    assert stats.completed > 0.8 * model.capacity * 20 or writers == 8  # it really saturated the service
    assert not model.limiter.limit.armed


def test_a_closed_loop_with_a_stall_is_not_shed(model: Model, clock: FakeClock) -> None:
    stats = Stats()
    model.closed_loop(32, stats)
    model.run(clock.now + 3)
    model.fixed = 0.4  # one slow fsync after another for a second: latency jumps, nothing grows
    model.run(clock.now + 1)
    model.fixed = 0.005
    model.run(clock.now + 3)
    assert stats.shed_times == []


def test_latency_over_the_objective_sheds_even_a_closed_loop(model: Model, clock: FakeClock) -> None:
    stats = Stats()
    model.closed_loop(32, stats, objective=0.05)  # 32 writers wait ~130 ms: over a 50 ms objective
    model.run(clock.now + 5)
    assert stats.shed_times, "admitted latency over the route's objective must shed"
    assert model.limiter.limit.reason == "latency"


@pytest.mark.parametrize("load", [2.0, 5.0])
def test_open_loop_overload_is_shed_within_a_second(model: Model, clock: FakeClock, load: float) -> None:
    t0 = clock.now
    model.open_loop(0.5 * model.capacity, t0, t0 + WARM, Stats())
    step = t0 + WARM
    stats = Stats()
    model.open_loop(load * model.capacity, step, step + 6, stats)
    model.run(step + 6)
    assert stats.shed_times and stats.shed_times[0] - step <= 1.0
    goodput = stats.completed / 6
    assert goodput >= 0.9 * model.capacity
    assert model.limiter.limit.armed
    model.run(clock.now + 5)  # the load is gone: it disarms
    assert not model.limiter.limit.armed and model.limiter.snapshot().limit == 0


def test_no_shedding_below_capacity(model: Model, clock: FakeClock) -> None:
    stats = Stats()
    model.open_loop(0.8 * model.capacity, clock.now, clock.now + 10, stats)
    model.run(clock.now + 11)
    assert stats.shed_times == [] and stats.completed == stats.admitted


def test_a_flood_of_reads_and_exports_is_shed_and_writes_are_not(model: Model, clock: FakeClock) -> None:
    t0 = clock.now
    writes, reads, exports = Stats(), Stats(), Stats()
    end = t0 + WARM + 5
    model.open_loop(0.5 * model.capacity, t0, end, writes, priority="write", route="/w")
    model.open_loop(2.5 * model.capacity, t0 + WARM, end, reads, priority="read", objective=1.0, route="/r")
    model.open_loop(2.5 * model.capacity, t0 + WARM, end, exports, priority="export", objective=10.0,
                    route="/e")
    model.run(end + 4)
    assert writes.shed_times == [] and writes.completed == writes.admitted
    shed_share = {name: len(s.shed_times) / (len(s.shed_times) + s.admitted)
                  for name, s in (("read", reads), ("export", exports))}
    assert shed_share["export"] > 0.5 and shed_share["export"] > shed_share["read"], shed_share  # exports first


def test_critical_calls_are_never_shed_by_load(model: Model, clock: FakeClock) -> None:
    t0 = clock.now
    model.open_loop(0.5 * model.capacity, t0, t0 + WARM, Stats())
    model.open_loop(5 * model.capacity, t0 + WARM, t0 + WARM + 3, Stats())
    probes = Stats()
    model.open_loop(10, t0 + WARM + 1, t0 + WARM + 3, probes, priority="critical", route="/healthz")
    model.run(t0 + WARM + 3)
    assert model.limiter.limit.armed
    assert probes.shed_times == [] and probes.admitted == 20


def test_guard_rails_cap_inflight_calls_and_bytes_whatever_the_load(clock: FakeClock) -> None:
    lim = AdaptiveLimiter(AdaptiveSettings(), clock=clock)
    guard = RouteGuard("/w", max_inflight=3, max_bytes=1000)
    first = lim.acquire(guard, "critical", 1.0, 600)
    assert not isinstance(first, str)
    assert lim.acquire(guard, "critical", 1.0, 600) == "bytes_cap"  # 1200 bytes would be in flight
    assert not isinstance(lim.acquire(guard, "write", 1.0, 300), str)
    assert not isinstance(lim.acquire(guard, "write", 1.0, 50), str)
    assert lim.acquire(guard, "write", 1.0, 0) == "inflight_cap"
    first.release(Outcome(SUCCESS, "OK", 0.01, Call("http", "/w", "POST", None, 0.0)))
    assert (guard.inflight, guard.bytes) == (2, 350)
    big = RouteGuard("/big", max_inflight=3, max_bytes=10)
    assert not isinstance(lim.acquire(big, "write", 1.0, 5000), str)  # alone, a big call still goes


def test_dry_run_decides_and_counts_but_admits(model: Model, clock: FakeClock) -> None:
    t0 = clock.now
    model.open_loop(0.5 * model.capacity, t0, t0 + WARM, Stats())
    model.open_loop(5 * model.capacity, t0 + WARM, t0 + WARM + 2, Stats())
    model.run(t0 + WARM + 2)
    assert model.limiter.limit.armed
    guard = RouteGuard("/w", 10_000, 1 << 40)
    before = model.limiter.sheds
    listener = model.limiter.acquire(guard, "export", 10.0, dry_run=True)
    assert not isinstance(listener, str) and listener.dry_run_reason == "priority"  # writes overload: exports go
    assert model.limiter.sheds == before + 1


def test_the_stats_snapshot_is_read_only(model: Model, clock: FakeClock) -> None:
    model.closed_loop(8, Stats())
    model.run(clock.now + 1)
    stats = model.limiter.snapshot()
    assert stats.inflight == 8 and not stats.armed and stats.limit == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.limit = 5  # type: ignore[misc]


def test_settings_give_objectives_by_priority() -> None:
    assert AdaptiveSettings(priority="write").route_objective() == 5.0
    assert AdaptiveSettings(priority="export").route_objective() == 10.0
    assert AdaptiveSettings(priority="read", objective=0.3).route_objective() == 0.3
    with pytest.raises(ValueError, match="priority"):
        AdaptiveSettings(priority="urgent")  # type: ignore[arg-type]
