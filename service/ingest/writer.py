"""The write path: validate a whole batch, append it to the log once, acknowledge after it is durable."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from governance import DependencyUnavailable
from governance.tracing import producer_span
from service.auth import Principal
from service.config import Settings
from service.ingest.accounts import AccountStatusCache
from service.ingest.errors import BatchConflict, DependencyDown, ForeignRecords, IngestError, ReadOnlyCredential
from service.ingest.nodes import NodeCap
from service.ingest.validate import validate_batch, validate_shape
from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import pipeline_pb2, traffic_pb2
from service.pipeline.logs import BatchLog, Outgoing
from service.storage import Repository


@dataclass(frozen=True, slots=True)
class WriteResult:
    batch_id: str
    accepted: int
    duplicate: bool


def dedupe_key(principal: Principal, batch_id: str) -> str:
    # Scoped by principal: one account cannot collide with (or probe) another's batch ids.
    return f"{principal.name}/{batch_id}"


def refuse_foreign_records(principal: Principal, records: Sequence[traffic_pb2.TrafficRecord]) -> None:
    """An account key writes only its own account's records (the admin writes any)."""
    own = principal.account_id
    if own is None:
        return
    for i, r in enumerate(records):
        if r.account_id and r.account_id != own:
            raise ForeignRecords(f"records[{i}].account_id: an account key may only write its own records")


class IngestService:
    def __init__(self, settings: Settings, repo: Repository, log: BatchLog, metrics: PipelineMetrics) -> None:
        self._settings = settings.ingest
        self._destination = settings.kafka.topic if log.name == "kafka" else "ingest_log"
        self._log = log
        self._metrics = metrics
        self._accounts = AccountStatusCache(repo, settings.ingest.account_cache_seconds)
        self._nodes = NodeCap(repo, settings.ingest.max_nodes_per_account)
        # Recently acknowledged batches (dedupe key -> digest), to answer retries at once.
        self._acked: OrderedDict[str, bytes] = OrderedDict()
        # Batches being appended now: a concurrent retry waits for the first attempt's outcome.
        self._in_flight: dict[str, tuple[bytes, asyncio.Future[WriteResult]]] = {}

    @property
    def accounts(self) -> AccountStatusCache:
        return self._accounts

    async def write(self, principal: Principal, batch_id: str,
                    records: Sequence[traffic_pb2.TrafficRecord], transport: str) -> WriteResult:
        try:
            result = await self._write(principal, batch_id, records)
        except DependencyUnavailable as exc:  # the database breaker is open
            self._metrics.ingest_records.labels(transport, "rejected").inc(len(records))
            raise DependencyDown(f"{exc.name} unavailable", exc.retry_after) from exc
        except IngestError:
            self._metrics.ingest_records.labels(transport, "rejected").inc(len(records))
            raise
        if result.duplicate:
            self._metrics.ingest_records.labels(transport, "duplicate").inc(len(records))
        else:
            self._metrics.ingest_records.labels(transport, "accepted").inc(result.accepted)
            self._metrics.ingest_batch_records.observe(result.accepted)
        return result

    async def _write(self, principal: Principal, batch_id: str,
                     records: Sequence[traffic_pb2.TrafficRecord]) -> WriteResult:
        if principal.read_only:
            raise ReadOnlyCredential("a read-only token cannot write traffic; use the account's API key")
        validate_shape(batch_id, len(records), self._settings)
        refuse_foreign_records(principal, records)  # before the lookup: a foreign batch costs no query
        statuses = await self._accounts.statuses({r.account_id for r in records})
        facts = validate_batch(batch_id, records, statuses, self._settings, own_account=principal.account_id)

        batch = pipeline_pb2.TrafficBatch(records=records)
        digest = hashlib.blake2b(batch.SerializeToString(deterministic=True), digest_size=16).digest()
        key = dedupe_key(principal, batch_id)

        acked = self._acked.get(key)
        if acked is not None:
            return self._repeat(batch_id, len(records), acked, digest)
        pending = self._in_flight.get(key)
        if pending is not None:
            first = await asyncio.shield(pending[1])
            return self._repeat(batch_id, first.accepted, pending[0], digest)

        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = (digest, future)
        try:
            await self._nodes.admit(facts.nodes, records)
            batch.dedupe_key = key
            batch.batch_id = batch_id
            batch.principal = principal.name
            batch.received_at_ms = int(time.time() * 1000)
            batch.digest = digest
            headers: list[tuple[str, bytes]] = []
            # The PRODUCER span's context rides with the batch (Kafka headers, or the log row).
            with producer_span(self._destination, headers, attributes={"meterd.batch_id": batch_id}):
                duplicate = await self._log.append(
                    Outgoing(key, digest, len(records), batch.SerializeToString(), headers,
                             facts.latest_ms // 1000))
            result = WriteResult(batch_id, len(records), duplicate)
            self._remember(key, digest)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._in_flight[key]

    @staticmethod
    def _repeat(batch_id: str, accepted: int, earlier: bytes, digest: bytes) -> WriteResult:
        if earlier != digest:
            raise BatchConflict(f"batch_id '{batch_id}' was already used for different records")
        return WriteResult(batch_id, accepted, True)

    def _remember(self, key: str, digest: bytes) -> None:
        if self._settings.ack_cache_size <= 0:
            return
        self._acked[key] = digest
        if len(self._acked) > self._settings.ack_cache_size:
            self._acked.popitem(last=False)
