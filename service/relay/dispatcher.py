"""Per-robot delivery: merge notifications, respect the send budget, decide who retries.

Why queue-and-merge rather than answering 5xx when the budget is spent: Alertmanager cannot merge
notifications of different groups, so a 5xx would make it re-send each group separately (costing
more budget, never merging), and its retry loop gives up at the group's timeout, so an alert storm
would lose notifications. Instead every notification for a robot joins one pending batch; one
worker sends the batch as a single message whenever the merge window has passed and the sliding
window has room.

Ownership: a webhook request waits up to `ack_timeout_s` for its batch to be sent. If the send
happens in that time, the request answers with its result (200; 503 when DingTalk asked for a
retry, so Alertmanager retries; 424 when DingTalk refused for good). If not (the budget is spent),
the relay takes the notification over: it commits it to the store (service.relay.store), answers
202, and retries it itself with back-off until `max_pending_age_s`, also after a restart. So a
notification is retried by exactly one party. Without a store (no `data_dir`) the relay never takes
one over: it answers 503 and Alertmanager keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service.relay.batching import Entry, Outcome, Pending, take_batch
from service.relay.client import Delivery, DingTalkClient, SendResult
from service.relay.metrics import RelayMetrics
from service.relay.payload import WebhookMessage
from service.relay.ratelimit import SlidingWindow
from service.relay.render import RenderedMessage, Renderer
from service.relay.settings import RelaySettings, RobotSettings
from service.relay.store import NotificationStore, StoredNotification

log = logging.getLogger("meterd.relay")

class RobotDispatcher:
    def __init__(
        self,
        name: str,
        robot: RobotSettings,
        settings: RelaySettings,
        *,
        renderer: Renderer,
        client: DingTalkClient,
        metrics: RelayMetrics,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        store: NotificationStore | None = None,
    ) -> None:
        self.name = name
        self._store = store
        self._robot = robot
        self._settings = settings
        self._renderer = renderer
        self._client = client
        self._metrics = metrics
        self._clock = clock
        self.limiter = SlidingWindow(settings.robot_rate(name), window_s, clock)
        self._state = Pending(backoff=settings.retry_backoff_initial_s)
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._state.pending)

    async def submit(self, message: WebhookMessage) -> tuple[Outcome, str]:
        """Queue one notification and wait (bounded) for its fate. Returns (outcome, detail)."""
        if self._closing:
            return self._count(Outcome.OVERLOADED, "relay is shutting down")
        if len(self._state.pending) >= self._settings.max_pending_notifications:
            return self._count(Outcome.OVERLOADED, "too many queued notifications")
        self._ensure_worker()
        entry = Entry(message, self._clock(), asyncio.get_running_loop().create_future())
        self._state.pending.append(entry)
        self._update_pending()
        self._wakeup.set()
        try:
            await asyncio.wait({entry.future}, timeout=self._settings.ack_timeout_s)
        except asyncio.CancelledError:
            # The caller went away: nobody will retry unless we do (or, without a store, nobody).
            if not self._take_over(entry):
                self._withdraw(entry)
            raise
        if entry.future.done():
            return entry.future.result()
        if self._take_over(entry):
            return Outcome.QUEUED, "rate budget spent; queued for a merged message"
        self._withdraw(entry)
        return self._count(Outcome.RETRY, "not sent within the ack timeout; retry later")

    def _take_over(self, entry: Entry) -> bool:
        """Make the relay responsible for `entry`: True once its row is committed (or it is settled)."""
        if entry.future.done():
            return True
        if self._store is None:
            return False
        try:
            entry.row_id = self._store.add(self.name, entry.message.model_dump_json())
        except Exception:
            log.exception("relay: could not store a notification robot=%s; answering 503", self.name)
            return False
        entry.owned = True
        self._metrics.queued.labels(self.name).inc()
        return True

    def _withdraw(self, entry: Entry) -> None:
        """Alertmanager keeps this one (it gets a 5xx): stop trying to send it ourselves."""
        if entry in self._state.pending:
            self._state.pending.remove(entry)
            self._update_pending()

    def restore(self, rows: list[StoredNotification]) -> None:
        """Queue the stored notifications of this robot again and take back the budget spent
        before the restart (start-up)."""
        loop, now, wall = asyncio.get_running_loop(), self._clock(), time.time()
        if self._store is not None:
            self.limiter.preload([wall - at for at in self._store.recent_sends(self.name, self.limiter.window_s)])
        bad: list[int] = []
        for row in rows:
            try:
                message = WebhookMessage.model_validate_json(row.payload)
            except ValueError:
                log.error("relay: dropping an unreadable stored notification robot=%s id=%d", self.name, row.id)
                bad.append(row.id)
                continue
            received = now - max(0.0, wall - row.received_at)
            entry = Entry(message, received, loop.create_future(), owned=True, row_id=row.id)
            self._state.pending.append(entry)
        if bad and self._store is not None:
            self._store.remove(bad)
        if self._state.pending:
            log.info("relay: restored %d stored notifications robot=%s", len(self._state.pending), self.name)
            self._update_pending()
            self._ensure_worker()
            self._wakeup.set()

    def _forget(self, entries: list[Entry]) -> None:
        """Delete settled entries' rows (one transaction)."""
        ids = [e.row_id for e in entries if e.row_id is not None]
        if ids and self._store is not None:
            self._store.remove(ids)
            for e in entries:
                e.row_id = None

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name=f"relay-dispatcher-{self.name}")

    async def _run(self) -> None:
        state = self._state
        while True:
            if not state.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self._clock()
            budget_wait = self.limiter.wait_time()
            if self._closing:
                if budget_wait > 0:
                    return  # cannot send in time; aclose() settles what is left
                delay = 0.0
            else:
                merge_wait = state.pending[0].received + self._settings.merge_window_s - now
                delay = max(merge_wait, state.retry_at - now, budget_wait)
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                continue
            batch: list[Entry] = []
            try:
                batch, state.pending, rendered = take_batch(state.pending, self._renderer, self._robot.mentions)
                await self._deliver(batch, rendered)
            except asyncio.CancelledError:
                # Cancelled mid-send (shutdown timeout): hand the batch back for aclose() to settle.
                state.pending = batch + state.pending
                raise
            except Exception:
                # A bug (rendering, metrics): never lose the notifications, never kill the worker.
                log.exception("relay: unexpected error while delivering robot=%s", self.name)
                if not batch:
                    batch, state.pending = state.pending, []
                self._metrics.send_failures.labels(self.name, "internal").inc()
                self._retry_later(batch, SendResult(Delivery.RETRY, "internal", "internal error"))
            finally:
                self._update_pending()

    async def _deliver(self, batch: list[Entry], rendered: RenderedMessage) -> None:
        m, robot = self._metrics, self.name
        started = self._clock()
        try:
            result = await self._client.send(self._robot, rendered.encoded)
        finally:
            self.limiter.record()
            if self._store is not None:
                try:
                    self._store.record_send(robot, keep_s=self.limiter.window_s)
                except Exception:  # the send happened; losing its record only risks the budget
                    log.exception("relay: could not record a send robot=%s", robot)
        m.send_seconds.labels(robot).observe(max(0.0, self._clock() - started))

        if result.delivery is Delivery.OK:
            m.messages_sent.labels(robot).inc()
            m.message_bytes.labels(robot).observe(len(rendered.encoded))
            if len(batch) > 1:
                m.alerts_merged.labels(robot).inc(len(batch) - 1)
            if rendered.truncated:
                m.truncated.labels(robot).inc()
            self._state.retry_at, self._state.backoff = 0.0, self._settings.retry_backoff_initial_s
            log.info("relay delivered robot=%s notifications=%d alerts=%d shown=%d bytes=%d", robot, len(batch),
                     rendered.alerts_total, rendered.alerts_shown, len(rendered.encoded))
            for entry in batch:
                self._finish(entry, Outcome.DELIVERED, "delivered")
            self._forget(batch)
            return

        m.send_failures.labels(robot, result.reason).inc()
        if result.delivery is Delivery.RETRY:
            self._retry_later(batch, result)
        else:
            log.error("relay: DingTalk rejected the message for good robot=%s reason=%s detail=%s notifications=%d",
                      robot, result.reason, result.detail, len(batch))
            for entry in batch:
                self._finish(entry, Outcome.DROPPED if entry.owned else Outcome.REJECTED, result.detail)
            self._forget(batch)

    def _retry_later(self, batch: list[Entry], result: SendResult) -> None:
        state, now = self._state, self._clock()
        keep: list[Entry] = []
        given_up: list[Entry] = []
        for entry in batch:
            if not entry.owned:
                # The request is still waiting: answer 503 and let Alertmanager retry it.
                self._finish(entry, Outcome.RETRY, result.detail)
            elif now - entry.received > self._settings.max_pending_age_s:
                log.error("relay: giving up on a queued notification robot=%s age=%.0fs last=%s",
                          self.name, now - entry.received, result.detail)
                self._finish(entry, Outcome.DROPPED, result.detail)
                given_up.append(entry)
            else:
                keep.append(entry)
        self._forget(given_up)
        state.pending = keep + state.pending
        # Back off either way: DingTalk is limiting or failing, hammering it helps nobody.
        state.retry_at = now + state.backoff
        state.backoff = min(state.backoff * 2, self._settings.retry_backoff_max_s)
        log.warning("relay: send failed, will retry robot=%s reason=%s detail=%s queued=%d",
                    self.name, result.reason, result.detail, len(keep))

    def _finish(self, entry: Entry, outcome: Outcome, detail: str) -> None:
        if not entry.future.done():
            entry.future.set_result((outcome, detail))
        self._count(outcome, detail)

    def _count(self, outcome: Outcome, detail: str) -> tuple[Outcome, str]:
        self._metrics.notifications.labels(self.name, outcome.value).inc()
        return outcome, detail

    def _update_pending(self) -> None:
        self._metrics.pending.labels(self.name).set(len(self._state.pending))

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Send what the budget allows within grace_s; settle the rest (503 to waiting requests, stored
        notifications stay stored)."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout=grace_s)
            except (TimeoutError, Exception):
                self._worker.cancel()
                with contextlib.suppress(BaseException):
                    await self._worker
        kept = 0
        for entry in self._state.pending:
            if entry.row_id is not None:
                kept += 1  # stays in the store: sent after the next start
                continue
            if entry.owned:
                log.error("relay: shutting down with an undelivered notification robot=%s", self.name)
            self._finish(entry, Outcome.DROPPED if entry.owned else Outcome.RETRY, "relay shutting down")
        if kept:
            log.warning("relay: shutting down; %d stored notifications wait for the next start robot=%s",
                        kept, self.name)
        self._state.pending = []
        self._update_pending()
