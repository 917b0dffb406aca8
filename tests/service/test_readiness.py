"""/readyz's real code (service.api.readiness through service.api.app's ops routes): short statuses
without exception text, and at most one round of dependency checks per second however often it
is asked."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from service.api.app import ops_routes
from service.api.readiness import Readiness

LEAK = "host=db.internal password=hunter2 relation accounts"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://meterd")


async def test_body_has_a_short_status_per_dependency_and_no_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def db_ready() -> str | None:
        raise ConnectionRefusedError(LEAK)

    async def kafka_ready() -> str | None:
        return "Kafka topic metadata unavailable for traffic on broker kafka-3.internal:9092"

    async def consumer_ready() -> str | None:
        return None

    app = Starlette(routes=ops_routes(CollectorRegistry(), [db_ready, kafka_ready, consumer_ready]))
    caplog.set_level(logging.WARNING, "meterd.api")
    async with _client(app) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {"type": "https://meterd.dev/problems/not-ready", "title": "Not Ready", "status": 503,
                        "detail": "not ready: db, kafka",
                        "checks": {"db": "failing", "kafka": "failing", "consumer": "ok"}}
    for leak in ("hunter2", "db.internal", "ConnectionRefusedError", "kafka-3.internal", "metadata"):
        assert leak not in r.text
    # The details are in the log instead.
    assert "ConnectionRefusedError" in caplog.text and "kafka-3.internal" in caplog.text


async def test_rapid_calls_check_at_most_once_per_second() -> None:
    calls = 0

    async def db_ready() -> str | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return None

    clock = FakeClock()
    readiness = Readiness([db_ready], clock=clock)
    # 50 concurrent callers share one check.
    results = await asyncio.gather(*(readiness.status() for _ in range(50)))
    assert calls == 1 and all(r == {"db": "ok"} for r in results)
    # 1,000 calls spread over 0.99 s: still the same answer, no new check.
    for i in range(1000):
        clock.now += 0.00099
        assert await readiness.status() == {"db": "ok"}
        assert calls == 1, i
    # 1 s after the check: the next call checks again, once.
    clock.now += 0.02
    await asyncio.gather(*(readiness.status() for _ in range(20)))
    assert calls == 2
    # 10 simulated seconds of 100 calls/s: at most one check per second.
    for _ in range(1000):
        clock.now += 0.01
        await readiness.status()
    assert 2 + 9 <= calls <= 2 + 11


async def test_rapid_http_calls_in_real_time_check_about_once_per_second() -> None:
    calls = 0

    async def db_ready() -> str | None:
        nonlocal calls
        calls += 1
        return None

    app = Starlette(routes=ops_routes(CollectorRegistry(), [db_ready]))
    loop = asyncio.get_running_loop()
    async with _client(app) as client:
        start = loop.time()
        answered = 0
        while loop.time() - start < 2.5:
            assert (await client.get("/readyz")).status_code == 200
            answered += 1
        elapsed = loop.time() - start
    assert answered > 50  # many calls...
    assert calls <= int(elapsed) + 1  # ...and at most one check per started second


async def test_a_hanging_dependency_answers_timeout() -> None:
    async def kafka_ready() -> str | None:
        await asyncio.sleep(60)
        return None

    readiness = Readiness([kafka_ready], timeout_s=0.05)
    assert await readiness.status() == {"kafka": "timeout"}


async def test_a_cancelled_caller_does_not_cancel_the_shared_check() -> None:
    release = asyncio.Event()
    calls = 0

    async def db_ready() -> str | None:
        nonlocal calls
        calls += 1
        await release.wait()
        return None

    readiness = Readiness([db_ready])
    first = asyncio.create_task(readiness.status())
    second = asyncio.create_task(readiness.status())
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == {"db": "ok"}
    assert calls == 1
