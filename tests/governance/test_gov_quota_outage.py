"""Issue 23 / audit N11: quota on a real Redis that hangs (SIGSTOP: TCP still accepts, nothing
answers) or is gone (killed). Every admit answers within a bound, by the `fail_open` policy (admit,
or refuse as unavailable), each storage failure is counted in governance_quota_storage_errors_total,
and after `fail_max` failures the outbound breaker answers without touching Redis at all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from governance.core import NOOP, Call, Rejection
from governance.plugins import PluginContext
from governance.plugins.quota import SharedQuotaPlugin, create
from tests.support.servers import RedisServer, running_redis

BOUND = 1.0  # seconds an admit may take against a broken Redis (defaults: 0.1 s socket timeouts)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def quota(url: str, registry: CollectorRegistry, **kw: object) -> SharedQuotaPlugin:
    q = create({"limit": "100/second", "storage": url, "headers": False, **kw}, PluginContext(registry, "t"), "default")
    assert isinstance(q, SharedQuotaPlugin)
    return q


def errors(registry: CollectorRegistry) -> float:
    total = 0.0
    for family in registry.collect():
        if family.name == "governance_quota_storage_errors":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def timed_admits(q: SharedQuotaPlugin, n: int) -> list[tuple[object, float]]:
    out = []
    for _ in range(n):
        started = time.monotonic()
        result = await q.admit(Call("http", "/v1/traffic", "POST", "alice", 0.0))
        out.append((result, time.monotonic() - started))
    return out


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_hung_redis_answers_within_a_bound_by_policy(redis: RedisServer, fail_open: bool) -> None:
    registry = CollectorRegistry()
    q = quota(redis.url, registry, fail_open=fail_open)
    assert await q.admit(Call("http", "/v1/traffic", "POST", "alice", 0.0)) is NOOP  # connected, working
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        answers = await timed_admits(q, 8)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert max(t for _, t in answers) < BOUND, answers
    for result, _ in answers:
        if fail_open:
            assert result is NOOP
        else:
            assert isinstance(result, Rejection) and result.status == "unavailable"
    assert errors(registry) == 8
    # The breaker opened after fail_max timeouts: the last answers did not wait for Redis at all.
    assert answers[-1][1] < 0.05, answers


async def test_a_killed_redis_answers_fast_and_is_counted(redis: RedisServer) -> None:
    registry = CollectorRegistry()
    q = quota(redis.url, registry, fail_open=True)
    assert await q.admit(Call("http", "/v1/traffic", "POST", "alice", 0.0)) is NOOP
    redis.kill()
    answers = await timed_admits(q, 6)
    assert all(result is NOOP for result, _ in answers) and max(t for _, t in answers) < BOUND, answers
    assert errors(registry) == 6


def test_default_client_timeouts_are_short() -> None:
    q = quota("redis://127.0.0.1:1/0", CollectorRegistry())
    assert q.settings.storage_timeout == 0.1
    assert q.storage_options == {"connect_timeout": 0.1, "stream_timeout": 0.1}
    q = quota("redis://127.0.0.1:1/0", CollectorRegistry(), storage_options={"implementation": "redispy"})
    assert q.storage_options == {"implementation": "redispy", "socket_connect_timeout": 0.1, "socket_timeout": 0.1}
    q = quota("redis://127.0.0.1:1/0", CollectorRegistry(), storage_options={"stream_timeout": 2})
    assert q.storage_options == {"stream_timeout": 2}  # what the config sets is kept as it is
