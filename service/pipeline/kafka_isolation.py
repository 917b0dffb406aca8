"""Kafka mode's poison path: the messages of a partition whose flush kept failing the same way are
applied in groups, halved on failure, each group its own flush with its own offset
compare-and-set; a message that fails alone goes to the dead-letter topic (acknowledged before
the stored offset moves past it) and everything behind it is counted."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka.structs import ConsumerRecord
from google.protobuf.message import DecodeError

from service.metrics import PipelineMetrics
from service.pipeline.counting import Aggregate, Verdict, decode, merged_usage, observe_freshness
from service.pipeline.kafka_identity import message_mark
from service.pipeline.poison import FailureStreak, settle
from service.storage.ledger import AlreadyApplied, Flush, Ledger, OffsetConflict

log = logging.getLogger("meterd.consumer")
DeadLetterSend = Callable[[ConsumerRecord, str], Awaitable[None]]


class PartitionSettler:
    def __init__(self, ledger: Ledger, group_id: str, topic: str, metrics: PipelineMetrics, attempts: int,
                 dead_letter: DeadLetterSend) -> None:
        self._ledger = ledger
        self._group_id = group_id
        self._topic = topic
        self._metrics = metrics
        self._attempts = attempts
        self._dead_letter = dead_letter

    async def run(self, partition: int, stored: int | None, messages: Sequence[ConsumerRecord]) -> int | None:
        """Applies `messages` (in offset order, starting at the stored offset); returns the new stored offset."""
        position = [stored]

        async def write(flush: Flush, last: ConsumerRecord) -> None:
            # The mark of the last message moved past, as the normal flush stores: a later reset is seen.
            flush.offsets = {partition: (position[0], last.offset + 1)}
            flush.marks = {partition: message_mark(last)}
            await self._ledger.apply(flush, group_id=self._group_id, topic=self._topic)
            position[0] = last.offset + 1

        async def apply(group: Sequence[ConsumerRecord]) -> None:
            agg = await self._aggregate(group)
            usage, _ = merged_usage([agg])
            await write(Flush(usage=usage, applied=agg.applied), group[-1])
            observe_freshness(self._metrics, [agg])
            self._metrics.consumer_records.inc(agg.records)

        async def quarantine(msg: ConsumerRecord, reason: str) -> None:
            await self._dead_letter(msg, reason)
            await write(Flush(), msg)
            self._metrics.consumer_poison.inc()
            log.error("poison batch moved to the dead-letter topic; the partition moves on "
                      "(runbook: alerts/RUNBOOKS.md#meterddlqgrowing)",
                      extra={"partition": partition, "offset": msg.offset, "error": reason})

        await settle(messages, apply, quarantine, self._attempts, passthrough=(OffsetConflict, AlreadyApplied))
        return position[0]

    async def _aggregate(self, group: Sequence[ConsumerRecord]) -> Aggregate:
        """The group's countable batches; undecodable and conflicting ones go to the dead-letter topic."""
        decoded = []
        for msg in group:
            try:
                decoded.append((msg, decode(msg.value)))
            except DecodeError as exc:
                await self._dead_letter(msg, f"undecodable TrafficBatch: {exc}")
        states = await self._ledger.batch_states(b.dedupe_key for _, b in decoded)
        agg = Aggregate()
        for msg, batch in decoded:
            verdict = agg.verdict(batch, states.get(batch.dedupe_key))
            if verdict is Verdict.COUNT:
                agg.add(batch)
            elif verdict is Verdict.CONFLICT:
                await self._dead_letter(msg, "batch_id conflict: the id was already used for different records")
        return agg


class PoisonGuard:
    """Decides when a partition's messages are settled apart, and up to which offset."""

    def __init__(self, settler: PartitionSettler, attempts: int) -> None:
        self._settler = settler
        self._streak = FailureStreak(attempts)
        self._until: dict[int, int] = {}  # partition -> offset below which messages are settled apart

    def failed(self, stored: dict[int, int | None], buffered: dict[int, int | None], exc: Exception) -> None:
        """A flush (or cycle) failed; after the limit of identical failures, the messages each
        partition had buffered are settled apart when they are read again."""
        if not self._streak.failed(tuple(sorted(stored.items())), exc):
            return
        for p, next_offset in buffered.items():
            if next_offset is not None:
                self._until[p] = max(self._until.get(p, 0), next_offset)
        log.error("the same flush failed %d times; applying its batches apart to find the one that fails",
                  self._streak.count, extra={"partitions": sorted(self._until)})
        self._streak.succeeded()

    def succeeded(self) -> None:
        self._streak.succeeded()

    def wants(self, partition: int) -> bool:
        return partition in self._until

    async def settle(self, partition: int, stored: int | None,
                     messages: list[ConsumerRecord]) -> tuple[int | None, list[ConsumerRecord]]:
        """Settles the messages below the partition's offset; returns the new stored offset and the rest."""
        until = self._until[partition]
        head = [m for m in messages if m.offset < until]
        if head:
            stored = await self._settler.run(partition, stored, head)
        if not head or head[-1].offset + 1 >= until:
            del self._until[partition]
        return stored, [m for m in messages if m.offset >= until]
