"""The writer's side of the two logs: append a validated batch, durably, before acknowledging it.

Both first claim the batch id for the batch's digest in the database (group commit), so a reused
batch_id with other records is ALREADY_EXISTS whichever writer replica sees it and whenever.
- DatabaseLog appends the batch as a row in the claim's own transaction: one commit, no broker.
- KafkaLog produces the batch after the claim (acks=all); a claimed but uncounted batch retried by
  a client is produced again, and the consumer's dedupe counts it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.config import IngestSettings
from service.ingest.errors import BatchConflict, DependencyDown
from service.metrics import PipelineMetrics
from service.pipeline.group_commit import GroupCommit
from service.pipeline.kafka_log import BatchProducer
from service.storage.ledger import Claim, ClaimResult, Ledger


@dataclass(frozen=True, slots=True)
class Outgoing:
    key: str  # dedupe key (principal/batch_id)
    digest: bytes
    records: int
    payload: bytes  # serialized pipeline TrafficBatch
    headers: Sequence[tuple[str, bytes]]  # trace context
    latest_record_s: int | None = None  # the latest record time, kept with the claim (dedupe retention)


class BatchLog(Protocol):
    name: str

    async def append(self, batch: Outgoing) -> bool:
        """Durably appends; returns True when the batch id was already taken by the same records.
        Raises BatchConflict (other records) or DependencyDown (retry later)."""
        ...

    async def aclose(self) -> None: ...


def _claims(ledger: Ledger, settings: IngestSettings, *, append_to_log: bool) -> GroupCommit[Claim, ClaimResult]:
    async def run(items: Sequence[Claim]) -> Sequence[ClaimResult]:
        return await ledger.claim(items, append_to_log=append_to_log)

    return GroupCommit(run, settings.claim_group_max_batches)


def _check(result: ClaimResult, batch: Outgoing) -> None:
    if result.conflict:
        batch_id = batch.key.split("/", 1)[-1]
        raise BatchConflict(f"batch_id '{batch_id}' was already used for different records")


class DatabaseLog:
    name = "database"

    def __init__(self, ledger: Ledger, settings: IngestSettings, metrics: PipelineMetrics,
                 on_append: Callable[[], None] = lambda: None) -> None:
        self._ledger = ledger
        self._settings = settings
        self._metrics = metrics
        self._group = _claims(ledger, settings, append_to_log=True)
        self._on_append = on_append  # wakes a consumer in the same process
        self._backlog_records = 0
        self._backlog_read_at = 0.0
        self._backlog_lock = asyncio.Lock()

    async def append(self, batch: Outgoing) -> bool:
        await self._refuse_when_full()
        started = time.perf_counter()
        traceparent = next((v.decode() for k, v in batch.headers if k == "traceparent"), None)
        result = await self._group.submit(Claim(batch.key, batch.digest, batch.records, batch.payload, traceparent,
                                                 batch.latest_record_s))
        _check(result, batch)
        self._metrics.log_append_seconds.labels(self.name).observe(time.perf_counter() - started)
        if result.new:
            self._backlog_records += batch.records
            self._on_append()
        return not result.new

    async def _refuse_when_full(self) -> None:
        # The backlog is re-read at most once a second; between reads it is counted up locally.
        if time.monotonic() - self._backlog_read_at >= 1.0:
            async with self._backlog_lock:
                if time.monotonic() - self._backlog_read_at >= 1.0:
                    _, self._backlog_records, _ = await self._ledger.log_backlog()
                    self._backlog_read_at = time.monotonic()
        if self._backlog_records >= self._settings.log_max_pending_records:
            raise DependencyDown(f"the database log holds {self._backlog_records} records not yet counted "
                                 f"(limit ingest.log_max_pending_records); retry later", 2.0)

    async def aclose(self) -> None:
        await self._group.aclose()


class KafkaLog:
    name = "kafka"

    def __init__(self, ledger: Ledger, producer: BatchProducer, topic: str, settings: IngestSettings,
                 metrics: PipelineMetrics) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._group = _claims(ledger, settings, append_to_log=False)

    async def append(self, batch: Outgoing) -> bool:
        started = time.perf_counter()
        result = await self._group.submit(Claim(batch.key, batch.digest, batch.records,
                                                 latest_record_s=batch.latest_record_s))
        _check(result, batch)
        if not result.applied:  # counted batches need no second trip through Kafka
            await self._producer.send(self._topic, batch.key.encode(), batch.payload, batch.headers)
        self._metrics.log_append_seconds.labels(self.name).observe(time.perf_counter() - started)
        return not result.new

    async def aclose(self) -> None:
        await self._group.aclose()
