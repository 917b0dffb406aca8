"""Outbound breaker (governance's own): opens after consecutive failures, fails fast with a typed
error while open, lets one trial through after the reset timeout and closes on its success."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from governance import DependencyUnavailable, Governance


class Dependency:
    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def produce(self, value: int) -> int:
        self.calls += 1
        if not self.up:
            raise ConnectionError("broker down")
        return value


def state(reg: CollectorRegistry, name: str) -> float | None:
    return reg.get_sample_value("governance_breaker_state", {"breaker": name})


async def test_opens_fails_fast_and_recovers_after_reset_timeout() -> None:
    reg = CollectorRegistry()
    gov = Governance.from_config({"plugins": []}, registry=reg)
    breaker = gov.outbound_breaker("kafka", fail_max=3, reset_timeout=0.3)
    dep = Dependency()
    assert state(reg, "kafka") == 0

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(dep.produce, 1)
    with pytest.raises(DependencyUnavailable) as info:  # the third failure trips it
        await breaker.call(dep.produce, 1)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert breaker.state == "open" and state(reg, "kafka") == 1

    calls_before = dep.calls
    for _ in range(100):
        with pytest.raises(DependencyUnavailable) as info:
            async with breaker:
                await dep.produce(1)
    assert dep.calls == calls_before  # never touched while open
    assert info.value.name == "kafka" and 0 < info.value.retry_after <= 0.3
    assert reg.get_sample_value("governance_breaker_rejections_total", {"breaker": "kafka"}) == 100

    await asyncio.sleep(0.35)
    assert breaker.state == "half_open" and state(reg, "kafka") == 2
    dep.up = True
    assert await breaker.call(dep.produce, 7) == 7  # the trial call closes it
    assert breaker.state == "closed" and state(reg, "kafka") == 0


async def test_failed_trial_reopens() -> None:
    breaker = Governance.from_config({"plugins": []}, registry=CollectorRegistry()).outbound_breaker(
        "db", fail_max=1, reset_timeout=0.1)
    dep = Dependency()
    with pytest.raises(DependencyUnavailable):
        await breaker.call(dep.produce, 1)
    await asyncio.sleep(0.12)
    with pytest.raises(DependencyUnavailable):
        async with breaker:
            await dep.produce(1)
    assert breaker.state == "open"


async def test_timeout_counts_as_failure_and_success_resets_count() -> None:
    breaker = Governance.from_config({"plugins": []}, registry=CollectorRegistry()).outbound_breaker(
        "slow", fail_max=2, reset_timeout=5, timeout=0.05)
    with pytest.raises(TimeoutError):
        async with breaker:
            await asyncio.sleep(1)
    assert breaker.fail_counter == 1
    async with breaker:
        await asyncio.sleep(0)
    assert breaker.fail_counter == 0
    for _ in range(2):
        with pytest.raises((TimeoutError, DependencyUnavailable)):
            await breaker.call(asyncio.sleep, 1)
    assert breaker.state == "open"


async def test_excluded_errors_do_not_count() -> None:
    breaker = Governance.from_config({"plugins": []}, registry=CollectorRegistry()).outbound_breaker(
        "db2", fail_max=1, exclude=[KeyError])

    async def lookup() -> None:
        raise KeyError("row")

    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(lookup)
    assert breaker.state == "closed"


async def test_cancellation_is_not_a_dependency_failure() -> None:
    breaker = Governance.from_config({"plugins": []}, registry=CollectorRegistry()).outbound_breaker(
        "k", fail_max=1)

    async def body() -> None:
        async with breaker:
            await asyncio.sleep(10)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "closed"


async def test_half_open_lets_exactly_one_trial_through() -> None:
    breaker = Governance.from_config({"plugins": []}, registry=CollectorRegistry()).outbound_breaker(
        "db3", fail_max=1, reset_timeout=0.05)
    dep = Dependency()
    with pytest.raises(DependencyUnavailable):
        await breaker.call(dep.produce, 1)
    await asyncio.sleep(0.06)
    dep.up = True
    gate = asyncio.Event()

    async def slow_trial() -> int:
        await gate.wait()
        return await dep.produce(1)

    trial = asyncio.create_task(breaker.call(slow_trial))
    await asyncio.sleep(0)
    with pytest.raises(DependencyUnavailable):  # a second caller while the trial runs
        await breaker.call(dep.produce, 2)
    gate.set()
    assert await trial == 1
    assert breaker.state == "closed" and await breaker.call(dep.produce, 3) == 3
