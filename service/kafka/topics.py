"""Creates meterd's topics when they are missing (idempotent)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from service.config import KafkaSettings

log = logging.getLogger("meterd.kafka.topics")


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
