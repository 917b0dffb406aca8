"""Kafka mode (issue 23 part A): a batch whose apply fails every time, produced straight to the
topic as a writer-side bug would, goes to the dead-letter topic with its reason after
consumer.poison_attempts failures, and another account's write behind it is counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.service.test_consumer_poison_live import FAR_FUTURE_MS, NOW_MS, batch, totals
from tests.support.broker import running_tansu
from tests.support.meterd import meterd_env, running_meterd, wait_until


async def test_poison_message_goes_to_dlq_and_the_partition_moves_on(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_KAFKA__PARTITIONS="1")
    with running_tansu(tmp_path) as tansu, running_meterd(
            tmp_path, "up", env={**env, "METERD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap}) as m:
        with m.client() as c:
            poisoner = c.post("/v1/accounts", json={"name": "p", "quota_bytes": 10**12}).json()["id"]
            victim = c.post("/v1/accounts", json={"name": "v"}).json()["id"]
        poison = batch("poison", poisoner, ["n"], FAR_FUTURE_MS)  # its quota month cannot be computed
        producer = AIOKafkaProducer(bootstrap_servers=m.kafka, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("meterd.traffic.v1", poison.SerializeToString(), key=b"admin/poison")
        finally:
            await producer.stop()
        with m.client() as c:
            r = c.post("/v1/traffic", json={"batch_id": "victim-1", "records": [
                {"account_id": victim, "node_id": "n", "timestamp_ms": NOW_MS, "bytes_in": 5, "bytes_out": 0,
                 "requests": 1}]})
            assert r.status_code == 202, r.text
        started = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: totals(m, victim)["bytes_in"] == 5, 10, 0.2,
                                "the write behind the poison message to be counted")
        print(f"counted {time.monotonic() - started:.1f} s after the write")

        dlq = AIOKafkaConsumer("meterd.traffic.v1.dlq", bootstrap_servers=m.kafka, auto_offset_reset="earliest",
                               group_id=None, enable_auto_commit=False)
        await dlq.start()
        try:
            got = []
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                for msgs in (await dlq.getmany(timeout_ms=500)).values():
                    got.extend(msgs)
        finally:
            await dlq.stop()
        assert [msg.value for msg in got] == [poison.SerializeToString()]
        error = dict(got[0].headers)["meterd-error"]
        assert error.startswith(b"apply failed 3 times alone: ValueError"), error
        metrics = httpx.get(f"{m.http}/metrics").text
        assert "meterd_consumer_poison_batches_total 1.0" in metrics
