"""The consumer of the database log (`meterd up` and any role with no Kafka configured).

Each cycle reads the oldest rows, decides per batch whether it counts, and in one transaction adds
the usage, marks the batch ids counted and deletes the rows it read. The delete is the log
position: a row still in the table is acknowledged and not yet counted, so a crash at any point
leaves either the row or its usage, never both and never neither. If another consumer deleted a
row first, the whole transaction rolls back and the cycle starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from google.protobuf.message import DecodeError

from governance.tracing import start_consumer_span
from service.config import ConsumerSettings
from service.metrics import PipelineMetrics
from service.pipeline.counting import Aggregate, Verdict, decode, merged_usage
from service.storage.ledger import AlreadyApplied, DeadLetter, Flush, Ledger, LogRow, LogRowsTaken

log = logging.getLogger("meterd.consumer")
READ_ROWS = 256  # log rows (batches) per cycle: up to 2.56 M records at the largest batch size


class DatabaseLogConsumer:
    def __init__(self, ledger: Ledger, settings: ConsumerSettings, metrics: PipelineMetrics) -> None:
        self._ledger = ledger
        self._cfg = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0
        self._last_backlog = 0.0
        self.healthy = False
        self.assigned = asyncio.Event()  # the database log has no partitions to wait for

    def wake(self) -> None:
        """A local writer appended: look now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self.assigned.set()
        self._task = asyncio.create_task(self._run(), name="meterd-log-consumer")

    async def stop(self) -> None:
        """Counts what the log holds (up to consumer.drain_seconds), then stops. Whatever is left
        stays in the log, durable, for the next start."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        drain_until: float | None = None
        while True:
            if self._stopping.is_set() and drain_until is None:
                drain_until = time.monotonic() + self._cfg.drain_seconds
            try:
                counted = await self.cycle()
                self.healthy = True
                await self._housekeeping()
            except Exception:
                self.healthy = False
                log.exception("database log consumer error; retrying")
                counted = 0
                await asyncio.sleep(1.0)
            if drain_until is not None and (counted == 0 or time.monotonic() >= drain_until):
                return
            if counted == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._cfg.log_poll_seconds)

    async def cycle(self) -> int:
        """Counts one read of the log; returns the rows consumed (0: the log is empty)."""
        rows = await self._ledger.read_log(0, READ_ROWS)
        if not rows:
            return 0
        started = time.perf_counter()
        flush = await self._prepare(rows)
        try:
            await self._ledger.apply(flush)
        except (LogRowsTaken, AlreadyApplied) as exc:
            log.warning("another consumer counted part of this read first; reading again", extra={"reason": str(exc)})
            return len(rows)
        self._metrics.flush_seconds.observe(time.perf_counter() - started)
        self._metrics.consumer_records.inc(sum(n for _, n in flush.applied.values()))
        return len(rows)

    async def _prepare(self, rows: list[LogRow]) -> Flush:
        agg = Aggregate()
        dead: list[DeadLetter] = []
        decoded = []
        for row in rows:
            try:
                decoded.append((row, decode(row.payload)))
            except DecodeError as exc:
                dead.append(DeadLetter(row.key, row.payload, f"undecodable TrafficBatch: {exc}"))
        states = await self._ledger.batch_states(b.dedupe_key for _, b in decoded)
        for row, batch in decoded:
            verdict = agg.verdict(batch, states.get(batch.dedupe_key))
            self._metrics.consumer_batches.labels(verdict.value).inc()
            if verdict is Verdict.COUNT:
                headers = [("traceparent", row.traceparent.encode())] if row.traceparent else None
                with start_consumer_span("process ingest_log", headers,
                                         attributes={"meterd.batch_id": batch.batch_id, "meterd.log_seq": row.seq}):
                    agg.add(batch)
            elif verdict is Verdict.CONFLICT:
                dead.append(DeadLetter(row.key, row.payload,
                                       "batch_id conflict: the id was already used for different records"))
        for d in dead:
            self._metrics.dlq.inc()
            log.warning("log row dead-lettered", extra={"dedupe_key": d.key, "error": d.reason})
        usage, saturated = merged_usage([agg])
        if saturated:
            self._metrics.usage_saturated.inc(saturated)
        return Flush(usage=usage, applied=agg.applied, log_seqs=[r.seq for r in rows], dead=dead)

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_backlog >= 1.0:
            self._last_backlog = now
            rows, _, oldest_ms = await self._ledger.log_backlog()
            self._metrics.consumer_lag.labels("log").set(rows)
            age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
            self._metrics.consumer_lag_seconds.set(age)
        if now - self._last_purge >= 600:
            self._last_purge = now
            removed = await self._ledger.purge(int(time.time()) - self._cfg.dedupe_retention_seconds)
            if removed:
                log.info("purged expired batch ids", extra={"removed": removed})
