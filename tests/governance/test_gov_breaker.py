"""Deterministic decisions of the inbound SRE adaptive-throttling breaker (fake clock and RNG)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from governance.core import FAILURE, REJECTED, SUCCESS, Call, Outcome, Rejection
from governance.plugins import PluginContext
from governance.plugins.breaker import BreakerPlugin, BreakerSettings, SreBreaker
from tests.governance.gov_helpers import FakeClock

ROUTE = "/v1/traffic"


def breaker(clock: FakeClock, rng: float = 0.0, **kw: float) -> SreBreaker:
    return SreBreaker(BreakerSettings(**kw), clock=clock, rng=lambda: rng)


def test_below_min_requests_never_throttles(clock: FakeClock) -> None:
    b = breaker(clock, min_requests=20)
    for _ in range(19):
        b.record(ROUTE, success=False)
    assert b.drop_probability(ROUTE) == 0.0
    assert b.allow(ROUTE) == (True, 0.0)


def test_formula_and_rejection(clock: FakeClock) -> None:
    b = breaker(clock, k=2.0, min_requests=10)
    for _ in range(30):
        b.record(ROUTE, success=False)
    for _ in range(10):
        b.record(ROUTE, success=True)
    # requests 40, accepts 10: (40 - 2*10) / 41
    assert b.drop_probability(ROUTE) == pytest.approx(20 / 41)
    admitted, p = b.allow(ROUTE)
    assert not admitted and p == pytest.approx(20 / 41)
    # The refused attempt is itself a request (client-side view of the SRE scheme).
    assert b.drop_probability(ROUTE) == pytest.approx(21 / 42)


def test_rng_above_probability_admits(clock: FakeClock) -> None:
    b = breaker(clock, rng=0.99, min_requests=1)
    for _ in range(10):
        b.record(ROUTE, success=False)
    assert b.allow(ROUTE)[0] is True


def test_healthy_route_never_throttles(clock: FakeClock) -> None:
    b = breaker(clock, min_requests=1)
    for _ in range(1000):
        b.record(ROUTE, success=True)
    assert b.drop_probability(ROUTE) == 0.0


def test_successes_are_recorded_so_the_breaker_recovers(clock: FakeClock) -> None:
    """The sponge bug (only errors recorded) would keep this route throttled forever."""
    b = breaker(clock, min_requests=10)
    for _ in range(50):
        b.record(ROUTE, success=False)
    assert b.drop_probability(ROUTE) > 0.9
    clock.advance(2.6)  # half the window later, the dependency is healthy again
    for _ in range(60):
        b.record(ROUTE, success=True)
    assert b.drop_probability(ROUTE) == 0.0  # 110 requests, 60 accepts: 110 - 120 < 0


def test_window_slides_and_forgets(clock: FakeClock) -> None:
    b = breaker(clock, min_requests=1, window=5.0, buckets=10)
    for _ in range(100):
        b.record(ROUTE, success=False)
    clock.advance(4.0)
    assert b.drop_probability(ROUTE) > 0.9  # still inside the 5 s window
    clock.advance(1.01)
    assert b.drop_probability(ROUTE) == 0.0


def test_routes_are_independent(clock: FakeClock) -> None:
    b = breaker(clock, min_requests=1)
    for _ in range(50):
        b.record(ROUTE, success=False)
    assert b.drop_probability("/healthy") == 0.0


def test_plugin_counts_outcomes_and_rejects_as_unavailable(clock: FakeClock) -> None:
    reg = CollectorRegistry()
    roll = [0.999]  # the RNG first admits everything, then rejects whenever p > 0
    sre = SreBreaker(BreakerSettings(min_requests=5), clock=clock, rng=lambda: roll[0])
    plugin = BreakerPlugin(PluginContext(reg, "t"), BreakerSettings(min_requests=5), breaker=sre)
    call = Call("http", ROUTE, "POST", None, 0.0)
    for _ in range(10):
        token = plugin.admit(call)
        assert not isinstance(token, Rejection)
        token.release(Outcome(FAILURE, 503, 0.01, call))
    # Rejections by other plugins are not evidence either way.
    token = plugin.admit(call)
    assert not isinstance(token, Rejection)
    token.release(Outcome(REJECTED, 429, 0.0, call))
    assert sre.windows[ROUTE].total_req == 10
    roll[0] = 0.0
    refused = plugin.admit(call)
    assert isinstance(refused, Rejection)
    assert refused.status == "unavailable" and refused.plugin == "breaker"
    assert refused.retry_after >= 1
    assert reg.get_sample_value("governance_breaker_drop_ratio", {"route": ROUTE}) == pytest.approx(10 / 11)
    # ... and the refused attempt counted as a request, as SreBreaker.allow does.
    assert sre.windows[ROUTE].total_req == 11
    roll[0] = 0.999
    token = plugin.admit(call)
    assert not isinstance(token, Rejection)
    token.release(Outcome(SUCCESS, 200, 0.01, call))
    assert sre.windows[ROUTE].total_acc == 1
