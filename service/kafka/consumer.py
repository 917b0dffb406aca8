"""The aggregating consumer (group meterd-aggregator).

Exactly-once effect: the database, not Kafka, holds the truth about progress. Each flush writes
usage sums, the batch ids it counted and every partition's next offset in one transaction; on
assignment the consumer seeks to the stored offsets. A batch id already stored (a client or
producer retry) is skipped. Kafka offset commits are still made, only so lag tooling works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from google.protobuf.message import DecodeError

from governance.tracing import start_consumer_span
from service.config import Settings
from service.kafka.aggregator import Aggregate
from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import pipeline_pb2
from service.storage import Repository
from service.storage.repository import OffsetConflict

log = logging.getLogger("meterd.consumer")


def _check_batch(batch: pipeline_pb2.TrafficBatch) -> None:
    # Protobuf parses almost any bytes into *some* message; a batch the writer produced always has
    # these, so anything without them is not ours and belongs in the dead-letter topic.
    if not batch.dedupe_key or not batch.batch_id or not batch.records or len(batch.digest) != 16:
        raise DecodeError("not a writer-produced batch (missing dedupe_key, batch_id, records or digest)")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: AggregatingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # aiokafka waits for this coroutine before giving partitions away: flush what we hold.
        await self._owner.flush()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._owner.seek_to_stored(assigned)


class AggregatingConsumer:
    def __init__(self, bootstrap: str, settings: Settings, repo: Repository, metrics: PipelineMetrics) -> None:
        self._kafka = settings.kafka
        self._cfg = settings.consumer
        self._repo = repo
        self._metrics = metrics
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=self._kafka.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self._cfg.fetch_max_records,
            isolation_level="read_uncommitted")
        self._dlq = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                     enable_idempotence=self._kafka.enable_idempotence)
        self._agg = Aggregate()
        # partition -> next offset stored in the database when we got it (None: nothing stored)
        self._stored: dict[int, int | None] = {}
        self._lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._last_purge = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.healthy = False
        self._needs_rewind = False
        self.assigned = asyncio.Event()  # set once the group gave us partitions (start-up readiness)

    async def start(self) -> None:
        await self._dlq.start()
        await self._consumer.start()
        self._consumer.subscribe([self._kafka.topic], listener=_Rebalance(self))
        self._task = asyncio.create_task(self._run(), name="meterd-consumer")

    async def stop(self) -> None:
        """Stops fetching, flushes what was aggregated, leaves the group."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self._consumer.stop()
        await self._dlq.stop()

    # -- partition ownership ----------------------------------------------------------------
    async def _seek(self, partitions: Any) -> None:
        """Positions each partition at the offset stored in the database (the beginning if none)."""
        stored = await self._repo.load_offsets(self._kafka.group_id, self._kafka.topic)
        for tp in partitions:
            offset = stored.get(tp.partition)
            self._stored[tp.partition] = offset
            if offset is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)

    async def seek_to_stored(self, assigned: Any) -> None:
        async with self._lock:
            try:
                await self._seek(assigned)
            except Exception:
                # Database down during a rebalance: the fetch loop must not read these partitions
                # from wherever Kafka put them; it rewinds (retrying) before its next fetch.
                log.exception("could not load stored offsets for assigned partitions; will retry")
                self._needs_rewind = True
            self._stored = {p: o for p, o in self._stored.items()
                            if TopicPartition(self._kafka.topic, p) in self._consumer.assignment()}
            log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})
            self.assigned.set()

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._needs_rewind:
                    await self._rewind_until_done()
                fetched = await self._consumer.getmany(timeout_ms=200)
                for tp, messages in fetched.items():
                    await self._handle(tp, messages)
                self._update_lag()
                if (self._agg.records >= self._cfg.max_buffer_records
                        or time.monotonic() - self._last_flush >= self._cfg.flush_interval_seconds):
                    await self.flush()
                await self._maybe_purge()
                self.healthy = True
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database or broker hiccup: drop the unflushed buffer and re-read from the
                # stored offsets, which is always correct, then retry.
                self.healthy = False
                log.exception("consumer loop error; rewinding to stored offsets")
                await self._rewind_until_done()
                await asyncio.sleep(1.0)

    async def _rewind_until_done(self) -> None:
        # The buffer is gone; fetching on from the current position would skip it for good.
        # So no fetch until the seek to the stored offsets has really happened.
        while not self._stopping.is_set():
            if await self._rewind():
                self._needs_rewind = False
                return
            await asyncio.sleep(1.0)

    async def _handle(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> None:
        async with self._lock:
            if tp.partition not in self._stored:
                return  # revoked while we were fetching
            decoded: list[tuple[ConsumerRecord, pipeline_pb2.TrafficBatch]] = []
            for msg in messages:
                batch = pipeline_pb2.TrafficBatch()
                try:
                    batch.ParseFromString(msg.value or b"")
                    _check_batch(batch)
                except DecodeError as exc:
                    await self._dead_letter(msg, f"undecodable TrafficBatch: {exc}")
                    continue
                decoded.append((msg, batch))
            keys = [b.dedupe_key for _, b in decoded if b.dedupe_key not in self._agg.seen]
            stored = await self._repo.seen_digests(keys)
            for msg, batch in decoded:
                key = batch.dedupe_key
                if key in self._agg.seen or key in stored:
                    self._metrics.consumer_batches.labels("duplicate").inc()
                    continue
                # A CONSUMER span, child of the writer's PRODUCER span (context from the headers).
                with start_consumer_span(f"process {msg.topic}", msg.headers,
                                         attributes={"meterd.batch_id": batch.batch_id,
                                                     "messaging.kafka.offset": msg.offset}):
                    self._agg.add(batch)
                self._metrics.consumer_batches.labels("applied").inc()
                self._metrics.consumer_records.inc(len(batch.records))
            if messages:
                self._agg.advance(tp.partition, messages[-1].offset + 1)
            self._metrics.buffer_records.set(self._agg.records)

    async def _dead_letter(self, msg: ConsumerRecord, error: str) -> None:
        headers = list(msg.headers or ()) + [
            ("meterd-error", error.encode()[:1000]),
            ("meterd-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode())]
        # Acknowledged before the offset moves past it: a dead letter is never lost either.
        await self._dlq.send_and_wait(self._kafka.dlq_topic, msg.value, key=msg.key, headers=headers)
        self._metrics.dlq.inc()
        self._metrics.consumer_batches.labels("dlq").inc()
        log.warning("message sent to dead-letter topic",
                    extra={"source": f"{msg.topic}/{msg.partition}/{msg.offset}", "error": error})

    async def flush(self) -> None:
        async with self._lock:
            agg = self._agg
            if agg.empty():
                self._last_flush = time.monotonic()
                return
            offsets = {p: (self._stored.get(p), o) for p, o in agg.next_offsets.items() if p in self._stored}
            started = time.perf_counter()
            try:
                await self._repo.apply_batch(group_id=self._kafka.group_id, topic=self._kafka.topic,
                                             offsets=offsets, usage=agg.usage, seen=agg.seen)
            except OffsetConflict:
                log.warning("lost partition ownership during flush; discarding buffer and rewinding")
                await self._rewind_locked()
                return
            self._metrics.flush_seconds.observe(time.perf_counter() - started)
            for p, (_, new) in offsets.items():
                self._stored[p] = new
            self._agg = Aggregate()
            self._metrics.buffer_records.set(0)
            self._last_flush = time.monotonic()
        await self._commit_to_kafka(offsets)

    async def _commit_to_kafka(self, offsets: dict[int, tuple[int | None, int]]) -> None:
        # Informational only (lag tooling); the database offsets are authoritative.
        assigned = self._consumer.assignment()
        commit = {TopicPartition(self._kafka.topic, p): OffsetAndMetadata(new, "")
                  for p, (_, new) in offsets.items() if TopicPartition(self._kafka.topic, p) in assigned}
        if commit:
            with contextlib.suppress(Exception):
                await self._consumer.commit(commit)

    async def _rewind(self) -> bool:
        async with self._lock:
            return await self._rewind_locked()

    async def _rewind_locked(self) -> bool:
        self._agg = Aggregate()
        self._metrics.buffer_records.set(0)
        try:
            await self._seek(self._consumer.assignment())
        except Exception:
            log.exception("could not reload stored offsets; will retry")
            return False
        return True

    def _update_lag(self) -> None:
        # High-water marks from fetch responses: Tansu's ListOffsets is unreliable here.
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            pos = self._agg.next_offsets.get(tp.partition, self._stored.get(tp.partition))
            if high is not None and pos is not None:
                self._metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - pos))

    async def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 600:
            return
        self._last_purge = now
        removed = await self._repo.purge_seen(int(time.time()) - self._cfg.dedupe_retention_seconds)
        if removed:
            log.info("purged expired batch ids", extra={"removed": removed})
        minutes = await self._repo.purge_minutes(int(time.time()) - self._cfg.minute_retention_seconds)
        if minutes:
            log.info("purged per-minute usage past retention", extra={"removed": minutes})
