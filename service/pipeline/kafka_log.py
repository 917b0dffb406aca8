"""The Kafka log's writing side: meterd's topics (created when missing, idempotent) and the producer
the writer acknowledges through (acks=all: a send returns only once the broker has acknowledged it).
The reading side is kafka_consumer.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from governance import DependencyUnavailable
from service.config import KafkaSettings
from service.ingest.errors import DependencyDown
from service.metrics import PipelineMetrics

log = logging.getLogger("meterd.kafka.topics")
Guard = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _unguarded(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


class BatchProducer:
    def __init__(self, bootstrap: str, settings: KafkaSettings, metrics: PipelineMetrics,
                 guard: Guard = _unguarded) -> None:
        self._settings = settings
        self._metrics = metrics
        # guard: the outbound circuit breaker; it fails fast while the broker is known down.
        self._guard = guard
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=settings.enable_idempotence,
            linger_ms=settings.linger_ms,
            request_timeout_ms=settings.request_timeout_ms,
            max_request_size=16 * 1024 * 1024,
            compression_type=None,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        # flush() inside stop(): every batch already handed to the producer is sent first.
        await self._producer.stop()

    async def send(self, topic: str, key: bytes, value: bytes,
                   headers: Sequence[tuple[str, bytes]] = ()) -> None:
        started = time.perf_counter()

        async def produce() -> Any:
            return await self._producer.send_and_wait(topic, value, key=key, headers=list(headers) or None)

        try:
            await self._guard(produce)
        except DependencyUnavailable as exc:  # breaker open: fail fast, the client retries
            raise DependencyDown("Kafka is unavailable (circuit open)", exc.retry_after) from exc
        except KafkaError as exc:
            raise DependencyDown(f"Kafka did not acknowledge the batch: {type(exc).__name__}") from exc
        self._metrics.produce_seconds.observe(time.perf_counter() - started)

    async def partitions_ready(self, topic: str) -> bool:
        try:
            parts = await self._producer.partitions_for(topic)
        except KafkaError:
            return False
        return bool(parts)


async def ensure_topics(bootstrap: str, settings: KafkaSettings, attempts: int = 30) -> None:
    wanted = {settings.topic: settings.partitions, settings.dlq_topic: 1}
    last: Exception | None = None
    for _ in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, n, settings.replication_factor)
                       for name, n in wanted.items() if name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another replica won the race
                log.info("created topics", extra={"topics": [t.name for t in missing]})
            return
        except KafkaError as exc:
            last = exc
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    raise RuntimeError(f"could not create Kafka topics on {bootstrap}: {last!r}")
