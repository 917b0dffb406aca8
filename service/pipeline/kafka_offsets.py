"""The Kafka consumer's positions: where each owned partition resumes (the offset stored in the
database, never Kafka's), its lag, and what happens when the log was reset under the stored offsets
(the consumer.on_stale_offsets policy). The loop, counting and flushing are in kafka_consumer.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.config import ConsumerSettings, KafkaSettings
from service.metrics import PipelineMetrics
from service.pipeline.counting import Aggregate
from service.pipeline.kafka_identity import LogIdentity
from service.storage.ledger import Ledger

log = logging.getLogger("meterd.consumer")


class StoredPositions:
    """The per-partition state both halves share; AggregatingConsumer sets it up in its __init__."""

    _kafka: KafkaSettings
    _cfg: ConsumerSettings
    _ledger: Ledger
    _metrics: PipelineMetrics
    _consumer: AIOKafkaConsumer
    _buffers: dict[int, Aggregate]  # owned partition -> counted, not yet flushed
    _stored: dict[int, int | None]  # owned partition -> offset stored when we got it
    _halted: set[int]  # partitions stopped by the "halt" stale-offset policy
    _identity: LogIdentity
    _caught_up_at: float
    _lock: asyncio.Lock

    @property
    def topic(self) -> str:
        return self._kafka.topic

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    async def seek(self, partitions: Iterable[TopicPartition]) -> None:
        """Positions each partition at the offset stored in the database (the beginning if none)."""
        stored = await self._ledger.load_positions(self._kafka.group_id, self.topic)
        for tp in partitions:
            offset, mark = stored.get(tp.partition, (None, None))
            self._stored[tp.partition] = offset
            self._buffers[tp.partition] = Aggregate()
            if offset is None:
                self._identity.forget(tp.partition)
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, self._identity.start_at(tp.partition, offset, mark))

    def forget(self, partition: int) -> None:
        self._stored.pop(partition, None)
        self._buffers.pop(partition, None)
        self._halted.discard(partition)
        self._identity.forget(partition)

    async def check_positions(self) -> None:
        """Lag per partition, and stale offsets: a position past the high-water mark means the log
        was recreated or reset under the stored offsets (Tansu never answers OFFSET_OUT_OF_RANGE)."""
        stale: dict[int, int] = {}
        behind = False
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            buf = self._buffers.get(tp.partition)
            pos = buf.next_offset if buf is not None and buf.next_offset is not None else self._stored.get(tp.partition)
            if high is None or pos is None:
                continue
            if pos > high and tp.partition not in self._halted:
                stale[tp.partition] = pos
            self._metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - pos))
            behind = behind or high > pos
        if not behind:
            self._caught_up_at = time.time()
        self._metrics.consumer_lag_seconds.set(time.time() - self._caught_up_at)
        if stale:
            await self.handle_stale(stale)

    async def handle_stale(self, positions: dict[int, int]) -> None:
        async with self._lock:
            for p, pos in positions.items():
                if not await self._log_starts_at_stored(p):
                    await self.reset_partition_locked(p, pos, "stored offset is past the end of the partition")

    async def _log_starts_at_stored(self, p: int) -> bool:
        """Retention deleted just the message before the stored offset (real Kafka answers the
        early seek OFFSET_OUT_OF_RANGE): the log starts at the stored offset, nothing is skipped."""
        stored = self._stored.get(p)
        if stored is None or not self._identity.pending(p):
            return False
        if (await self._consumer.beginning_offsets([self.tp(p)])).get(self.tp(p)) != stored:
            return False
        self._identity.forget(p)
        self._consumer.seek(self.tp(p), stored)
        return True

    async def reset_partition_locked(self, p: int, pos: int, what: str) -> None:
        """The partition is not the log the stored offset is for: say so, then apply the policy."""
        policy = self._cfg.on_stale_offsets
        self._metrics.stale_offsets.labels(policy).inc()
        log.error(f"{what}: the topic was recreated or the broker reset "
                  "(runbook: alerts/RUNBOOKS.md#meterdstaleoffsets)",
                  extra={"topic": self.topic, "partition": p, "position": pos, "policy": policy})
        self._identity.forget(p)
        if policy == "halt":
            self._consumer.pause(self.tp(p))
            self._halted.add(p)
            return
        begin = (await self._consumer.beginning_offsets([self.tp(p)])).get(self.tp(p), 0)
        await self._ledger.reset_offsets(self._kafka.group_id, self.topic, {p: begin})
        self._stored[p] = begin
        self._buffers[p] = Aggregate()
        self._consumer.seek(self.tp(p), begin)

