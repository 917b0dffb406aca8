"""The watchdog's decisions from fake samples: N in a row, sudden jumps, cooldown, ownership."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from profiling import CaptureInfo, WatchdogSettings
from profiling.errors import CaptureAlreadyRunning, PySpyNotFound
from profiling.metrics import ProfilingMetrics
from profiling.sampler import Sample
from profiling.watchdog import Watchdog, WatchdogPolicy


def s(cpu: float = 0.1, mem: float = 0.1) -> Sample:
    return Sample(cpu_ratio=cpu, memory_ratio=mem, host_cpu_ratio=0.2, host_memory_ratio=0.3)


def feed(policy: WatchdogPolicy, samples, start: float = 0.0, step: float = 5.0, running: bool = False):
    out = []
    for i, sample in enumerate(samples):
        out.append(policy.observe(sample, start + i * step, running))
    return out


def settings(**kw) -> WatchdogSettings:
    base = {"consecutive": 3, "cpu_threshold": 0.8, "memory_threshold": 0.8, "cooldown_s": 900}
    return WatchdogSettings(**{**base, **kw})


def test_three_consecutive_samples_over_threshold_trigger_on_the_third():
    policy = WatchdogPolicy(settings(jump_min_ratio=2.0))  # jumps off: only the streak counts
    decisions = feed(policy, [s(0.9), s(0.95), s(0.85)])
    assert decisions[:2] == [None, None]
    assert decisions[2] is not None and decisions[2].trigger == "cpu"
    assert "3 samples" in decisions[2].reason


def test_a_dip_resets_the_streak():
    policy = WatchdogPolicy(settings(jump_min_ratio=2.0))
    assert feed(policy, [s(0.9), s(0.9), s(0.5), s(0.9), s(0.9)]) == [None] * 5


def test_memory_streak_is_labelled_memory():
    policy = WatchdogPolicy(settings(jump_min_ratio=2.0))
    decisions = feed(policy, [s(mem=0.81), s(mem=0.9), s(mem=0.99)])
    assert decisions[-1] is not None and decisions[-1].trigger == "memory"


def test_sudden_jump_over_recent_average_triggers_once_history_exists():
    policy = WatchdogPolicy(settings(jump_factor=2.0, jump_min_ratio=0.5, cpu_threshold=0.95))
    decisions = feed(policy, [s(0.1), s(0.12), s(0.1), s(0.6)])
    assert decisions[:3] == [None, None, None]
    assert decisions[3] is not None and decisions[3].trigger == "cpu" and "jump" in decisions[3].reason


def test_no_jump_without_history_or_below_the_minimum():
    policy = WatchdogPolicy(settings(jump_factor=2.0, jump_min_ratio=0.5, cpu_threshold=0.95))
    assert feed(policy, [s(0.6)]) == [None]  # no recent average yet
    policy = WatchdogPolicy(settings(jump_factor=2.0, jump_min_ratio=0.5, cpu_threshold=0.95))
    assert feed(policy, [s(0.05), s(0.05), s(0.05), s(0.3)]) == [None] * 4  # 6x, but only 30%


def test_cooldown_suppresses_then_allows_a_new_trigger():
    policy = WatchdogPolicy(settings(cooldown_s=60, jump_min_ratio=2.0))
    decisions = feed(policy, [s(0.9)] * 3, start=0)
    assert decisions[-1] is not None
    policy.started("cap-1", now=10)
    # Still under pressure during the cooldown: nothing.
    assert feed(policy, [s(0.9)] * 6, start=15, step=5) == [None] * 6
    assert policy.in_cooldown(69.9)
    # After the cooldown the sustained pressure triggers again.
    assert policy.observe(s(0.9), 70.0, False) is not None


def test_never_starts_while_a_capture_is_running_and_does_not_consume_cooldown():
    policy = WatchdogPolicy(settings(jump_min_ratio=2.0))
    assert feed(policy, [s(0.9)] * 5, running=True) == [None] * 5
    assert not policy.in_cooldown(100)
    assert policy.observe(s(0.9), 30, False) is not None


def _info(capture_id: str, trigger: str) -> CaptureInfo:
    return CaptureInfo(capture_id, "svc", 1, trigger, "running", datetime.now(UTC))


def test_may_stop_only_its_own_capture():
    policy = WatchdogPolicy(settings())
    assert not policy.may_stop(_info("sig-1", "signal"))
    policy.started("wd-1", 0)
    assert policy.may_stop(_info("wd-1", "cpu"))
    assert not policy.may_stop(_info("sig-1", "signal"))
    assert not policy.may_stop(None)


class FakeController:
    """Stands in for the capture manager (logic test only; the real one is tested live)."""

    def __init__(self, running: CaptureInfo | None = None, fail: Exception | None = None) -> None:
        self.running = running
        self.fail = fail
        self.started: list[str] = []
        self.details: list[str | None] = []
        self.stopped = 0

    @property
    def current(self) -> CaptureInfo | None:
        return self.running

    async def start(self, trigger: str, duration_s: float | None = None, *, detail: str | None = None) -> CaptureInfo:
        if self.fail:
            raise self.fail
        self.started.append(trigger)
        self.details.append(detail)
        self.running = _info(f"wd-{len(self.started)}", trigger)
        return self.running

    async def stop(self, reason: str = "requested") -> CaptureInfo:
        self.stopped += 1
        info, self.running = self.running, None
        assert info is not None
        return info


async def _drive(controller: FakeController, samples, clock_values) -> Watchdog:
    it = iter(samples)
    clock = iter(clock_values)
    dog = Watchdog(
        settings(jump_min_ratio=2.0, cooldown_s=100),
        controller,
        ProfilingMetrics(CollectorRegistry()),
        sampler=lambda: next(it),
        clock=lambda: next(clock),
    )
    for _ in samples:
        await dog.run_once()
    return dog


async def test_watchdog_never_stops_a_capture_it_did_not_start():
    controller = FakeController(running=_info("sig-1", "signal"))
    dog = await _drive(controller, [s(0.9)] * 4, range(4))
    assert controller.started == []  # one is running already
    await dog.aclose()
    assert controller.stopped == 0


async def test_watchdog_stops_its_own_capture_when_closed_and_reports_readings():
    controller = FakeController()
    dog = await _drive(controller, [s(0.9)] * 3, [0, 5, 10])
    assert controller.started == ["cpu"]
    assert "3 samples" in (controller.details[0] or "")
    assert dog._metrics.cpu_ratio._value.get() == pytest.approx(0.9)
    await dog.aclose()
    assert controller.stopped == 1


async def test_failed_start_still_cools_down_and_race_does_not():
    controller = FakeController(fail=PySpyNotFound("/nope"))
    dog = await _drive(controller, [s(0.9)] * 3, [0, 5, 10])
    assert dog.policy.in_cooldown(11)
    controller = FakeController(fail=CaptureAlreadyRunning("busy"))
    dog = await _drive(controller, [s(0.9)] * 3, [0, 5, 10])
    assert not dog.policy.in_cooldown(11)
    await asyncio.sleep(0)
