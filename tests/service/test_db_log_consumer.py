"""The database-log consumer on a real database: rows it cannot count go to dead_letters with the
reason (and leave the log), the rest is counted once, and a row another consumer took first is not
counted twice."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from service.config import ConsumerSettings
from service.metrics import PipelineMetrics
from service.pipeline.db_consumer import DatabaseLogConsumer
from service.storage import Repository, schema
from service.storage.ledger import Claim, Ledger
from tests.support.pipeline import writer_batch

MINUTE = int(time.time()) // 60 * 60


def batch(key: str, bytes_in: int) -> tuple[bytes, bytes]:
    b = writer_batch(key, bytes_in, MINUTE)
    return b.SerializeToString(), b.digest


@pytest.fixture
def ledger(sqlite_ledger: Ledger) -> Ledger:
    return sqlite_ledger


async def test_undecodable_and_conflicting_rows_are_dead_lettered(ledger: Ledger) -> None:
    good, good_digest = batch("good", 5)
    await ledger.claim([Claim("admin/good", good_digest, 1, good)], append_to_log=True)
    # Rows no meterd writer makes through a claim: garbage, and a batch whose id is claimed for
    # other records.
    other, _ = batch("taken", 7)
    await ledger.claim([Claim("admin/taken", b"z" * 16, 1, b"")], append_to_log=False)
    async with ledger.db.engine.begin() as conn:
        await conn.execute(schema.ingest_log.insert(), [
            {"dedupe_key": "admin/garbage", "records": 1, "payload": b"\xff\xffnot a batch", "appended_at_ms": 0},
            {"dedupe_key": "admin/taken", "records": 1, "payload": other, "appended_at_ms": 0}])
    registry = CollectorRegistry()
    consumer = DatabaseLogConsumer(ledger, ConsumerSettings(), PipelineMetrics(registry))
    assert await consumer.cycle() == 3
    assert await consumer.cycle() == 0  # the log is empty: every row was consumed
    rows = await Repository(ledger.db).usage("acc", MINUTE, MINUTE + 60, 60)
    assert [(r.bytes_in, r.requests) for r in rows] == [(5, 1)]
    async with ledger.db.engine.connect() as conn:
        dead = sorted((r[0], r[1].split(":")[0]) for r in await conn.execute(
            select(schema.dead_letters.c.dedupe_key, schema.dead_letters.c.reason)))
    assert dead == [("admin/garbage", "undecodable TrafficBatch"), ("admin/taken", "batch_id conflict")]
    assert registry.get_sample_value("meterd_consumer_dlq_total") == 2


async def test_two_consumers_count_each_row_once(ledger: Ledger) -> None:
    payloads = [batch(f"b{i}", 1) for i in range(50)]
    await ledger.claim([Claim(f"admin/b{i}", d, 1, p) for i, (p, d) in enumerate(payloads)], append_to_log=True)
    first = DatabaseLogConsumer(ledger, ConsumerSettings(), PipelineMetrics(CollectorRegistry()))
    second = DatabaseLogConsumer(ledger, ConsumerSettings(), PipelineMetrics(CollectorRegistry()))
    # Both read the same rows before either commits: the second transaction must roll back.
    rows = await ledger.read_log(0, 100)
    flush_a, flush_b = await first._prepare(rows), await second._prepare(rows)
    await ledger.apply(flush_a)
    with pytest.raises(Exception, match="taken by another consumer"):
        await ledger.apply(flush_b)
    assert await second.cycle() == 0
    usage = await Repository(ledger.db).usage("acc", MINUTE, MINUTE + 60, 60)
    assert usage[0].bytes_in == 50
