"""A closed loop of writers cannot overload a server, so `meterd up` must not shed it (issue 24):
32 writers, each sending its next 1000-record batch when the last is acknowledged, through the
reference client (service/client.py), see at most 1 % refusals. Sized to finish in seconds on a
loaded 2-core CI machine; throughput is measured in benchmarks/ingest.py, never asserted here."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.client import MeterdWriter
from service.pb.meterd.v1 import traffic_pb2
from tests.support.meterd import ADMIN_TOKEN, running_meterd

WRITERS = 32
BATCHES = 320  # 10 per writer
PER_BATCH = 1000


def _records(accounts: list[str]) -> list[traffic_pb2.TrafficRecord]:
    now_ms = int(time.time() * 1000)
    return [traffic_pb2.TrafficRecord(account_id=accounts[i % len(accounts)], node_id="edge-1",
                                      timestamp_ms=now_ms - (i % 600) * 1000, bytes_in=100, bytes_out=900,
                                      requests=1) for i in range(PER_BATCH)]


async def _closed_loop(target: str, records: list[traffic_pb2.TrafficRecord]) -> list[MeterdWriter]:
    writers = [MeterdWriter(target, ADMIN_TOKEN, node_id=f"edge-{i}", timeout=120) for i in range(WRITERS)]
    left = [BATCHES]

    async def run(writer: MeterdWriter) -> None:
        while left[0] > 0:
            left[0] -= 1
            response = await writer.write(records)
            assert response.accepted == PER_BATCH and not response.duplicate, response

    try:
        await asyncio.gather(*(run(w) for w in writers))
    finally:
        for w in writers:
            await w.close()
    return writers


def test_a_closed_loop_of_32_writers_is_not_shed(tmp_path: Path) -> None:
    with running_meterd(tmp_path, "up") as m:
        assert m.grpc and m.http, m.output()
        with m.client() as c:
            accounts = [c.post("/v1/accounts", json={"name": f"a{i}"}).json()["id"] for i in range(4)]
        writers = asyncio.run(_closed_loop(m.grpc, _records(accounts)))
        with m.client() as c:
            page = c.get("/metrics").text
    refusals = sum(w.stats.refusals for w in writers)
    batches = sum(w.stats.batches for w in writers)
    assert batches == BATCHES
    sheds = {tuple(s.labels.values()): s.value for f in text_string_to_metric_families(page)
             if f.name == "governance_adaptive_sheds" for s in f.samples}
    assert refusals <= 0.01 * BATCHES, f"{refusals} refusals for {BATCHES} batches; limiter sheds: {sheds}"
