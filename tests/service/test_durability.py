"""Issue 17 acceptance 1: in `meterd up` (the database log), every acknowledged record is counted
exactly once across a drain and restart, and across a SIGKILL of the whole process group.

Concurrent gRPC clients write; the stop comes right after the last acknowledgement, so whatever
was acknowledged but not yet counted must be in the durable log (or already counted), never lost
and never counted twice. Then a separate `meterd writer` and `meterd consumer` share the same
database log without any broker.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.grpc_write import write_retrying
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env, wait_until
from tests.support.usage import Totals, add_records, iso, stored_usage, totals_table

CLIENTS = 5
RECORDS_PER_BATCH = 1000
ACCOUNTS = 4
MD = [("authorization", f"Bearer {ADMIN_TOKEN}")]


def _create_accounts(m: MeterdProc) -> list[str]:
    with m.client() as c:
        return [c.post("/v1/accounts", json={"name": f"durable-{i}"}).json()["id"] for i in range(ACCOUNTS)]


async def _send(grpc_addr: str, accounts: list[str], tag: str, batches: int, expected: Totals) -> None:
    """CLIENTS concurrent clients write `batches` batches in all; each acknowledged batch is added
    to `expected` (UNAVAILABLE is retried with the same batch_id, as a real client does)."""
    rng = random.Random(tag)
    now_ms = int(time.time() * 1000)

    async def client(n: int) -> None:
        async with grpc.aio.insecure_channel(grpc_addr) as channel:
            stub = traffic_pb2_grpc.TrafficWriterStub(channel)
            for i in range(n, batches, CLIENTS):
                records = [traffic_pb2.TrafficRecord(
                    account_id=rng.choice(accounts), node_id=f"edge-{i % 3}",
                    timestamp_ms=now_ms - rng.randrange(0, 600_000), bytes_in=rng.randrange(1, 10_000),
                    bytes_out=rng.randrange(1, 100_000), requests=rng.randrange(1, 20))
                    for _ in range(RECORDS_PER_BATCH)]
                req = traffic_pb2.WriteRequest(batch_id=f"{tag}-{i}", records=records)
                resp = await write_retrying(stub, req, MD)
                assert resp.accepted == RECORDS_PER_BATCH and not resp.duplicate
                add_records(expected, records)

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))


def _assert_counted(m: MeterdProc, expected: Totals, timeout: float) -> None:
    start, end = iso(time.time() - 3 * 3600), iso(time.time() + 3600)
    last: dict[str, Totals] = {}

    def equal() -> bool:
        last["stored"] = stored_usage(m.http or "", expected, start, end)
        return last["stored"] == expected

    try:
        wait_until(equal, timeout, 0.5, "stored usage to equal the acknowledged totals")
    except AssertionError:
        raise AssertionError("usage differs from what was acknowledged:\n"
                             + totals_table(expected, last.get("stored", {}))) from None


def _up(tmp: Path, data: Path) -> MeterdProc:
    env = meterd_env(tmp, METERD_DATA_DIR=str(data), METERD_GRPC__PORT=str(free_port()),
                     METERD_HTTP__PORT=str(free_port()))
    env.pop("METERD_WORKERS")  # the default: writer processes under a supervisor on this machine's cores
    return MeterdProc(["up"], env, tmp).start()


async def test_acknowledged_records_survive_drain_and_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected: Totals = {}
    m = _up(tmp_path, data)
    try:
        accounts = _create_accounts(m)
        await _send(m.grpc or "", accounts, "first", 50, expected)  # 50,000 records
        assert m.stop(60) == 0, m.output()[-3000:]  # SIGTERM right after the last acknowledgement

        m = _up(tmp_path, data)
        await _send(m.grpc or "", accounts, "second", 10, expected)  # 10,000 more
        _assert_counted(m, expected, 30)

        await _send(m.grpc or "", accounts, "third", 50, expected)  # 50,000 more, then a crash
        m.kill_group()

        m = _up(tmp_path, data)
        _assert_counted(m, expected, 30)
        assert sum(row[2] for row in expected.values()) > 0
    finally:
        m.kill()


async def test_separate_writer_and_consumer_share_the_database_log(tmp_path: Path) -> None:
    """No broker: `meterd writer` appends to the database log, `meterd consumer` counts it; a
    consumer killed mid-stream loses nothing; the api serves the result."""
    data = tmp_path / "data"
    env = meterd_env(tmp_path, METERD_DATA_DIR=str(data))
    api = MeterdProc(["api"], env, tmp_path).start()
    writer = MeterdProc(["writer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path).start()
    consumer = MeterdProc(["consumer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path).start()
    try:
        accounts = _create_accounts(api)
        expected: Totals = {}
        await _send(writer.grpc or "", accounts, "roles-a", 10, expected)
        consumer.kill_group()
        await _send(writer.grpc or "", accounts, "roles-b", 10, expected)
        consumer = MeterdProc(["consumer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path).start()
        _assert_counted(api, expected, 30)
        for proc in (writer, consumer, api):
            assert proc.stop(60) == 0, proc.output()[-3000:]
    finally:
        for proc in (api, writer, consumer):
            proc.kill()
