"""Issue 17: the Kafka consumer's partition bookkeeping under rebalances, on a real database.

The broker side is a small stand-in for aiokafka's consumer (assignment, seek, high-water marks):
these are unit tests of the consumer's logic (what it writes, for which partition, after a revoke
or a failed flush). The whole path with real brokers and rebalances is tests/chaos/test_chaos.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.metrics import PipelineMetrics
from service.pipeline.kafka_consumer import AggregatingConsumer
from service.storage import Repository
from service.storage.ledger import Ledger
from tests.support.pipeline import writer_batch

TOPIC = "meterd.traffic.v1"
MINUTE = int(time.time()) // 60 * 60


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes = b""
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0


class StandInKafka:
    """What AggregatingConsumer asks of aiokafka's consumer, with no broker behind it."""

    def __init__(self, partitions: set[int]) -> None:
        self.owned = {TopicPartition(TOPIC, p) for p in partitions}
        self.positions: dict[int, int] = {}
        self.high: dict[int, int] = {}
        self.paused: set[int] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.positions[tp.partition] = 0

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp.partition)

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp.partition)

    async def commit(self, offsets: Any) -> None:
        pass


def batch(key: str, bytes_in: int) -> bytes:
    return writer_batch(key, bytes_in, MINUTE).SerializeToString()


@pytest.fixture
def ledger(sqlite_ledger: Ledger) -> Ledger:
    return sqlite_ledger


async def consumer(ledger: Ledger, partitions: set[int]) -> tuple[AggregatingConsumer, StandInKafka]:
    c = AggregatingConsumer("127.0.0.1:9", Settings(), ledger, PipelineMetrics(CollectorRegistry()))
    kafka = StandInKafka(partitions)
    c._consumer = kafka  # type: ignore[assignment]  # our own object's attribute, not aiokafka's
    await c.seek_to_stored(kafka.assignment())
    return c, kafka


async def counted(ledger: Ledger) -> int:
    rows = await Repository(ledger.db).usage_rows("acc", 60, MINUTE, MINUTE + 60)
    return sum(r[2] for r in rows)


def tp(p: int) -> TopicPartition:
    return TopicPartition(TOPIC, p)


async def test_revoke_in_the_middle_of_a_multi_partition_fetch(ledger: Ledger) -> None:
    old, kafka = await consumer(ledger, {0, 1})
    # One getmany() returned both partitions; partition 1 is revoked between handling them.
    await old._handle(tp(0), [Msg(TOPIC, 0, 0, batch("a", 1))])
    kafka.owned.discard(tp(1))
    await old.release({1})
    await old._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10))])  # fetched before the revoke: dropped
    await old.flush()
    # The new owner of partition 1 reads from the stored offset (none: the beginning).
    new, _ = await consumer(ledger, {1})
    await new._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10))])
    await new.flush()
    assert await counted(ledger) == 11
    assert await ledger.load_offsets(old._kafka.group_id, TOPIC) == {0: 1, 1: 1}


async def test_a_failed_revoke_flush_leaves_nothing_behind(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    old, kafka = await consumer(ledger, {0, 1})
    await old._handle(tp(0), [Msg(TOPIC, 0, 0, batch("a", 1))])
    await old._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10))])

    async def database_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database unreachable")

    with monkeypatch.context() as m:
        m.setattr(ledger, "apply", database_down)
        kafka.owned.discard(tp(1))
        await old.release({1})  # must not raise (aiokafka would swallow it) and must drop partition 1
    new, _ = await consumer(ledger, {1})
    await new._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10))])
    await new.flush()
    await old.flush()  # partition 0 only: partition 1's sums went with the revoke
    assert await counted(ledger) == 11


async def test_a_partition_lost_before_the_flush_is_not_written(ledger: Ledger) -> None:
    """Another consumer took partition 1 and flushed first: this one's flush writes partition 0
    and drops partition 1 (the offset compare-and-set tells it), instead of failing both."""
    old, _ = await consumer(ledger, {0, 1})
    await old._handle(tp(0), [Msg(TOPIC, 0, 0, batch("a", 1))])
    await old._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10))])
    old_kafka = old._consumer
    new, _ = await consumer(ledger, {1})
    await new._handle(tp(1), [Msg(TOPIC, 1, 0, batch("b", 10)), Msg(TOPIC, 1, 1, batch("c", 100))])
    await new.flush()
    old_kafka.owned.discard(tp(1))  # type: ignore[attr-defined]  # the rebalance reached it too
    await old.flush()
    assert await counted(ledger) == 111
    assert await ledger.load_offsets(old._kafka.group_id, TOPIC) == {0: 1, 1: 2}
    assert 1 not in old._buffers


async def test_a_partition_still_assigned_after_a_lost_race_is_re_read(ledger: Ledger) -> None:
    """N14: a zombie (a consumer already expelled from the group) flushes partition 1 first. The
    owner, still assigned partition 1, loses the offset race: it must re-read from the stored
    offset, not forget the partition until a rebalance that may never come."""
    log = [Msg(TOPIC, 1, 0, batch("a", 1), b"k-a", timestamp=1),
           Msg(TOPIC, 1, 1, batch("b", 10), b"k-b", timestamp=2),
           Msg(TOPIC, 1, 2, batch("c", 100), b"k-c", timestamp=3)]
    owner, kafka = await consumer(ledger, {0, 1})
    zombie, _ = await consumer(ledger, {1})
    await owner._handle(tp(1), log[:1])
    await zombie._handle(tp(1), log[:1])
    await zombie.flush()
    await owner.flush()  # loses the race on partition 1
    assert {t.partition for t in kafka.assignment()} == {0, 1}
    await owner._handle(tp(1), log[kafka.positions[1]:])  # the next fetch, from wherever it is now
    await owner.flush()
    assert await counted(ledger) == 111
    assert await ledger.load_offsets(owner._kafka.group_id, TOPIC) == {1: 3}


@pytest.mark.parametrize("policy", ["earliest", "halt"])
async def test_stale_offsets_follow_the_policy_loudly(ledger: Ledger, policy: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    first, _ = await consumer(ledger, {0})
    await first._handle(tp(0), [Msg(TOPIC, 0, i, batch(f"old-{i}", 1)) for i in range(5)])
    await first.flush()
    # The topic is recreated: its log starts again at 0 and holds 2 new messages.
    registry = CollectorRegistry()
    c = AggregatingConsumer("127.0.0.1:9", Settings(consumer={"on_stale_offsets": policy}), ledger,
                            PipelineMetrics(registry))
    kafka = StandInKafka({0})
    c._consumer = kafka  # type: ignore[assignment]
    await c.seek_to_stored(kafka.assignment())
    kafka.high[0] = 2
    await c.check_positions()
    assert "past the end of the partition" in caplog.text
    assert registry.get_sample_value("meterd_consumer_stale_offsets_total", {"policy": policy}) == 1
    if policy == "halt":
        assert kafka.paused == {0}
        assert await ledger.load_offsets(c._kafka.group_id, TOPIC) == {0: 5}
        return
    assert kafka.positions[0] == 0
    await c._handle(tp(0), [Msg(TOPIC, 0, i, batch(f"new-{i}", 10)) for i in range(2)])
    await c.flush()
    assert await counted(ledger) == 5 + 20


@pytest.mark.parametrize("policy", ["earliest", "halt"])
async def test_a_longer_new_log_is_detected_by_the_last_counted_message(
        ledger: Ledger, policy: str, caplog: pytest.LogCaptureFixture) -> None:
    """N4 at unit level: the new log already holds 8 messages, past the stored offset 5, so no
    offset comparison can tell; the message before the stored offset is another one."""
    first, _ = await consumer(ledger, {0})
    await first._handle(tp(0), [Msg(TOPIC, 0, i, batch(f"old-{i}", 1), f"old-{i}".encode(), timestamp=i)
                                for i in range(5)])
    await first.flush()
    new_log = [Msg(TOPIC, 0, i, batch(f"new-{i}", 10), f"new-{i}".encode(), timestamp=100 + i) for i in range(8)]
    registry = CollectorRegistry()
    c = AggregatingConsumer("127.0.0.1:9", Settings(consumer={"on_stale_offsets": policy}), ledger,
                            PipelineMetrics(registry))
    kafka = StandInKafka({0})
    c._consumer = kafka  # type: ignore[assignment]
    await c.seek_to_stored(kafka.assignment())
    kafka.high[0] = 8
    await c.check_positions()  # the offset fits the new log: nothing to see here
    await c._handle(tp(0), new_log[kafka.positions[0]:])
    assert "does not hold the message last counted" in caplog.text
    assert registry.get_sample_value("meterd_consumer_stale_offsets_total", {"policy": policy}) == 1
    if policy == "halt":
        assert kafka.paused == {0}
        await c.flush()
        assert await counted(ledger) == 5
        return
    await c._handle(tp(0), new_log[kafka.positions[0]:])
    await c.flush()
    assert await counted(ledger) == 5 + 80


async def test_retention_of_just_the_last_counted_message_is_not_a_reset(ledger: Ledger) -> None:
    """Real Kafka answers the early seek (to the message before the stored offset) with
    OFFSET_OUT_OF_RANGE when retention deleted exactly up to the stored offset: no reset, no alert."""
    first, _ = await consumer(ledger, {0})
    await first._handle(tp(0), [Msg(TOPIC, 0, i, batch(f"old-{i}", 1), f"old-{i}".encode()) for i in range(5)])
    await first.flush()
    registry = CollectorRegistry()
    c = AggregatingConsumer("127.0.0.1:9", Settings(), ledger, PipelineMetrics(registry))
    kafka = StandInKafka({0})

    async def log_starts_at_5(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 5)

    kafka.beginning_offsets = log_starts_at_5  # type: ignore[method-assign]
    c._consumer = kafka  # type: ignore[assignment]
    await c.seek_to_stored(kafka.assignment())
    assert kafka.positions[0] == 4
    await c.handle_stale({0: 4})  # what the OffsetOutOfRangeError handler passes on
    assert kafka.positions[0] == 5
    assert registry.get_sample_value("meterd_consumer_stale_offsets_total", {"policy": "earliest"}) == 0
    await c._handle(tp(0), [Msg(TOPIC, 0, 5, batch("next", 10), b"next")])
    await c.flush()
    assert await counted(ledger) == 15


class RecordingDlq:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append((topic, value, dict(headers)))


async def test_a_conflicting_batch_goes_to_the_dead_letter_topic(ledger: Ledger) -> None:
    """A batch_id already counted with other records (two writers that did not share the database)
    is dead-lettered with its reason, never counted and never dropped in silence."""
    c, _ = await consumer(ledger, {0})
    dlq = RecordingDlq()
    c._dlq = dlq  # type: ignore[assignment]
    await c._handle(tp(0), [Msg(TOPIC, 0, 0, batch("x", 1))])
    await c.flush()
    await c._handle(tp(0), [Msg(TOPIC, 0, 1, batch("x", 999)), Msg(TOPIC, 0, 2, batch("x", 1))])
    await c.flush()
    assert await counted(ledger) == 1
    assert [(t, h["meterd-error"]) for t, _, h in dlq.sent] == [
        ("meterd.traffic.v1.dlq", b"batch_id conflict: the id was already used for different records")]
