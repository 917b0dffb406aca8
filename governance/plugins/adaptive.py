"""Adaptive overload protection: no static limit to tune.

Baseline is the BBR scheme (Kratos/sponge): over a 10 s window of 100 ms buckets keep the largest
per-bucket completion count (max_pass) and the smallest per-bucket mean latency (min_rt); their
product is the concurrency the service has *shown* it can sustain (Little's law). While overloaded,
and for a cool-off after the last drop, a call is shed when in-flight exceeds that.

What this version changes, and why:
- CPU comes from the process's own cgroup and from the process itself (see `governance.signals`),
  sampled every 50 ms with a ~0.3 s EMA, so it reacts in well under a second (BBR: 10-15 s).
- I/O-bound overload (a downstream concurrency cap, CPU idle) shows as latency, not CPU: when the
  last second's mean latency exceeds `latency_tolerance` x min_rt, the concurrency cap engages too.
- In one asyncio process a CPU-bound backlog queues *before* the middleware (ready queue, socket
  buffers), so in-flight stays ~1 and BBR never sheds. The loop runs such a backlog in batches: a
  marker callback queued behind each batch fires when the next one starts, so every call gets a
  sojourn estimate (half the previous back-to-back batch, in which it arrived, plus its position in
  the current one). CoDel-style: once sojourn stays above the target (the service's own min_rt) for
  `queue_interval` while the CPU is hot, or at once when a call has itself waited `queue_interval`
  (a standing queue, seen before the CPU EMA has caught up with a load step), calls whose sojourn
  exceeds the target are shed until `cooloff` passes with no drop. While one batch holds the loop
  too long for the sampler to run, "hot" is the process's CPU time since the last sample. Late
  calls are refused, early ones served: admitted latency stays near the unloaded one.
- Only successes count as passes and latency samples; in-flight is released in `after`, which the
  chain always runs, so exceptions cannot leak slots.
- Retry-After is the cool-off plus the measured queueing delay.

`AdaptiveLimiter` is pure logic with an injected clock; `tick(cpu, lag)` feeds it signals. The
plugin owns a sampler task that calls `tick` in production.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field

from governance._fastmetrics import FastCounter
from governance._prom import metric
from governance.core import SUCCESS, Call, Outcome, Rejection
from governance.plugins import PluginContext
from governance.signals import CpuSignal


class AdaptiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: float = Field(10.0, gt=0, description="seconds of history for max_pass/min_rt")
    buckets: int = Field(100, ge=2)
    cpu_threshold: float = Field(0.8, gt=0, description="utilisation (0..1) that counts as hot")
    cooloff: float = Field(1.0, ge=0, description="seconds shedding stays armed after the last drop")
    latency_tolerance: float = Field(2.0, gt=1, description="short-window latency / min_rt that means queueing")
    lag_floor: float = Field(0.005, ge=0, description="queueing below this is timer/GC noise, never overload")
    queue_interval: float = Field(0.5, gt=0, description="sojourn must stay above target this long to start shedding")
    batch_gap: float = Field(0.0005, ge=0, description="an idle gap longer than this means a batch did not queue")
    tick: float = Field(0.05, gt=0, description="signal sampling period, seconds")
    cpu_tau: float = Field(0.3, gt=0, description="CPU EMA time constant, seconds")
    lag_tau: float = Field(0.1, gt=0, description="loop-lag EMA time constant, seconds")
    cpu_cores: float | None = Field(None, description="cores one process can use; default min(1, quota)")
    dry_run: bool = Field(False, description="decide and count, but never shed (rollout / benchmarks)")


class AdaptiveLimiter:
    """Decision logic. Not thread-safe by design: one instance lives on one event loop."""

    def __init__(self, settings: AdaptiveSettings | None = None, clock: Callable[[], float] = time.monotonic,
                 cpu_now: Callable[[], float] | None = None):
        """cpu_now: the process's CPU utilisation since the last tick, read on demand (the plugin
        wires CpuSignal.peek): the standing-queue rule asks it when the loop has been too busy to
        tick, as in a batch that runs for seconds right after a load step."""
        s = self.settings = settings or AdaptiveSettings()
        self._clock = clock
        self.cpu_now = cpu_now
        self._n = s.buckets
        self._blen = s.window / s.buckets
        self._short = max(1, round(1.0 / self._blen))  # buckets in the 1 s "current latency" window
        self._pass = [0] * self._n
        self._rt = [0.0] * self._n
        self._idx = 0
        self._bstart = clock()
        self.inflight = 0
        # Derived every bucket rollover / tick.
        self.max_pass = 0
        self.min_rt = 0.0
        self.max_inflight = 0
        self.short_rt = 0.0
        # Signals.
        self.cpu = 0.0
        self.cpu_sample = 0.0  # the latest raw sample, which leads the EMA by its time constant
        self.lag = 0.0
        self._last_tick: float | None = None
        # Decision state.
        self.conc_armed = False  # some overload signal says: cap concurrency
        self.queue_armed = False  # sojourn stayed above target for queue_interval: shed late calls
        self.last_drop = -math.inf
        self.drops = 0
        # Batch tracking for the sojourn estimate (see module docstring).
        self.in_batch = False
        self.need_mark = False  # the plugin must queue a marker behind the current batch
        self._batch_start = 0.0
        self._batch_carry = 0.0
        self._mark_t = -math.inf
        self._prev_batch = 0.0
        self._first_above: float | None = None
        self.queue_target = s.lag_floor
        # Early refusal (see `refuse_early`): loop time per admitted call in the last finished batch,
        # the admissions of the running batch, and calls passed early since the last batch began.
        self.loop_per_call = 0.0
        self._batch_admits = 0
        self.early_ahead = 0

    # -- window ---------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        steps = int((now - self._bstart) / self._blen)
        if steps <= 0:
            return
        n = self._n
        for _ in range(min(steps, n)):
            self._idx = (self._idx + 1) % n
            self._pass[self._idx] = 0
            self._rt[self._idx] = 0.0
        self._bstart += steps * self._blen
        self._recompute()

    def _recompute(self) -> None:
        """max_pass / min_rt over completed buckets (the current one is still filling)."""
        max_pass, min_rt = 0, math.inf
        cur, n = self._idx, self._n
        short_cnt, short_sum = 0, 0.0
        for back in range(1, n):
            i = (cur - back) % n
            p = self._pass[i]
            if p:
                if p > max_pass:
                    max_pass = p
                avg = self._rt[i] / p
                if avg < min_rt:
                    min_rt = avg
                if back <= self._short:
                    short_cnt += p
                    short_sum += self._rt[i]
        self.max_pass = max_pass
        self.min_rt = 0.0 if min_rt is math.inf else min_rt
        self.max_inflight = math.ceil(max_pass * self.min_rt / self._blen) if max_pass else 0
        self.short_rt = short_sum / short_cnt if short_cnt else 0.0

    # -- signals --------------------------------------------------------------------------------
    def tick(self, cpu: float, lag: float) -> None:
        """Feed one sample of CPU utilisation and event-loop lag (seconds); re-evaluate arming."""
        s = self.settings
        now = self._clock()
        dt = s.tick if self._last_tick is None else max(1e-6, now - self._last_tick)
        self._last_tick = now
        self.cpu_sample = cpu
        self.cpu += (cpu - self.cpu) * (1.0 - math.exp(-dt / s.cpu_tau))
        self.lag += (lag - self.lag) * (1.0 - math.exp(-dt / s.lag_tau))
        self._advance(now)

        self.queue_target = max(self.min_rt, s.lag_floor)
        queueing = self.lag > self.queue_target
        latency_up = self.min_rt > 0 and self.short_rt > s.latency_tolerance * self.min_rt
        self.conc_armed = queueing or latency_up or self.cpu >= s.cpu_threshold
        if self.queue_armed and now - self.last_drop >= s.cooloff:
            self.queue_armed = False

    def on_mark(self, now: float) -> None:
        """The marker queued behind the current batch ran: that batch is over."""
        if self.in_batch:
            self._prev_batch = now - self._batch_start
            self.in_batch = False
            if self._batch_admits:
                self.loop_per_call = self._prev_batch / self._batch_admits
            self._batch_admits = 0
        self._mark_t = now
        self.early_ahead = 0

    def sojourn(self, now: float) -> float:
        """Estimated queueing delay of the call being admitted now."""
        if not self.in_batch:
            self.in_batch = self.need_mark = True
            self._batch_start = now
            self.early_ahead = 0
            self._batch_carry = self._carry(now)
        return self._batch_carry + (now - self._batch_start)

    def _carry(self, now: float) -> float:
        """How long a call starting a batch now has already waited, between batches."""
        # Back-to-back with the previous batch: this call arrived while that batch ran.
        # The gap between two batches is the loop's I/O phase (reading sockets, accepting
        # connections) or idle time in poll. After a long batch the I/O phase is long too (it
        # reads everything that arrived meanwhile: 10-50 ms after 300-500 ms batches at a 5x
        # step), so a gap of up to a tenth of the previous batch still counts as back to back.
        back_to_back = now - self._mark_t <= max(self.settings.batch_gap, 0.1 * self._prev_batch)
        return self._prev_batch / 2 if back_to_back else 0.0

    # -- decisions ------------------------------------------------------------------------------
    def acquire(self) -> str | None:
        """None to admit (and count in-flight), else the reason for shedding."""
        now = self._clock()
        # sojourn(now), inlined for the common case of a call inside a batch that already started.
        sojourn = self._batch_carry + (now - self._batch_start) if self.in_batch else self.sojourn(now)
        # Queueing only sheds while the CPU is hot. A loop that is behind with a cool CPU (a GC
        # pause, a neighbour stealing the core) is not helped by shedding: rejected calls still
        # cost loop time, and measured here that turned a starved process into a shedding cascade.
        s = self.settings
        # A call that has itself waited queue_interval is a standing queue already: it arms the
        # queue rule at once, on the latest CPU sample rather than the EMA. Waiting queue_interval
        # more, while the EMA caught up with a load step, is what let a 5x step queue seconds of
        # work (client timeouts) before the first shed; the stalls queue_interval is there for
        # (40-100 ms at 0.8x) never make a call wait that long.
        standing = sojourn >= s.queue_interval and self._hot_now()
        if sojourn > self.queue_target and (self.queue_armed or standing or self.cpu >= s.cpu_threshold
                                            or self._hot_while_unsampled(now)):
            if self._first_above is None:
                self._first_above = now
            if not self.queue_armed and (standing or now - self._first_above >= s.queue_interval):
                self.queue_armed = True
            if self.queue_armed:
                self.last_drop = now
                self.drops += 1
                return "queueing"
        else:
            self._first_above = None
        # Concurrency above latency_tolerance x the demonstrated capacity is itself proof of a queue
        # (Little's law), so it arms at once instead of waiting for the 1 s latency window.
        limit = self.max_inflight
        if limit and self.inflight > 1 and self.inflight > limit and (
                self.conc_armed or now - self.last_drop < self.settings.cooloff
                or self.inflight > self.settings.latency_tolerance * limit):
            self.last_drop = now
            self.drops += 1
            return "concurrency"
        self.inflight += 1
        self._batch_admits += 1
        return None

    def refuse_early(self) -> str | None:
        """The queueing rule for a request the server has parsed but not yet handed to the app.

        A server reads every request that arrived during a batch in one go, then runs them, in that
        order, as the next batch. While the queue rule is shedding, `acquire` refuses all but the
        first one or two of them (the rest wait behind the calls admitted ahead of them); each such
        refusal still pays for a task and the whole ASGI reply path (149k instructions on meterd's
        server; ~900 of them a second at a 5x step). Here the wait is predicted instead: the carry
        plus the calls this server has already passed on for the coming batch, times the loop time
        an admitted call took in the last batch. A request
        predicted past the queue target is refused now; the others go on to `acquire`, which decides
        on the measured wait as always. Only while the queue rule is armed, so never before overload
        has been seen. The carry is what `acquire` will compute too; the calls ahead are estimated
        from the last batch's average, so a call may be refused here that `acquire` would have
        admitted (or the reverse) when admitted calls differ a lot in cost.
        """
        if not self.queue_armed:
            return None
        now = self._clock()
        ahead = self.early_ahead
        # uvloop and asyncio both run the marker queued behind a batch before the read phase that
        # follows it, so the batch this request arrived during is normally over (`_carry`); on a
        # loop that reads first, the batch still running gives at least half of it so far.
        carry = (now - self._batch_start) / 2 if self.in_batch else self._carry(now)
        if carry + ahead * self.loop_per_call > self.queue_target:
            self.last_drop = now
            self.drops += 1
            return "queueing"
        self.early_ahead = ahead + 1
        return None

    def _hot_while_unsampled(self, now: float) -> bool:
        """The sampler is overdue (one batch has held the loop for more than two ticks, so the EMA
        cannot move) and the CPU used since its last sample is hot."""
        s = self.settings
        last = self._last_tick
        return (self.cpu_now is not None and last is not None and now - last > 2 * s.tick
                and self.cpu_now() >= s.cpu_threshold)

    def _hot_now(self) -> bool:
        """The latest CPU sample is hot, or (when the loop has been too busy to take one since: one
        long batch after a step) the CPU used since that sample is."""
        threshold = self.settings.cpu_threshold
        if self.cpu_sample >= threshold:
            return True
        return self.cpu_now is not None and self.cpu_now() >= threshold

    def release(self, duration: float, success: bool) -> None:
        self.inflight -= 1
        if success:
            now = self._clock()
            if now - self._bstart >= self._blen:
                self._advance(now)
            i = self._idx
            self._pass[i] += 1
            self._rt[i] += duration

    def retry_after(self) -> float:
        queue_delay = max(self.lag, self.short_rt - self.min_rt, 0.0)
        return max(1.0, math.ceil(self.settings.cooloff + queue_delay))


class AdaptivePlugin:
    name = "adaptive"

    def __init__(self, ctx: PluginContext, settings: AdaptiveSettings | None = None, *,
                 label: str = "default", limiter: AdaptiveLimiter | None = None,
                 cpu: CpuSignal | None = None, shared: dict[str, Any] | None = None) -> None:
        self.settings = settings or AdaptiveSettings()
        self.limiter = limiter or AdaptiveLimiter(self.settings)
        self._ctx, self._label = ctx, label
        # Variants for route overrides share one sampler (signals are process-wide).
        self._shared = shared if shared is not None else {"limiters": [], "task": None, "cpu": cpu}
        self._shared["limiters"].append(self)
        reg = ctx.registry
        labels = ("limiter",)
        self._g_limit = metric(reg, Gauge, "governance_adaptive_limit",
                               "Concurrency the adaptive limiter allows while shedding (max_pass x min_rt).",
                               labels).labels(label)
        self._g_inflight = metric(reg, Gauge, "governance_adaptive_inflight",
                                  "Calls admitted by the adaptive limiter and still running.",
                                  labels).labels(label)
        self._g_target = metric(reg, Gauge, "governance_adaptive_queue_target_seconds",
                                "Queueing delay above which late calls are shed (the service's min_rt).",
                                labels).labels(label)
        self._g_cpu = metric(reg, Gauge, "governance_adaptive_cpu_ratio",
                             "CPU utilisation the adaptive limiter sees (cgroup/process, 0..1).",
                             labels).labels(label)
        self._g_lag = metric(reg, Gauge, "governance_adaptive_queue_delay_seconds",
                             "Event-loop lag (queueing ahead of handlers), EMA.", labels).labels(label)
        self._g_armed = metric(reg, Gauge, "governance_adaptive_overloaded",
                               "1 while the adaptive limiter is armed to shed.", labels).labels(label)
        # Lock-free: in a dry run under overload this counts on nearly every call.
        self._dry_shed = metric(reg, FastCounter, "governance_adaptive_dry_run_sheds",
                                "Calls a dry-run adaptive limiter would have shed.", labels).labels(label)
        self._early = metric(reg, FastCounter, "governance_adaptive_early_refusals",
                             "Refusals made before the request's task existed (a server asked the limiter "
                             "first); also counted in governance_rejections_total.", labels).labels(label)
        self._dry_run = self.settings.dry_run
        self._refusals: dict[tuple[str, float], Rejection] = {}

    @classmethod
    def from_config(cls, settings: dict[str, Any], ctx: PluginContext) -> AdaptivePlugin:
        return cls(ctx, AdaptiveSettings(**settings))

    def derive(self, overrides: dict[str, Any], label: str) -> AdaptivePlugin:
        merged = AdaptiveSettings(**{**self.settings.model_dump(), **overrides})
        return AdaptivePlugin(self._ctx, merged, label=label, shared=self._shared)

    # -- sampler --------------------------------------------------------------------------------
    def _ensure_sampler(self) -> None:
        if self._shared["task"] is None:
            self._shared["task"] = asyncio.get_running_loop().create_task(
                self._sample_forever(), name="governance-adaptive-sampler")

    async def _sample_forever(self) -> None:
        cpu = self._shared["cpu"] or CpuSignal(cores=self.settings.cpu_cores)
        for plugin in self._shared["limiters"]:
            if plugin.limiter.cpu_now is None:
                plugin.limiter.cpu_now = cpu.peek
        period = self.settings.tick
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            lag = max(0.0, loop.time() - due)  # how long ready work kept us from waking on time
            sample = cpu.sample()
            for plugin in self._shared["limiters"]:
                plugin.limiter.tick(sample, lag)
                plugin.publish()

    def publish(self) -> None:
        lim = self.limiter
        self._g_limit.set(lim.max_inflight)
        self._g_inflight.set(lim.inflight)
        self._g_target.set(lim.queue_target)
        self._g_cpu.set(lim.cpu)
        self._g_lag.set(lim.lag)
        self._g_armed.set(1 if (lim.conc_armed or lim.queue_armed) else 0)

    async def aclose(self) -> None:
        task = self._shared.get("task")
        if task is not None:
            self._shared["task"] = None
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):
                pass

    # -- plugin protocol ------------------------------------------------------------------------
    def _mark(self) -> None:
        self.limiter.on_mark(self.limiter._clock())

    def before_sync(self, call: Call) -> Rejection | None:
        if self._shared["task"] is None:
            self._ensure_sampler()
        lim = self.limiter
        reason = lim.acquire()
        if lim.need_mark:  # first call of a batch: learn when the batch ends
            lim.need_mark = False
            asyncio.get_running_loop().call_soon(self._mark)
        if reason is None:
            return None
        if self._dry_run:
            self._dry_shed.inc()
            lim.inflight += 1  # admitted after all; `after` will release it
            return None
        return self._refusal(reason)

    def _refusal(self, reason: str) -> Rejection:
        # Returned, not raised, and one instance per distinct refusal (see core.Plan): under
        # overload this runs for most calls.
        retry = self.limiter.retry_after()
        refusal = self._refusals.get((reason, retry))
        if refusal is None:
            if len(self._refusals) > 64:  # reasons x whole-second retries: a small set
                self._refusals.clear()
            refusal = self._refusals[reason, retry] = Rejection("adaptive", reason, "overloaded", retry)
        return refusal

    def refuse_early(self) -> Rejection | None:
        """A server's question before it starts a request's handling (see core.Plan.early and
        AdaptiveLimiter.refuse_early). A dry run never refuses here: its `before_sync` counts."""
        lim = self.limiter
        if not lim.queue_armed or self._dry_run:  # the server asks for every request: the usual answer first
            return None
        reason = lim.refuse_early()
        if reason is None:
            return None
        self._early.value += 1
        return self._refusal(reason)

    def after_sync(self, call: Call, outcome: Outcome) -> None:
        self.limiter.release(outcome.duration, outcome.kind == SUCCESS)

    async def before(self, call: Call) -> None:
        refusal = self.before_sync(call)
        if refusal is not None:
            raise refusal.copy()

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.after_sync(call, outcome)
