"""The aggregating Kafka consumer (group meterd-aggregator).

Exactly-once effect: the database, not Kafka, holds the truth about progress. Counted work is kept
per partition; a flush writes, in one transaction, each partition's sums, the batch ids they count
and the partition's next offset as a compare-and-set on the offset this consumer started from. A
partition whose compare-and-set fails was taken over by another consumer: its sums are dropped
(the new owner re-reads them) and only the partitions still owned are written. On revocation the
revoked partitions are flushed, and whatever the flush could not write is dropped all the same,
never carried into a later flush. Kafka offset commits are still made, only for lag tooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from google.protobuf.message import DecodeError

from governance.tracing import start_consumer_span
from service.config import Settings
from service.metrics import PipelineMetrics
from service.pipeline.counting import Aggregate, Verdict, decode, merged_usage, observe_freshness
from service.pipeline.kafka_identity import LogIdentity, message_mark
from service.pipeline.kafka_isolation import PartitionSettler, PoisonGuard
from service.pipeline.kafka_offsets import StoredPositions
from service.pipeline.poison import error_kind
from service.pipeline.retention import PURGE_EVERY_S, purge_expired
from service.storage.ledger import AlreadyApplied, Flush, Ledger, OffsetConflict

log = logging.getLogger("meterd.consumer")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: AggregatingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # aiokafka waits for this before giving the partitions away, and swallows what it raises.
        await self._owner.release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._owner.seek_to_stored(assigned)


class AggregatingConsumer(StoredPositions):
    def __init__(self, bootstrap: str, settings: Settings, ledger: Ledger, metrics: PipelineMetrics) -> None:
        self._kafka = settings.kafka
        self._cfg = settings.consumer
        self._ledger = ledger
        self._metrics = metrics
        # auto_offset_reset="none": an offset past the log's end is our decision, made loudly.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=self._kafka.group_id, enable_auto_commit=False,
            auto_offset_reset="none", max_poll_records=self._cfg.fetch_max_records,
            isolation_level="read_uncommitted")
        self._dlq = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                     enable_idempotence=self._kafka.enable_idempotence)
        self._buffers: dict[int, Aggregate] = {}  # owned partition -> counted, not yet flushed
        self._stored: dict[int, int | None] = {}  # owned partition -> offset stored when we got it
        self._halted: set[int] = set()  # partitions stopped by the "halt" stale-offset policy
        self._identity = LogIdentity()  # is each partition still the log its stored offset is for?
        self._lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._last_purge = 0.0
        self._caught_up_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.healthy = False
        self._needs_rewind = False
        self.assigned = asyncio.Event()  # set once the group gave us partitions (start-up readiness)
        self._poison = PoisonGuard(PartitionSettler(ledger, self._kafka.group_id, self._kafka.topic, metrics,
                                                    self._cfg.poison_attempts, self._dead_letter),
                                   self._cfg.poison_attempts)

    async def start(self) -> None:
        await self._dlq.start()
        await self._consumer.start()
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._task = asyncio.create_task(self._run(), name="meterd-consumer")

    async def stop(self) -> None:
        """Stops fetching, flushes what was counted, leaves the group."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        await self._consumer.stop()
        await self._dlq.stop()

    # -- partition ownership ----------------------------------------------------------------
    async def seek_to_stored(self, assigned: Any) -> None:
        async with self._lock:
            try:
                await self.seek(assigned)
            except Exception:
                # Database down during a rebalance: the fetch loop must not read these partitions
                # from wherever Kafka put them; it rewinds (retrying) before its next fetch.
                log.exception("could not load stored offsets for assigned partitions; will retry")
                self._needs_rewind = True
            owned = {tp.partition for tp in self._consumer.assignment()}
            for p in set(self._stored) - owned:
                self.forget(p)
            log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})
            self.assigned.set()

    async def release(self, partitions: set[int]) -> None:
        """Revocation: flush the revoked partitions; whatever could not be written is dropped, so it
        can never be written later for partitions another consumer now owns."""
        try:
            await self.flush(partitions)
        except Exception:
            log.exception("flush on revocation failed; the new owner re-reads from the stored offsets")
        finally:
            for p in partitions:
                self.forget(p)

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._needs_rewind:
                    await self._rewind_until_done()
                fetched = await self._consumer.getmany(timeout_ms=200)
                for tp, messages in fetched.items():
                    await self._handle(tp, messages)
                await self.check_positions()
                if (self._buffered() >= self._cfg.max_buffer_records
                        or sum(len(b.usage) for b in self._buffers.values()) >= self._cfg.max_flush_keys
                        or time.monotonic() - self._last_flush >= self._cfg.flush_interval_seconds):
                    await self.flush()
                await self._maybe_purge()
                self.healthy = True
            except asyncio.CancelledError:
                raise
            except OffsetOutOfRangeError as exc:  # a real Kafka broker says so for a stale offset
                await self.handle_stale({tp.partition: off for tp, off in exc.args[0].items()} if exc.args else {})
            except Exception as exc:
                # A database or broker hiccup: drop the unflushed buffers and re-read from the
                # stored offsets, which is always correct, then retry. The same failure again and
                # again is a poison batch: the guard has the next read settled apart.
                self.healthy = False
                self._metrics.consumer_errors.labels(error_kind(exc)).inc()
                log.exception("consumer loop error; rewinding to stored offsets")
                self._poison.failed(self._stored, {p: b.next_offset for p, b in self._buffers.items()}, exc)
                await self._rewind_until_done()
                await asyncio.sleep(1.0)

    def _buffered(self) -> int:
        return sum(b.records for b in self._buffers.values())

    async def _rewind_until_done(self) -> None:
        # The buffers are gone; fetching on from the current position would skip them for good.
        # So no fetch until the seek to the stored offsets has really happened.
        while not self._stopping.is_set():
            if await self._rewind():
                self._needs_rewind = False
                return
            await asyncio.sleep(1.0)

    async def _handle(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> None:
        async with self._lock:
            buf = self._buffers.get(tp.partition)
            if buf is None or not messages:
                return  # revoked while we were fetching
            messages, reset = self._identity.check(tp.partition, messages)
            if reset is not None:
                await self.reset_partition_locked(tp.partition, self._stored.get(tp.partition) or 0,
                                             f"the partition does not hold the message last counted: {reset}")
                return
            if self._poison.wants(tp.partition) and buf.next_offset is None and messages:
                try:
                    self._stored[tp.partition], messages = await self._poison.settle(
                        tp.partition, self._stored.get(tp.partition), messages)
                except OffsetConflict as exc:
                    await self._lost_race(exc.partitions)
                    return
            decoded: list[tuple[ConsumerRecord, Any]] = []
            if not messages:
                return
            for msg in messages:
                try:
                    decoded.append((msg, decode(msg.value)))
                except DecodeError as exc:
                    await self._dead_letter(msg, f"undecodable TrafficBatch: {exc}")
            states = await self._ledger.batch_states(b.dedupe_key for _, b in decoded)
            for msg, batch in decoded:
                verdict = buf.verdict(batch, states.get(batch.dedupe_key))
                self._metrics.consumer_batches.labels(verdict.value).inc()
                if verdict is Verdict.COUNT:
                    # A CONSUMER span, child of the writer's PRODUCER span (context from the headers).
                    with start_consumer_span(f"process {msg.topic}", msg.headers,
                                             attributes={"meterd.batch_id": batch.batch_id,
                                                         "messaging.kafka.offset": msg.offset}):
                        buf.add(batch)
                elif verdict is Verdict.CONFLICT:
                    await self._dead_letter(msg, "batch_id conflict: the id was already used for different records")
            buf.next_offset = messages[-1].offset + 1
            buf.last_mark = message_mark(messages[-1])
            self._metrics.buffer_records.set(self._buffered())

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

    async def flush(self, partitions: set[int] | None = None) -> None:
        async with self._lock:
            await self._flush_locked(partitions)

    async def _flush_locked(self, partitions: set[int] | None) -> None:
        while True:
            chosen = {p: b for p, b in self._buffers.items()
                      if b.next_offset is not None and (partitions is None or p in partitions)}
            if not chosen:
                self._last_flush = time.monotonic()
                return
            usage, saturated = merged_usage(chosen.values())
            applied = {k: v for b in chosen.values() for k, v in b.applied.items()}
            offsets = {p: (self._stored[p], b.next_offset) for p, b in chosen.items() if b.next_offset is not None}
            marks = {p: b.last_mark for p, b in chosen.items() if b.last_mark is not None}
            started = time.perf_counter()
            try:
                await self._ledger.apply(Flush(usage=usage, applied=applied, offsets=offsets, marks=marks),
                                         group_id=self._kafka.group_id, topic=self.topic)
            except OffsetConflict as exc:
                await self._lost_race(exc.partitions)
                continue
            except AlreadyApplied:
                log.warning("batch ids counted elsewhere since they were checked; re-reading")
                await self._rewind_locked()
                return
            break
        self._metrics.flush_seconds.observe(time.perf_counter() - started)
        observe_freshness(self._metrics, chosen.values())
        if saturated:
            self._metrics.usage_saturated.inc(saturated)
        self._poison.succeeded()
        for p, (_, new) in offsets.items():
            self._stored[p] = new
            self._buffers[p] = Aggregate()
        self._metrics.buffer_records.set(self._buffered())
        self._last_flush = time.monotonic()
        await self._commit_to_kafka(offsets)

    async def _lost_race(self, partitions: set[int]) -> None:
        """Another consumer (a zombie, or the new owner) moved these offsets first: drop their sums.
        A partition Kafka still assigns to us is re-read from the stored offset, never forgotten."""
        owned = {tp.partition for tp in self._consumer.assignment()} & partitions
        log.warning("lost an offset race during flush; dropping those sums",
                    extra={"partitions": sorted(partitions), "still_assigned": sorted(owned)})
        for p in partitions - owned:
            self.forget(p)
        if owned:
            await self.seek([self.tp(p) for p in sorted(owned)])

    async def _commit_to_kafka(self, offsets: dict[int, tuple[int | None, int]]) -> None:
        # Informational only (lag tooling); the database offsets are authoritative.
        assigned = self._consumer.assignment()
        commit = {self.tp(p): OffsetAndMetadata(new, "") for p, (_, new) in offsets.items() if self.tp(p) in assigned}
        if commit:
            with contextlib.suppress(Exception):
                await self._consumer.commit(commit)

    async def _rewind(self) -> bool:
        async with self._lock:
            return await self._rewind_locked()

    async def _rewind_locked(self) -> bool:
        self._buffers = {p: Aggregate() for p in self._buffers}
        self._metrics.buffer_records.set(0)
        try:
            await self.seek(self._consumer.assignment())
        except Exception as exc:  # counted: a consumer stuck here must still fire MeterdConsumerFailing
            self._metrics.consumer_errors.labels(error_kind(exc)).inc()
            log.exception("could not reload stored offsets; will retry")
            return False
        return True

    async def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        await purge_expired(self._ledger, self._cfg)
