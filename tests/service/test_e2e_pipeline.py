"""Issue 2 acceptance 2: the whole pipeline against a real broker and real processes.

100,000 records from several concurrent gRPC clients, some batches retried under the same
batch_id, the consumer SIGKILLed and restarted twice mid-stream: stored usage per account must
equal exactly what was acknowledged, and every retry must be answered duplicate=true.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.broker import running_tansu
from tests.support.grpc_write import write_retrying
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env, wait_until
from tests.support.usage import add_records, iso, stored_usage

CLIENTS = 5
BATCHES_PER_CLIENT = 40
RECORDS_PER_BATCH = 500  # 5 x 40 x 500 = 100,000 records
ACCOUNTS = 8


@pytest.fixture
def broker(tmp_path: Path):
    with running_tansu(tmp_path) as tansu:  # memory storage: this test never kills the broker
        yield tansu.bootstrap


def _role(tmp: Path, role: str, env: dict[str, str]) -> MeterdProc:
    return MeterdProc([role], env, tmp)


async def _client(stub, n: int, accounts: list[str], sent: dict, retries: list, t0_ms: int,
                  progress: list[int]) -> None:
    rng = random.Random(n)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    for b in range(BATCHES_PER_CLIENT):
        req = traffic_pb2.WriteRequest(batch_id=f"c{n}-b{b}")
        for _ in range(RECORDS_PER_BATCH):
            req.records.add(account_id=rng.choice(accounts), node_id=f"edge-{n}",
                            timestamp_ms=t0_ms - rng.randrange(0, 3_600_000),
                            bytes_in=rng.randrange(0, 10_000), bytes_out=rng.randrange(0, 50_000),
                            requests=rng.randrange(1, 20))
        resp = await write_retrying(stub, req, md)
        assert resp.accepted == RECORDS_PER_BATCH
        if not resp.duplicate:
            add_records(sent, req.records)
        if rng.random() < 0.15:  # the ack was "lost": retry the very same batch
            again = await write_retrying(stub, req, md)
            retries.append((req.batch_id, again.duplicate, again.accepted))
        progress[0] += 1
        await asyncio.sleep(0)


async def test_pipeline_exact_totals_with_retries_and_consumer_kills(tmp_path: Path, broker: str,
                                                                     fresh_postgres_db) -> None:
    env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=broker,
                     METERD_DATABASE__URL=fresh_postgres_db.url,
                     METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.5")
    api = _role(tmp_path, "api", env).start()
    writer = _role(tmp_path, "writer", {**env, "METERD_ADMIN__PORT": str(free_port())}).start()
    consumer = _role(tmp_path, "consumer", {**env, "METERD_ADMIN__PORT": str(free_port())}).start()
    try:
        with api.client() as http:
            accounts = [http.post("/v1/accounts", json={"name": f"acct-{i}"}).json()["id"] for i in range(ACCOUNTS)]
        sent: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        retries: list[tuple[str, bool, int]] = []
        progress = [0]
        t0_ms = int(time.time() * 1000)
        total_batches = CLIENTS * BATCHES_PER_CLIENT
        async with grpc.aio.insecure_channel(writer.grpc) as channel:
            stub = traffic_pb2_grpc.TrafficWriterStub(channel)
            clients = asyncio.gather(*(_client(stub, n, accounts, sent, retries, t0_ms, progress)
                                       for n in range(CLIENTS)))
            kills = 0
            for fraction in (0.3, 0.6):
                while progress[0] < total_batches * fraction:
                    await asyncio.sleep(0.05)
                consumer.kill()  # SIGKILL: whatever it aggregated but did not flush is gone
                kills += 1
                consumer = _role(tmp_path, "consumer", {**env, "METERD_ADMIN__PORT": str(free_port())})
                await asyncio.to_thread(consumer.start)
            await clients
        assert kills == 2
        assert sum(len(v) and 1 for v in sent.values()) == ACCOUNTS
        assert retries, "the run should include retried batches"
        assert all(dup and accepted == RECORDS_PER_BATCH for _, dup, accepted in retries), retries

        start, end = iso(t0_ms / 1000 - 2 * 3600), iso(t0_ms / 1000 + 120)

        def stored() -> dict[str, list[int]]:
            return stored_usage(api.http, accounts, start, end)

        expected = {acc: sent[acc] for acc in accounts}
        wait_until(lambda: stored() == expected, timeout=90, message="stored usage to equal what was sent")
        time.sleep(2)  # and it stays equal: nothing is applied twice later
        final = stored()
        assert final == expected
        total_records = CLIENTS * BATCHES_PER_CLIENT * RECORDS_PER_BATCH
        print(f"\nsent {total_records} records in {total_batches} batches, {len(retries)} retried batches "
              f"answered duplicate, consumer SIGKILLed twice; totals per account: {final}")
    finally:
        for p in (consumer, writer, api):
            p.kill()
