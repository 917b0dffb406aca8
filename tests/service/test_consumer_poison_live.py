"""Issue 23 part A on a real `meterd up` (SQLite and PostgreSQL): a poison row a writer-side bug
left in the database log goes to dead_letters and another account's write behind it is counted
within seconds; SIGTERM drains the log before exit and honours consumer.drain_seconds during a
long read."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service.pb.meterd.v1 import pipeline_pb2
from service.storage import create_database, schema
from tests.support.meterd import MeterdProc, meterd_env, running_meterd, wait_until

NOW_MS = int(time.time() * 1000)
FAR_FUTURE_MS = 10**15  # year 33658: the quota month of the record cannot be computed


def batch(batch_id: str, account: str, nodes: list[str], timestamp_ms: int = NOW_MS) -> pipeline_pb2.TrafficBatch:
    b = pipeline_pb2.TrafficBatch(dedupe_key=f"admin/{batch_id}", batch_id=batch_id, principal="admin",
                                  received_at_ms=NOW_MS)
    for node in nodes:
        b.records.add(account_id=account, node_id=node, timestamp_ms=timestamp_ms, bytes_in=1, requests=1)
    b.digest = hashlib.blake2b(b.SerializeToString(deterministic=True), digest_size=16).digest()
    return b


async def append_directly(url: str, batches: list[pipeline_pb2.TrafficBatch]) -> None:
    """Rows as a writer-side bug would leave them: no validation, no claim, no wake-up."""
    db = create_database(url)
    try:
        async with db.engine.begin() as conn:
            for b in batches:
                await conn.execute(schema.ingest_log.insert(), [
                    {"dedupe_key": b.dedupe_key, "records": len(b.records), "payload": b.SerializeToString(),
                     "traceparent": None, "appended_at_ms": int(time.time() * 1000)}])
    finally:
        await db.close()


async def log_and_dead_letters(url: str) -> tuple[int, list[tuple[str, str]]]:
    db = create_database(url)
    try:
        async with db.engine.connect() as conn:
            pending = (await conn.execute(select(func.count()).select_from(schema.ingest_log))).scalar_one()
            d = schema.dead_letters
            dead = [(r[0], r[1]) for r in await conn.execute(select(d.c.dedupe_key, d.c.reason))]
        return int(pending), dead
    finally:
        await db.close()


def sqlite_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'data' / 'meterd.db'}"


def totals(m: MeterdProc, account: str) -> dict:
    with m.client() as c:
        return c.get(f"/v1/accounts/{account}/usage").json()["totals"]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_poison_row_is_dead_lettered_and_the_next_account_counted(
        tmp_path: Path, dialect: str, request: pytest.FixtureRequest) -> None:
    url = sqlite_url(tmp_path) if dialect == "sqlite" else request.getfixturevalue("fresh_postgres_db").url
    env = meterd_env(tmp_path, METERD_DATABASE__URL=url) if dialect == "postgresql" else meterd_env(tmp_path)
    with running_meterd(tmp_path, "up", env=env) as m:
        with m.client() as c:
            poisoner = c.post("/v1/accounts", json={"name": "p", "quota_bytes": 10**12}).json()["id"]
            victim = c.post("/v1/accounts", json={"name": "v"}).json()["id"]
        # SQLite stores NUL, so there the poison is a record whose quota month cannot be computed;
        # PostgreSQL refuses NUL in text (the N2 reproduction), bypassing the writer's validation.
        poison = (batch("poison", poisoner, ["n"], FAR_FUTURE_MS) if dialect == "sqlite"
                  else batch("poison", poisoner, ["edge\x00one"]))
        await append_directly(url, [poison])
        with m.client() as c:
            r = c.post("/v1/traffic", json={"batch_id": "victim-1", "records": [
                {"account_id": victim, "node_id": "n", "timestamp_ms": NOW_MS, "bytes_in": 5, "bytes_out": 0,
                 "requests": 1}]})
            assert r.status_code == 202, r.text
        await asyncio.to_thread(wait_until, lambda: totals(m, victim)["bytes_in"] == 5, 10, 0.2,
                                "the write behind the poison row to be counted")
        pending, dead = await log_and_dead_letters(url)
        assert pending == 0
        assert [k for k, _ in dead] == ["admin/poison"]
        assert "apply failed 3 times alone" in dead[0][1], dead[0][1]
        metrics = httpx.get(f"{m.http}/metrics").text
        assert "meterd_consumer_poison_batches_total 1.0" in metrics
        assert "meterd_consumer_dlq_total 1.0" in metrics


async def test_sigterm_counts_the_whole_log_before_exit(tmp_path: Path) -> None:
    """Killed mutant: a `meterd up` that stops without draining leaves these rows behind."""
    env = meterd_env(tmp_path, METERD_CONSUMER__LOG_POLL_SECONDS="60")  # only the drain looks again
    m = MeterdProc(["up"], env, tmp_path).start()
    try:
        with m.client() as c:
            account = c.post("/v1/accounts", json={"name": "drain"}).json()["id"]
        await append_directly(sqlite_url(tmp_path), [batch(f"d{i}", account, [f"n{j}" for j in range(100)])
                                                     for i in range(20)])
        assert m.stop(60) == 0, m.output()[-3000:]
    finally:
        m.kill()
    # Right after exit, before any restart could count what was left behind.
    pending, dead = await log_and_dead_letters(sqlite_url(tmp_path))
    assert (pending, dead) == (0, [])
    db = create_database(sqlite_url(tmp_path))
    try:
        async with db.engine.connect() as conn:
            u = schema.usage_minute
            requests = (await conn.execute(select(func.sum(u.c.requests)).where(u.c.account_id == account))).scalar()
    finally:
        await db.close()
    assert requests == 2_000


async def test_drain_seconds_is_honoured_during_a_long_read(tmp_path: Path) -> None:
    drain = 1.0
    env = meterd_env(tmp_path, METERD_CONSUMER__LOG_POLL_SECONDS="60", METERD_CONSUMER__DRAIN_SECONDS=str(drain))
    m = MeterdProc(["up"], env, tmp_path).start()
    try:
        with m.client() as c:
            account = c.post("/v1/accounts", json={"name": "long"}).json()["id"]
        rows, nodes = 24, 10_000  # 240,000 distinct (account, node, minute) sums
        await append_directly(sqlite_url(tmp_path), [
            batch(f"long-{i}", account, [f"node-{i}-{j:05d}-" + "x" * 90 for j in range(nodes)])
            for i in range(rows)])
        started = time.monotonic()
        assert m.stop(60) == 0, m.output()[-3000:]
        took = time.monotonic() - started
    finally:
        m.kill()
    # Generous: the drain bound plus one bounded flush and the rest of the shutdown.
    assert took < drain + 5.0, f"SIGTERM took {took:.1f} s with consumer.drain_seconds={drain}"
    with running_meterd(tmp_path, "up", env=meterd_env(tmp_path)) as m:
        await asyncio.to_thread(wait_until, lambda: totals(m, account)["requests"] == rows * nodes, 60, 0.5,
                                "what the drain left in the log to be counted after the restart")
