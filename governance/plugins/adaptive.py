"""The adaptive limiter as a plugin: the limiter's decisions per call, a sampler task that feeds it
the CPU signal and event-loop lag, and its state as metrics. The algorithm is in governance.adaptive."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import Gauge

from governance._fastmetrics import FastCounter
from governance._prom import metric
from governance.adaptive import AdaptiveLimiter, AdaptiveSettings
from governance.core import SUCCESS, Call, Outcome, Rejection, Token
from governance.plugins import PluginContext
from governance.signals import CpuSignal

__all__ = ["AdaptiveLimiter", "AdaptivePlugin", "AdaptiveSettings", "create"]


class _Sampler:
    """One task per Governance feeding every adaptive limiter (route variants share the signals)."""

    def __init__(self, cpu: CpuSignal | None, tick: float) -> None:
        self.plugins: list[AdaptivePlugin] = []
        self.task: asyncio.Task[None] | None = None
        self.cpu, self.tick = cpu, tick

    def ensure_running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="governance-adaptive-sampler")

    async def _run(self) -> None:
        cpu = self.cpu or CpuSignal(cores=self.plugins[0].settings.cpu_cores)
        for plugin in self.plugins:
            if plugin.limiter.cpu_now is None:
                plugin.limiter.cpu_now = cpu.peek
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            lag = max(0.0, loop.time() - due)  # how long ready work kept us from waking on time
            sample = cpu.sample()
            for plugin in self.plugins:
                plugin.limiter.tick(sample, lag)
                plugin.publish()

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):
                pass


class _Release:
    """The token of every admitted call: in-flight back, and a success as a latency sample."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self.limiter = limiter

    def release(self, outcome: Outcome) -> None:
        self.limiter.release(outcome.duration, outcome.kind is SUCCESS)


class AdaptivePlugin:
    name = "adaptive"

    def __init__(self, ctx: PluginContext, settings: AdaptiveSettings | None = None, *,
                 label: str = "default", limiter: AdaptiveLimiter | None = None,
                 cpu: CpuSignal | None = None) -> None:
        self.settings = settings or AdaptiveSettings()
        self.limiter = limiter or AdaptiveLimiter(self.settings)
        self._sampler: _Sampler = ctx.shared.setdefault("adaptive.sampler", _Sampler(cpu, self.settings.tick))
        if not self._sampler.plugins:
            ctx.closers.append(self._sampler.aclose)
        self._sampler.plugins.append(self)
        self._token = _Release(self.limiter)
        self._gauges = {name: metric(ctx.registry, Gauge, f"governance_adaptive_{name}", doc,
                                     ("limiter",)).labels(label) for name, doc in _GAUGES.items()}
        # Lock-free: in a dry run under overload this counts on nearly every call.
        self._dry_shed = metric(ctx.registry, FastCounter, "governance_adaptive_dry_run_sheds",
                                "Calls a dry-run adaptive limiter would have shed.", ("limiter",)).labels(label)
        self._refusals: dict[tuple[str, float], Rejection] = {}

    def publish(self) -> None:
        lim, g = self.limiter, self._gauges
        g["limit"].set(lim.estimator.max_inflight)
        g["inflight"].set(lim.inflight)
        g["queue_target_seconds"].set(lim.queue_target)
        g["cpu_ratio"].set(lim.cpu)
        g["queue_delay_seconds"].set(lim.lag)
        g["overloaded"].set(1 if (lim.conc_armed or lim.queue.armed) else 0)

    def admit(self, call: Call) -> Token | Rejection:
        self._sampler.ensure_running()
        lim = self.limiter
        reason = lim.acquire()
        if lim.queue.need_mark:  # first call of a batch: learn when the batch ends
            lim.queue.need_mark = False
            asyncio.get_running_loop().call_soon(self._mark)
        if reason is None:
            return self._token
        if self.settings.dry_run:
            self._dry_shed.inc()
            lim.inflight += 1  # admitted after all; the token releases it
            return self._token
        return self._refusal(reason)

    def _mark(self) -> None:
        self.limiter.on_mark(self.limiter.now())

    def _refusal(self, reason: str) -> Rejection:
        retry = self.limiter.retry_after()
        refusal = self._refusals.get((reason, retry))
        if refusal is None:
            if len(self._refusals) > 64:  # reasons x whole-second retries: a small set
                self._refusals.clear()
            refusal = self._refusals[reason, retry] = Rejection("adaptive", reason, "overloaded", retry)
        return refusal


_GAUGES = {
    "limit": "Concurrency the adaptive limiter allows while shedding (max_pass x min_rt).",
    "inflight": "Calls admitted by the adaptive limiter and still running.",
    "queue_target_seconds": "Queueing delay above which late calls are shed (the service's min_rt).",
    "cpu_ratio": "CPU utilisation the adaptive limiter sees (cgroup/process, 0..1).",
    "queue_delay_seconds": "Event-loop lag (queueing ahead of handlers), EMA.",
    "overloaded": "1 while the adaptive limiter is armed to shed.",
}


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> AdaptivePlugin:
    return AdaptivePlugin(ctx, AdaptiveSettings(**settings), label=label)
