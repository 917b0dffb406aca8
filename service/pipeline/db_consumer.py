"""The consumer of the database log (`meterd up` and any role with no Kafka configured).

Each cycle reads the oldest rows, decides per batch whether it counts, and in one transaction adds
the usage, marks the batch ids counted and deletes the rows it read. The delete is the log
position: a row still in the table is acknowledged and not yet counted, so a crash at any point
leaves either the row or its usage, never both and never neither. If another consumer deleted a
row first, the whole transaction rolls back and the cycle starts again.

What bounds it: a read is bounded by records and bytes, and stops before the row that could take
the flush past consumer.max_flush_keys sums; the same read failing consumer.poison_attempts
times is settled batch by batch (service.pipeline.poison); the backlog gauges have their own timer,
so they keep moving while cycles fail; a drain stops at its deadline, inside a read too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from governance.tracing import start_consumer_span
from service.config import ConsumerSettings
from service.metrics import PipelineMetrics
from service.pb.meterd.v1.pipeline_pb2 import TrafficBatch
from service.pipeline.counting import Aggregate, Verdict, decode, merged_usage, observe_freshness
from service.pipeline.poison import FailureStreak, error_kind, settle
from service.pipeline.retention import PURGE_EVERY_S, purge_expired
from service.storage.ledger import (
    AlreadyApplied,
    BatchState,
    DeadLetter,
    Flush,
    Ledger,
    LogRow,
    LogRowsTaken,
)

log = logging.getLogger("meterd.consumer")
READ_ROWS = 256  # log rows (batches) per cycle at most; records and bytes bound it first
BACKLOG_EVERY_S = 1.0
# Counting runs on the event loop that also answers writes: hand it back this often (records).
YIELD_EVERY = 10_000
LOST_RACE = (LogRowsTaken, AlreadyApplied)


class DrainDeadline(Exception):
    """consumer.drain_seconds ran out in the middle of a read: its rows stay in the log."""


class DatabaseLogConsumer:
    def __init__(self, ledger: Ledger, settings: ConsumerSettings, metrics: PipelineMetrics) -> None:
        self._ledger = ledger
        self._cfg = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._drain_until: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._streak = FailureStreak(settings.poison_attempts)
        self._last_purge = 0.0
        self.healthy = False
        self.assigned = asyncio.Event()  # the database log has no partitions to wait for

    def wake(self) -> None:
        """A local writer appended: look now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self.assigned.set()
        self._task = asyncio.create_task(self._run(), name="meterd-log-consumer")
        self._backlog_task = asyncio.create_task(self._watch_backlog(), name="meterd-log-backlog")

    async def stop(self) -> None:
        """Counts what the log holds (up to consumer.drain_seconds from now), then stops. Whatever
        is left stays in the log, durable, for the next start."""
        self._drain_until = time.monotonic() + self._cfg.drain_seconds
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._backlog_task is not None:
            self._backlog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._backlog_task

    def _past_deadline(self) -> bool:
        return self._drain_until is not None and time.monotonic() >= self._drain_until

    async def _run(self) -> None:
        while True:
            try:
                counted = await self.cycle()
                self.healthy = True
                await self._maybe_purge()
            except DrainDeadline:
                log.info("drain deadline reached mid-read; the rest stays in the log")
                return
            except Exception as exc:
                self.healthy = False
                self._metrics.consumer_errors.labels(error_kind(exc)).inc()
                log.exception("database log consumer error; retrying")
                counted = 0
                if not self._stopping.is_set():
                    await asyncio.sleep(1.0)
            if self._stopping.is_set() and (counted == 0 or self._past_deadline()):
                return
            if counted == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._cfg.log_poll_seconds)

    async def cycle(self) -> int:
        """Counts one read of the log; returns the rows consumed (0: the log is empty)."""
        rows = await self._ledger.read_log(0, READ_ROWS, max_records=self._cfg.read_max_records,
                                           max_bytes=self._cfg.read_max_bytes)
        if not rows:
            return 0
        try:
            consumed = await self._apply(rows)
        except LOST_RACE as exc:
            log.warning("another consumer counted part of this read first; reading again", extra={"reason": str(exc)})
            return len(rows)
        except DrainDeadline:
            raise
        except Exception as exc:
            if not self._streak.failed(rows[0].seq, exc):
                raise
            self._metrics.consumer_errors.labels(error_kind(exc)).inc()
            log.error("the same read failed %d times; applying its batches apart to find the one that fails",
                      self._streak.count, extra={"error": f"{type(exc).__name__}: {exc}"})
            await settle(rows, self._apply, self._quarantine, self._cfg.poison_attempts,
                         passthrough=(*LOST_RACE, DrainDeadline))
            consumed = len(rows)
        self._streak.succeeded()
        return consumed

    async def _apply(self, rows: Sequence[LogRow]) -> int:
        """One flush transaction for (a prefix of) `rows`; returns the rows it consumed."""
        started = time.perf_counter()
        flush, agg = await self._prepare(list(rows))
        await self._ledger.apply(flush)
        self._metrics.flush_seconds.observe(time.perf_counter() - started)
        observe_freshness(self._metrics, [agg])
        self._metrics.consumer_records.inc(agg.records)
        for d in flush.dead:
            self._metrics.dlq.inc()
            log.warning("log row dead-lettered", extra={"dedupe_key": d.key, "error": d.reason})
        return len(flush.log_seqs)

    async def _quarantine(self, row: LogRow, reason: str) -> None:
        await self._ledger.apply(Flush(log_seqs=[row.seq], dead=[DeadLetter(row.key, row.payload, reason)]))
        self._metrics.dlq.inc()
        self._metrics.consumer_poison.inc()
        log.error("poison batch moved to dead_letters; the log moves on (runbook: alerts/RUNBOOKS.md#meterddlqgrowing)",
                  extra={"dedupe_key": row.key, "log_seq": row.seq, "error": reason})

    async def _prepare(self, rows: list[LogRow]) -> tuple[Flush, Aggregate]:
        """The flush for `rows`, or for the prefix that stays within consumer.max_flush_keys sums."""
        decoded: dict[int, TrafficBatch | DecodeError] = {}
        for i, row in enumerate(rows):
            if i and i % 16 == 0:
                await self._yield()  # decoding a 10,000-record batch takes milliseconds
            try:
                decoded[row.seq] = decode(row.payload)
            except DecodeError as exc:
                decoded[row.seq] = exc
        states = await self._ledger.batch_states(
            b.dedupe_key for b in decoded.values() if not isinstance(b, DecodeError))
        agg, dead, taken = Aggregate(), [], []
        since_yield = 0
        for row in rows:
            batch = decoded[row.seq]
            if isinstance(batch, DecodeError):
                dead.append(DeadLetter(row.key, row.payload, f"undecodable TrafficBatch: {batch}"))
            elif agg.usage and len(agg.usage) + len(batch.records) > self._cfg.max_flush_keys:
                break  # this row and the rest stay in the log for the next read
            else:
                since_yield += len(batch.records)
                if since_yield >= YIELD_EVERY:
                    since_yield = 0
                    await self._yield()
                self._count(row, batch, agg, states.get(batch.dedupe_key), dead)
            taken.append(row.seq)
        usage, saturated = merged_usage([agg])
        if saturated:
            self._metrics.usage_saturated.inc(saturated)
        return Flush(usage=usage, applied=agg.applied, log_seqs=taken, dead=dead), agg

    def _count(self, row: LogRow, batch: TrafficBatch, agg: Aggregate, stored: BatchState | None,
               dead: list[DeadLetter]) -> None:
        verdict = agg.verdict(batch, stored)
        self._metrics.consumer_batches.labels(verdict.value).inc()
        if verdict is Verdict.COUNT:
            headers = [("traceparent", row.traceparent.encode())] if row.traceparent else None
            with start_consumer_span("process ingest_log", headers,
                                     attributes={"meterd.batch_id": batch.batch_id, "meterd.log_seq": row.seq}):
                agg.add(batch)
        elif verdict is Verdict.CONFLICT:
            dead.append(DeadLetter(row.key, row.payload,
                                   "batch_id conflict: the id was already used for different records"))

    async def _yield(self) -> None:
        """Hands the event loop back; a drain past its deadline abandons the read here."""
        await asyncio.sleep(0)
        if self._past_deadline():
            raise DrainDeadline()

    async def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            await purge_expired(self._ledger, self._cfg)

    async def _watch_backlog(self) -> None:
        """The lag gauges on their own timer: a consumer whose cycles fail still shows its backlog."""
        while True:
            try:
                rows, _, oldest_ms = await self._ledger.log_backlog()
                self._metrics.consumer_lag.labels("log").set(rows)
                age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
                self._metrics.consumer_lag_seconds.set(age)
            except Exception as exc:  # the cycle reports the failure; the gauges keep their last value
                log.debug("could not read the log backlog", extra={"error": str(exc)})
            await asyncio.sleep(BACKLOG_EVERY_S)
