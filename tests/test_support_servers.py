"""The real-server fixtures work: connections succeed, databases are isolated, restarts recover."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.require import find_binary, require_binary
from tests.support.servers import PostgresServer, RedisServer


async def test_postgres_accepts_asyncpg_connection(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "meterd_test"
    finally:
        await conn.close()


def test_postgres_url_is_sqlalchemy_asyncpg(postgres_url: str, postgres_server: PostgresServer) -> None:
    assert postgres_url == f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_server.port}/meterd_test"


async def test_fresh_db_is_isolated(fresh_postgres_db, postgres_server: PostgresServer) -> None:  # noqa: ANN001
    conn = await asyncpg.connect(fresh_postgres_db.dsn)
    try:
        assert await conn.fetchval("select current_database()") == fresh_postgres_db.name
        await conn.execute("create table marker (id int)")
    finally:
        await conn.close()
    # The table exists only in this test's database, not in the shared one.
    shared = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await shared.fetchval("select to_regclass('marker')") is None
    finally:
        await shared.close()


def test_fresh_db_is_dropped_after_test(postgres_server: PostgresServer) -> None:
    # Leftover per-test databases would mean the fixture's cleanup is broken.
    names = postgres_server.psql("select datname from pg_database where datname like 't\\_%'").split()
    assert names == []


async def test_redis_answers_ping(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_fresh_redis_url_starts_empty(fresh_redis_url: str) -> None:
    client = aioredis.from_url(fresh_redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("k", "v")  # next user of fresh_redis_url must not see this
    finally:
        await client.aclose()


async def test_redis_survives_kill_and_start(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.kill()
    assert not redis_server.running
    client = aioredis.from_url(redis_server.url)
    try:
        with pytest.raises(aioredis.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
    redis_server.start()
    assert redis_server.port == port
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_postgres_survives_kill_and_restart(postgres_server: PostgresServer) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    await conn.execute("create table if not exists chaos_probe (v int); insert into chaos_probe values (7)")
    await conn.close()

    postgres_server.kill()  # crash: whole process group SIGKILLed
    assert not postgres_server.running
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(postgres_server.dsn, timeout=2)

    postgres_server.start()  # crash recovery from WAL
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("select count(*) from chaos_probe where v = 7") >= 1
    finally:
        await conn.execute("drop table chaos_probe")
        await conn.close()

    postgres_server.restart()  # graceful stop + start
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_require_binary_finds_existing_and_globs(tmp_path) -> None:  # noqa: ANN001
    for version in ("9", "15", "10"):
        exe = tmp_path / version / "tool"
        exe.parent.mkdir()
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    assert require_binary("sh") == find_binary("sh")
    # Highest version wins numerically (15 > 10 > 9), not lexically.
    assert require_binary("no-such-tool-xyz", str(tmp_path / "*" / "tool")) == str(tmp_path / "15" / "tool")


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make test"):
        require_binary("no-such-tool-xyz", "/nonexistent/*/bin/x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-xyz"):
        require_binary("no-such-tool-xyz")
