"""The Kafka consumer's loop on a real database with a stand-in broker (tests/service/
test_consumer_rebalance.py's, plus fetching): a poison message is settled apart and sent to the
dead-letter topic with the partition moving on, and buffered sums are flushed early once they
reach consumer.max_flush_keys. The same poison path against a real broker (Tansu) is
tests/service/test_consumer_poison_kafka.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.metrics import PipelineMetrics
from service.pipeline.kafka_consumer import AggregatingConsumer
from service.pipeline.kafka_isolation import PartitionSettler
from service.storage import Repository
from service.storage.ledger import Flush, Ledger
from tests.service.test_consumer_poison import FAR_FUTURE_MINUTE, distinct_nodes_batch
from tests.service.test_consumer_rebalance import MINUTE, TOPIC, Msg, StandInKafka, batch, consumer, counted
from tests.support.pipeline import writer_batch


class FetchingKafka(StandInKafka):
    """Serves each owned partition's messages from its position, as a broker would after a seek."""

    def __init__(self, log: dict[int, list[bytes]]) -> None:
        super().__init__(set(log))
        self.log = log

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Msg]]:
        out = {}
        for tp in self.owned:
            pos = self.positions.get(tp.partition, 0)
            values = self.log[tp.partition][pos:]
            if values:
                out[tp] = [Msg(TOPIC, tp.partition, pos + i, v) for i, v in enumerate(values)]
                self.positions[tp.partition] = pos + len(values)
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out


class StandInDlq:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, bytes]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> None:
        self.sent.append((value, dict(headers or ())))

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        self.sent.append((msg.value, {"meterd-error": reason.encode()}))


@contextlib.asynccontextmanager
async def running(ledger: Ledger, log: dict[int, list[bytes]], registry: CollectorRegistry,
                  **consumer: Any) -> AsyncIterator[tuple[AggregatingConsumer, StandInDlq]]:
    c = AggregatingConsumer("127.0.0.1:9", Settings(consumer=consumer), ledger, PipelineMetrics(registry))
    kafka, dlq = FetchingKafka(log), StandInDlq()
    c._consumer = kafka  # type: ignore[assignment]  # our own object's attributes, not aiokafka's
    c._dlq = dlq  # type: ignore[assignment]
    await c.seek_to_stored(kafka.assignment())
    task = asyncio.create_task(c._run())
    try:
        yield c, dlq
    finally:
        c._stopping.set()
        await task


async def wait_for_usage(ledger: Ledger, account: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        rows = await Repository(ledger.db).usage_rows(account, 60, MINUTE, MINUTE + 60)
        got = sum(r[2] for r in rows)
        if got == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"usage of {account} is {got}, expected {expected} within {timeout} s")


async def test_a_poison_message_is_dead_lettered_and_the_partition_moves_on(sqlite_ledger: Ledger) -> None:
    quota_account = (await Repository(sqlite_ledger.db).create_account("quota", 10**12))["id"]
    poison = writer_batch("poison", 7, FAR_FUTURE_MINUTE, quota_account).SerializeToString()
    log = {0: [writer_batch(f"b{i}", 1, MINUTE, "victim").SerializeToString() for i in range(5)]
           + [poison] + [writer_batch(f"c{i}", 10, MINUTE, "victim").SerializeToString() for i in range(5)]}
    registry = CollectorRegistry()
    async with running(sqlite_ledger, log, registry, flush_interval_seconds=0.1) as (c, dlq):
        await wait_for_usage(sqlite_ledger, "victim", 55, 15)
    assert [v for v, _ in dlq.sent] == [poison]
    assert dlq.sent[0][1]["meterd-error"].startswith(b"apply failed 3 times alone: ValueError")
    assert await sqlite_ledger.load_offsets(c._kafka.group_id, TOPIC) == {0: 11}
    assert registry.get_sample_value("meterd_consumer_poison_batches_total") == 1
    errors = registry.get_sample_value("meterd_consumer_errors_total", {"kind": "data"})
    assert errors is not None and errors >= 2


async def test_buffered_sums_are_flushed_once_they_reach_max_flush_keys(sqlite_ledger: Ledger) -> None:
    log = {0: [distinct_nodes_batch(f"wide-{i}", 1_000).SerializeToString() for i in range(3)]}
    # No time-based flush within the test: only the keys bound can make it flush.
    async with running(sqlite_ledger, log, CollectorRegistry(), flush_interval_seconds=600,
                       max_flush_keys=1_500):
        await wait_for_usage(sqlite_ledger, "wide", 3_000, 5)


async def test_a_reset_after_a_quarantined_last_message_is_still_detected(
        sqlite_ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    """The poison path stores the fingerprint of the message it moved past, as a normal flush does:
    with the poison batch last in the partition, a longer new log is still seen as a reset."""
    quota_account = (await Repository(sqlite_ledger.db).create_account("quota", 10**12))["id"]
    poison = writer_batch("poison", 7, FAR_FUTURE_MINUTE, quota_account).SerializeToString()
    old = [Msg(TOPIC, 0, i, batch(f"old-{i}", 1), f"old-{i}".encode(), timestamp=i) for i in range(3)]
    old.append(Msg(TOPIC, 0, 3, poison, b"poison", timestamp=3))
    c, kafka = await consumer(sqlite_ledger, {0})
    settler = PartitionSettler(sqlite_ledger, c._kafka.group_id, TOPIC, PipelineMetrics(CollectorRegistry()),
                               attempts=2, dead_letter=StandInDlq().dead_letter)
    assert await settler.run(0, None, old) == 4
    new_log = [Msg(TOPIC, 0, i, batch(f"new-{i}", 10), f"new-{i}".encode(), timestamp=100 + i) for i in range(8)]
    c, kafka = await consumer(sqlite_ledger, {0})
    assert kafka.positions[0] == 3  # one message early, to compare it with the quarantined one
    await c._handle(TopicPartition(TOPIC, 0), new_log[kafka.positions[0]:])
    assert "does not hold the message last counted" in caplog.text
    await c._handle(TopicPartition(TOPIC, 0), new_log[kafka.positions[0]:])
    await c.flush()
    assert await counted(sqlite_ledger) == 3 + 80


async def stored_and_tripped(ledger: Ledger) -> tuple[AggregatingConsumer, StandInKafka, list[Msg]]:
    """A consumer re-reading from stored offset 5 (one message early) whose guard settles partition 0 apart."""
    old = [Msg(TOPIC, 0, i, batch(f"old-{i}", 1), f"old-{i}".encode(), timestamp=i) for i in range(8)]
    first, _ = await consumer(ledger, {0})
    await first._handle(TopicPartition(TOPIC, 0), old[:5])
    await first.flush()
    c, kafka = await consumer(ledger, {0})
    while not c._poison.wants(0):
        c._poison.failed({0: 5}, {0: 8}, ValueError("cannot apply"))
    return c, kafka, old


async def test_the_early_message_alone_keeps_the_partition_settled_apart(sqlite_ledger: Ledger) -> None:
    c, kafka, old = await stored_and_tripped(sqlite_ledger)
    await c._handle(TopicPartition(TOPIC, 0), old[4:5])  # only the identity check's message
    assert c._poison.wants(0)


async def test_an_offset_race_while_settling_apart_re_reads_from_the_stored_offset(sqlite_ledger: Ledger) -> None:
    c, kafka, old = await stored_and_tripped(sqlite_ledger)
    await sqlite_ledger.apply(Flush(offsets={0: (5, 6)}), group_id=c._kafka.group_id, topic=TOPIC)  # a zombie
    await c._handle(TopicPartition(TOPIC, 0), old[4:])
    assert c._stored[0] == 6 and kafka.positions[0] == 6
    assert await counted(sqlite_ledger) == 5
