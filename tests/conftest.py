"""Suite-wide fixtures: one real PostgreSQL and one real Redis per test session.

Area-specific fixtures live in tests/<area>/conftest.py; keep this file to shared servers.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was launched (the venv's pytest script does not
# put the repo root on sys.path).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.ci_no_skips import pytest_runtest_makereport  # noqa: E402, F401  (a hook: CI=true never skips)
from tests.support.require import find_binary  # noqa: E402
from tests.support.servers import (  # noqa: E402
    PostgresServer,
    RedisServer,
    running_postgres,
    running_redis,
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = {
        "postgresql": find_binary("initdb", "/usr/lib/postgresql/*/bin/initdb"),
        "redis-server": find_binary("redis-server"),
        "prometheus": find_binary("prometheus"),
        "alertmanager": find_binary("prometheus-alertmanager", "alertmanager"),
        "chromium": find_binary("chromium", "chromium-browser"),
        "docker-compose": find_binary("docker-compose"),
    }
    parts = [f"{name}={path or 'MISSING'}" for name, path in found.items()]
    return ["real components: " + ", ".join(parts)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Session-wide real PostgreSQL. Tests that stop/kill it must start() it again before returning."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy asyncpg URL of the shared `meterd_test` database."""
    return postgres_server.url


@dataclass(frozen=True)
class PostgresDatabase:
    name: str
    url: str  # postgresql+asyncpg://... for SQLAlchemy
    dsn: str  # postgresql://... for libpq / asyncpg.connect


@pytest.fixture
def fresh_postgres_db(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """An empty database of its own for one test, dropped afterwards; the server is shared."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    postgres_server.create_database(name)
    try:
        yield PostgresDatabase(name, postgres_server.url_for(name), postgres_server.dsn_for(name))
    finally:
        if postgres_server.running:
            postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Session-wide real Redis. Tests that stop/kill it must start() it again before returning."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:<port>/0 (use redis_server.limits_url for the `limits` library)."""
    return redis_server.url


@pytest.fixture
def fresh_redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis after FLUSHALL, so a test starts from an empty keyspace."""
    redis_server.flushall()
    return redis_server.url
