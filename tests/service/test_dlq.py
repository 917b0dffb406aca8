"""Kafka mode: undecodable messages go to the dead-letter topic with an error header; the consumer
keeps going and later valid batches are still counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.broker import running_tansu
from tests.support.meterd import meterd_env, running_meterd, wait_until


async def test_garbage_goes_to_dlq_and_consumer_continues(tmp_path: Path) -> None:
    with running_tansu(tmp_path) as tansu, running_meterd(
            tmp_path, "up", env=meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=tansu.bootstrap)) as m:
        with m.client() as c:
            acc = c.post("/v1/accounts", json={"name": "dlq"}).json()["id"]
        producer = AIOKafkaProducer(bootstrap_servers=m.kafka, acks="all")
        await producer.start()
        try:
            for i, garbage in enumerate([b"\xff\xff\xff not protobuf", b"", b"\x0a\x05hello"]):
                await producer.send_and_wait("meterd.traffic.v1", garbage, key=f"junk-{i}".encode(),
                                             headers=[("origin", b"test")])
        finally:
            await producer.stop()

        now = int(time.time() * 1000)
        with m.client() as c:
            r = c.post("/v1/traffic", json={"batch_id": "after-junk", "records": [
                {"account_id": acc, "node_id": "n", "timestamp_ms": now, "bytes_in": 7, "bytes_out": 9,
                 "requests": 1}]})
            assert r.status_code == 202, r.text

            def counted() -> bool:
                t = c.get(f"/v1/accounts/{acc}/usage").json()["totals"]
                return t == {"bytes_in": 7, "bytes_out": 9, "requests": 1}

            await asyncio.to_thread(wait_until, counted, 30, 0.2, "valid batch after junk to be counted")

        dlq = AIOKafkaConsumer("meterd.traffic.v1.dlq", bootstrap_servers=m.kafka, auto_offset_reset="earliest",
                               group_id=None, enable_auto_commit=False)
        await dlq.start()
        try:
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 3 and time.monotonic() < deadline:
                batch = await dlq.getmany(timeout_ms=500)
                for msgs in batch.values():
                    got.extend(msgs)
        finally:
            await dlq.stop()
        assert len(got) == 3
        for msg in got:
            headers = dict(msg.headers)
            assert headers["origin"] == b"test"  # original headers are kept
            assert headers["meterd-error"].startswith(b"undecodable TrafficBatch")
            assert headers["meterd-source"].startswith(b"meterd.traffic.v1/")
        assert sorted(msg.value for msg in got) == sorted([b"\xff\xff\xff not protobuf", b"", b"\x0a\x05hello"])

        metrics = httpx.get(f"{m.http}/metrics").text
        assert "meterd_consumer_dlq_total 3.0" in metrics
