"""The adaptive limiter as a plugin: one limiter per Governance shared by every route variant (they
share the process), each variant with its own priority, objective and guard rails; a sampler task
that closes the limiter's windows and feeds its gauges. The algorithm is in governance.adaptive."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import Gauge

from governance._fastmetrics import FastCounter
from governance._prom import metric
from governance.adaptive import AdaptiveLimiter, AdaptiveSettings, RouteGuard
from governance.core import Call, Rejection, Token
from governance.plugins import PluginContext
from governance.signals import CpuSignal

__all__ = ["AdaptiveLimiter", "AdaptivePlugin", "AdaptiveSettings", "create"]

MAX_ROUTES = 1024  # route labels are bounded by the adapters; this only guards a misconfigured host


class _Sampler:
    """One task per Governance: closes the shared limiter's windows and publishes its gauges."""

    def __init__(self, limiter: AdaptiveLimiter, cpu: CpuSignal | None, publish: Any) -> None:
        self.limiter, self.cpu, self.publish = limiter, cpu, publish
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="governance-adaptive-sampler")

    async def _run(self) -> None:
        s = self.limiter.settings
        cpu = self.cpu or CpuSignal(cores=s.cpu_cores)
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + s.tick
            await asyncio.sleep(s.tick)
            lag = max(0.0, loop.time() - due)  # how long ready work kept us from waking on time
            self.limiter.tick(cpu.sample(), lag)
            self.publish()

    async def aclose(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):
                pass


class _Shared:
    """What every adaptive variant of one Governance shares: the limiter, its gauges, its sampler."""

    def __init__(self, ctx: PluginContext, settings: AdaptiveSettings, limiter: AdaptiveLimiter | None,
                 cpu: CpuSignal | None) -> None:
        self.limiter = limiter or AdaptiveLimiter(settings)
        self.gauges = {name: metric(ctx.registry, Gauge, f"governance_adaptive_{name}", doc, ("limiter",)
                                    ).labels("default") for name, doc in _GAUGES.items()}
        labels = ("route", "priority", "reason")
        self.sheds = metric(ctx.registry, FastCounter, "governance_adaptive_sheds",
                            "Calls the adaptive limiter shed, by route, priority and reason.", labels)
        # Lock-free: in a dry run under overload this counts on nearly every call.
        self.dry_sheds = metric(ctx.registry, FastCounter, "governance_adaptive_dry_run_sheds",
                                "Calls a dry-run adaptive limiter would have shed.", labels)
        self.sampler = _Sampler(self.limiter, cpu, self.publish)
        ctx.closers.append(self.sampler.aclose)

    def publish(self) -> None:
        stats, g = self.limiter.snapshot(), self.gauges
        g["limit"].set(stats.limit)
        g["inflight"].set(stats.inflight)
        g["latency_objective_ratio"].set(stats.latency_ratio)
        g["cpu_ratio"].set(stats.cpu)
        g["queue_delay_seconds"].set(stats.queue_delay)
        g["overloaded"].set(1 if stats.armed else 0)


class AdaptivePlugin:
    name = "adaptive"

    def __init__(self, ctx: PluginContext, settings: AdaptiveSettings | None = None, *,
                 label: str = "default", limiter: AdaptiveLimiter | None = None,
                 cpu: CpuSignal | None = None) -> None:
        self.settings = s = settings or AdaptiveSettings()
        self.label = label
        shared: _Shared | None = ctx.shared.get("adaptive")
        if shared is None:
            shared = ctx.shared["adaptive"] = _Shared(ctx, s, limiter, cpu)
        self._shared = shared
        self.limiter = shared.limiter
        self.priority, self.objective = s.priority, s.route_objective()
        self._guards: dict[str, RouteGuard] = {}
        self._counters: dict[tuple[str, str, bool], Any] = {}
        self._refusals: dict[tuple[str, float], Rejection] = {}

    def publish(self) -> None:
        self._shared.publish()

    def guard(self, route: str) -> RouteGuard:
        guard = self._guards.get(route)
        if guard is None:
            if len(self._guards) >= MAX_ROUTES:
                route = "<other>"
                guard = self._guards.get(route)
            if guard is None:
                s = self.settings
                guard = self._guards[route] = RouteGuard(route, s.max_inflight, s.max_inflight_bytes)
        return guard

    def admit(self, call: Call) -> Token | Rejection:
        self._shared.sampler.ensure_running()
        lim = self.limiter
        guard = self.guard(call.route)
        result = lim.acquire(guard, self.priority, self.objective, call.request_bytes, self.settings.dry_run)
        if lim.queue.need_mark:  # first call of a batch: learn when the batch ends
            lim.queue.need_mark = False
            asyncio.get_running_loop().call_soon(self._mark)
        if isinstance(result, str):
            self._count(guard.route, result, dry=False)
            return self._refusal(result)
        if result.dry_run_reason is not None:
            self._count(guard.route, result.dry_run_reason, dry=True)
        return result

    def _count(self, route: str, reason: str, *, dry: bool) -> None:
        key = (route, reason, dry)
        child = self._counters.get(key)
        if child is None:
            family = self._shared.dry_sheds if dry else self._shared.sheds
            child = self._counters[key] = family.labels(route, self.priority, reason)
        child.inc()

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
    "limit": "Sheddable calls the adaptive limiter admits at once while armed; 0 while unarmed (no limit).",
    "inflight": "Sheddable calls admitted by the adaptive limiter and still running.",
    "latency_objective_ratio": "Admitted latency over the route's objective, mean of the last window.",
    "cpu_ratio": "CPU utilisation of the process (cgroup/process, 0..1); a gauge, not a decision input.",
    "queue_delay_seconds": "Queueing ahead of the middleware (sojourn), mean of the last window.",
    "overloaded": "1 while the adaptive limiter is armed to shed.",
}


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> AdaptivePlugin:
    return AdaptivePlugin(ctx, AdaptiveSettings(**settings), label=label)
