"""Issue 17: the same batch_id with different records is ALREADY_EXISTS (HTTP 409) in every case:
while the first write is in flight, across two writer replicas, after a writer restart. Retries
of the same records stay duplicate=true and are counted once.

Also the overflow rule end to end: usage sums that would pass 2^63-1 stop there, and the consumer
keeps counting every account (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry

from service.auth import ADMIN
from service.config import Settings
from service.ingest.errors import BatchConflict
from service.ingest.writer import IngestService
from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from service.pipeline.logs import DatabaseLog, Outgoing
from service.storage import Repository, create_database
from service.storage.ledger import Ledger
from service.storage.usage_write import MAX_SUM
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env, wait_until

MD = [("authorization", f"Bearer {ADMIN_TOKEN}")]


def rec(account: str, bytes_in: int = 1, ts_ms: int | None = None) -> traffic_pb2.TrafficRecord:
    return traffic_pb2.TrafficRecord(account_id=account, node_id="n1", timestamp_ms=ts_ms or int(time.time() * 1000),
                                     bytes_in=bytes_in, bytes_out=2, requests=1)


class SlowLog(DatabaseLog):
    """The real database log, held back until released: a write stays in flight."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def append(self, batch: Outgoing) -> bool:
        await self.release.wait()
        return await super().append(batch)


async def test_conflict_while_the_first_write_is_in_flight(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.migrate()
    repo = Repository(db)
    account = (await repo.create_account("inflight", None))["id"]
    settings = Settings(data_dir=tmp_path)
    metrics = PipelineMetrics(CollectorRegistry())
    log = SlowLog(Ledger(db), settings.ingest, metrics)
    ingest = IngestService(settings, repo, log, metrics)
    ts = int(time.time() * 1000)
    try:
        first = asyncio.create_task(ingest.write(ADMIN, "b-1", [rec(account, 5, ts)], "grpc"))
        await asyncio.sleep(0.05)
        other = asyncio.create_task(ingest.write(ADMIN, "b-1", [rec(account, 6, ts)], "grpc"))
        same = asyncio.create_task(ingest.write(ADMIN, "b-1", [rec(account, 5, ts)], "grpc"))
        await asyncio.sleep(0.05)
        assert not first.done() and not other.done()  # both wait on the first write
        log.release.set()
        assert not (await first).duplicate
        with pytest.raises(BatchConflict):
            await other
        assert (await same).duplicate
        assert len(await Ledger(db).read_log(0, 10)) == 1
    finally:
        await log.aclose()
        await db.close()


def _writer(tmp: Path, env: dict[str, str]) -> MeterdProc:
    return MeterdProc(["writer"], {**env, "METERD_GRPC__PORT": str(free_port()),
                                   "METERD_ADMIN__PORT": str(free_port())}, tmp).start()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_conflicts_across_writer_replicas_and_restarts(tmp_path: Path, dialect: str,
                                                             request: pytest.FixtureRequest) -> None:
    extra = {}
    if dialect == "postgresql":
        extra["METERD_DATABASE__URL"] = request.getfixturevalue("fresh_postgres_db").url
    env = meterd_env(tmp_path, **extra)
    up = MeterdProc(["up"], env, tmp_path).start()
    writers = [_writer(tmp_path, env), _writer(tmp_path, env)]
    try:
        with up.client() as c:
            account = c.post("/v1/accounts", json={"name": "replicas"}).json()["id"]
        ts = int(time.time() * 1000)
        stubs = [traffic_pb2_grpc.TrafficWriterStub(grpc.aio.insecure_channel(w.grpc or "")) for w in writers]

        async def write(stub: traffic_pb2_grpc.TrafficWriterStub, batch_id: str, bytes_in: int):  # type: ignore[no-untyped-def]
            req = traffic_pb2.WriteRequest(batch_id=batch_id, records=[rec(account, bytes_in, ts)])
            try:
                return await stub.Write(req, metadata=MD, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        # Two replicas at once, different records for one batch_id: exactly one wins.
        for i in range(5):
            answers = await asyncio.gather(write(stubs[0], f"race-{i}", 10), write(stubs[1], f"race-{i}", 20))
            codes = [a for a in answers if isinstance(a, grpc.StatusCode)]
            assert codes == [grpc.StatusCode.ALREADY_EXISTS], answers
        # The same records through the other replica: a duplicate, not a second count.
        first = await write(stubs[0], "same", 7)
        again = await write(stubs[1], "same", 7)
        assert not first.duplicate and again.duplicate
        # After a writer restart (its in-memory cache is gone), over gRPC and over HTTP.
        writers[0].stop(30)
        writers[0] = _writer(tmp_path, env)
        restarted = traffic_pb2_grpc.TrafficWriterStub(grpc.aio.insecure_channel(writers[0].grpc or ""))
        assert await write(restarted, "same", 8) == grpc.StatusCode.ALREADY_EXISTS
        assert (await write(restarted, "same", 7)).duplicate
        with up.client() as c:
            body = {"batch_id": "same", "records": [{"account_id": account, "node_id": "n1", "timestamp_ms": ts,
                                                     "bytes_in": 9, "bytes_out": 2, "requests": 1}]}
            reply = c.post("/v1/traffic", json=body)
            assert reply.status_code == 409, reply.text
            assert reply.headers["content-type"].startswith("application/problem+json")

            def counted() -> bool:
                totals = c.get(f"/v1/accounts/{account}/usage").json()["totals"]
                return totals["requests"] == 6  # five race winners and "same", each once

            wait_until(counted, 30, 0.3, "each accepted batch counted once")
            totals = c.get(f"/v1/accounts/{account}/usage").json()["totals"]
            assert totals["bytes_out"] == 12
            assert totals["bytes_in"] in {7 + 10 * k + 20 * (5 - k) for k in range(6)}
    finally:
        for proc in (*writers, up):
            proc.kill()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_overflowing_sums_saturate_and_metering_goes_on(tmp_path: Path, dialect: str,
                                                        request: pytest.FixtureRequest) -> None:
    extra = {"METERD_INGEST__MAX_BYTES_PER_RECORD": str(1 << 62)}  # so two records reach 2^63
    if dialect == "postgresql":
        extra["METERD_DATABASE__URL"] = request.getfixturevalue("fresh_postgres_db").url
    env = meterd_env(tmp_path, **extra)
    with _started(tmp_path, env) as up:
        with up.client() as c:
            hostile = c.post("/v1/accounts", json={"name": "hostile"}).json()["id"]
            normal = c.post("/v1/accounts", json={"name": "normal"}).json()["id"]
            minute = int(time.time()) // 60 * 60 * 1000
            huge = {"account_id": hostile, "node_id": "n", "timestamp_ms": minute, "bytes_in": 1 << 62,
                    "bytes_out": 1 << 62, "requests": 1}
            small = {"account_id": normal, "node_id": "n", "timestamp_ms": minute, "bytes_in": 3,
                     "bytes_out": 4, "requests": 1}
            for i in range(4):  # one batch already past 2^63 on its own, then more on top
                r = c.post("/v1/traffic", json={"batch_id": f"huge-{i}", "records": [huge, huge, huge]})
                assert r.status_code == 202, r.text
                r = c.post("/v1/traffic", json={"batch_id": f"small-{i}", "records": [small]})
                assert r.status_code == 202, r.text

            def normal_counted() -> bool:
                return c.get(f"/v1/accounts/{normal}/usage").json()["totals"]["requests"] == 4

            wait_until(normal_counted, 30, 0.3, "the other account's usage to be counted")
            assert c.get(f"/v1/accounts/{normal}/usage").json()["totals"] == {"bytes_in": 12, "bytes_out": 16,
                                                                              "requests": 4}
            points = c.get(f"/v1/accounts/{hostile}/usage", params={"step": "1m"}).json()["points"]
            assert [(p["bytes_in"], p["bytes_out"], p["requests"]) for p in points] == [(MAX_SUM, MAX_SUM, 12)]
            metrics = httpx.get(f"{up.http}/metrics").text
            assert any(line.startswith("meterd_usage_saturated_total ") and float(line.split()[1]) >= 1
                       for line in metrics.splitlines())


class _started:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.proc = MeterdProc(["up"], env, tmp)

    def __enter__(self) -> MeterdProc:
        return self.proc.start()

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
