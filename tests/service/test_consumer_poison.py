"""The database-log consumer against rows a writer bug could leave in the log (issue 23 part A),
on a real SQLite database, cycle by cycle:
- a row whose apply fails the same way every time is moved to dead_letters after
  consumer.poison_attempts failures, with its reason, and the rows around it are counted;
- the lag gauges follow the backlog while cycles fail, and failures are counted;
- a read is bounded by records and bytes, and a flush by distinct (account, node, minute) keys;
- a batch counted already and appended again is consumed (the log moves on) and counted once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from service.config import ConsumerSettings
from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import pipeline_pb2
from service.pipeline.db_consumer import DatabaseLogConsumer
from service.storage import Repository, schema
from service.storage.ledger import Flush, Ledger, LogRow
from tests.support.pipeline import writer_batch

MINUTE = int(time.time()) // 60 * 60
# Year 33658: the quota month of this minute cannot be computed, so applying it fails every time
# for an account with a quota (a record no validating writer accepts, as a writer-side bug leaves).
FAR_FUTURE_MINUTE = 10**12


@pytest.fixture
def ledger(sqlite_ledger: Ledger) -> Ledger:
    return sqlite_ledger


async def append_directly(ledger: Ledger, batches: Sequence[pipeline_pb2.TrafficBatch],
                          appended_at_ms: int | None = None) -> None:
    """Log rows as a buggy writer would leave them: no claim, no validation."""
    at = int(time.time() * 1000) if appended_at_ms is None else appended_at_ms
    async with ledger.db.engine.begin() as conn:
        await conn.execute(schema.ingest_log.insert(), [
            {"dedupe_key": b.dedupe_key, "records": len(b.records), "payload": b.SerializeToString(),
             "traceparent": None, "appended_at_ms": at} for b in batches])


async def counted(ledger: Ledger, account: str) -> int:
    rows = await Repository(ledger.db).usage_rows(account, 60, MINUTE, MINUTE + 60)
    return sum(r[2] for r in rows)


async def dead_letters(ledger: Ledger) -> list[tuple[str, str]]:
    d = schema.dead_letters
    async with ledger.db.engine.connect() as conn:
        return sorted((r[0], r[1]) for r in await conn.execute(select(d.c.dedupe_key, d.c.reason)))


async def poison_batch(ledger: Ledger, batch_id: str = "poison") -> pipeline_pb2.TrafficBatch:
    quota_account = (await Repository(ledger.db).create_account("quota", 10**12))["id"]
    return writer_batch(batch_id, 7, FAR_FUTURE_MINUTE, quota_account)


async def test_poison_row_is_dead_lettered_and_the_rows_around_it_counted(ledger: Ledger) -> None:
    poison = await poison_batch(ledger)
    await append_directly(ledger, [writer_batch("before", 5, MINUTE, "victim"), poison,
                                   writer_batch("after", 11, MINUTE, "victim")])
    registry = CollectorRegistry()
    consumer = DatabaseLogConsumer(ledger, ConsumerSettings(poison_attempts=3), PipelineMetrics(registry))
    failures = 0
    for _ in range(10):
        try:
            if await consumer.cycle() == 0:
                break
        except Exception:
            failures += 1
    else:
        pytest.fail("the log never emptied: the poison row is retried for ever")
    assert failures <= 3
    assert await counted(ledger, "victim") == 16
    (key, reason), = await dead_letters(ledger)
    assert key == "admin/poison" and "ValueError" in reason and "year" in reason, reason
    assert registry.get_sample_value("meterd_consumer_poison_batches_total") == 1
    assert registry.get_sample_value("meterd_consumer_dlq_total") == 1
    assert (await ledger.log_backlog())[0] == 0


async def test_lag_gauges_follow_the_backlog_while_cycles_fail(ledger: Ledger) -> None:
    poison = await poison_batch(ledger)
    await append_directly(ledger, [poison, writer_batch("behind", 5, MINUTE, "victim")],
                          appended_at_ms=int(time.time() * 1000) - 30_000)
    registry = CollectorRegistry()
    # Never isolated here: every cycle fails, as with a bug no quarantine can route around.
    consumer = DatabaseLogConsumer(ledger, ConsumerSettings(poison_attempts=1_000, drain_seconds=0),
                                   PipelineMetrics(registry))
    await consumer.start()
    try:
        await asyncio.sleep(3.0)
        assert registry.get_sample_value("meterd_consumer_lag_messages", {"partition": "log"}) == 2
        lag_seconds = registry.get_sample_value("meterd_consumer_lag_seconds")
        assert lag_seconds is not None and lag_seconds >= 29
        errors = registry.get_sample_value("meterd_consumer_errors_total", {"kind": "data"})
        assert errors is not None and errors >= 2
        assert not consumer.healthy
    finally:
        await consumer.stop()


class RecordingLedger(Ledger):
    """The real ledger, noting what each read returned and each flush wrote."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger.db)
        self.reads: list[list[LogRow]] = []
        self.flush_keys: list[int] = []

    async def read_log(self, *args, **kwargs) -> list[LogRow]:  # type: ignore[no-untyped-def]
        rows = await super().read_log(*args, **kwargs)
        self.reads.append(rows)
        return rows

    async def apply(self, flush: Flush, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.flush_keys.append(len(flush.usage))
        await super().apply(flush, **kwargs)


def distinct_nodes_batch(batch_id: str, nodes: int) -> pipeline_pb2.TrafficBatch:
    b = writer_batch(batch_id, 1, MINUTE, "wide")
    for i in range(1, nodes):
        b.records.add(account_id="wide", node_id=f"node-{batch_id}-{i:06d}-" + "x" * 90,
                      timestamp_ms=MINUTE * 1000, bytes_in=1, requests=1)
    return b  # the digest covers only the first record: the consumer does not recompute it


@pytest.mark.parametrize("overrides", [{}, {"read_max_records": 2_500, "read_max_bytes": 200_000,
                                            "max_flush_keys": 1_500}], ids=["defaults", "small"])
async def test_reads_and_flushes_are_bounded_whatever_the_rows_hold(ledger: Ledger, overrides: dict) -> None:
    rows, nodes = 30, 1_000  # 30,000 distinct (account, node, minute) keys, ~3.6 MB of payload
    await append_directly(ledger, [distinct_nodes_batch(f"wide-{i}", nodes) for i in range(rows)])
    cfg = ConsumerSettings(**overrides)
    recording = RecordingLedger(ledger)
    consumer = DatabaseLogConsumer(recording, cfg, PipelineMetrics(CollectorRegistry()))
    while await consumer.cycle():
        pass
    assert await counted(ledger, "wide") == rows * nodes
    reads = [r for r in recording.reads if r]
    assert len(reads) > 1
    for read in reads:
        assert len(read) == 1 or sum(nodes for _ in read) <= cfg.read_max_records
        assert len(read) == 1 or sum(len(r.payload) for r in read) <= cfg.read_max_bytes
    # One row holds at most max_batch_records keys: the flush stops before the row that could pass the bound.
    assert max(recording.flush_keys) <= cfg.max_flush_keys


async def test_a_batch_counted_already_and_appended_again_is_consumed_and_counted_once(ledger: Ledger) -> None:
    batch = writer_batch("twice", 5, MINUTE, "dup")
    await append_directly(ledger, [batch])
    consumer = DatabaseLogConsumer(ledger, ConsumerSettings(), PipelineMetrics(CollectorRegistry()))
    assert await consumer.cycle() == 1
    await append_directly(ledger, [batch])  # a writer's retry appended after the count (or a replay)
    assert await consumer.cycle() == 1
    assert await consumer.cycle() == 0, "the duplicate row was not consumed: the log does not move on"
    assert (await ledger.log_backlog())[0] == 0
    assert await counted(ledger, "dup") == 5
