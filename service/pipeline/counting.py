"""What both consumers do with a batch read from their log: decode it, decide whether it counts,
and add it to the per-(account, node, minute) sums of the next flush (per-node sums feed the
per-node rollups)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from google.protobuf.message import DecodeError

from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import pipeline_pb2
from service.storage.ledger import BatchState
from service.storage.rollup import UsageDelta, add_into
from service.storage.usage_write import MAX_SUM


class Verdict(Enum):
    COUNT = "applied"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def decode(value: bytes | None) -> pipeline_pb2.TrafficBatch:
    """Raises DecodeError for anything a meterd writer did not produce."""
    batch = pipeline_pb2.TrafficBatch()
    batch.ParseFromString(value or b"")
    # Protobuf parses almost any bytes into *some* message; a writer's batch always has these.
    if not batch.dedupe_key or not batch.batch_id or not batch.records or len(batch.digest) != 16:
        raise DecodeError("not a writer-produced batch (missing dedupe_key, batch_id, records or digest)")
    return batch


@dataclass
class Aggregate:
    """One flush's worth of counted batches (per Kafka partition, or for the database log)."""

    usage: UsageDelta = field(default_factory=dict)
    applied: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    records: int = 0
    next_offset: int | None = None
    last_mark: str | None = None  # Kafka: fingerprint of the message before next_offset
    received_ms: list[int] = field(default_factory=list)  # when the writer got each counted batch

    def verdict(self, batch: pipeline_pb2.TrafficBatch, stored: BatchState | None) -> Verdict:
        key, digest = batch.dedupe_key, batch.digest
        earlier = self.applied.get(key)
        if earlier is not None:
            return Verdict.DUPLICATE if earlier[0] == digest else Verdict.CONFLICT
        if stored is None:
            return Verdict.COUNT
        if stored.digest != digest:
            return Verdict.CONFLICT
        return Verdict.DUPLICATE if stored.applied_at_ms is not None else Verdict.COUNT

    def add(self, batch: pipeline_pb2.TrafficBatch) -> None:
        usage = self.usage
        for r in batch.records:
            k = (r.account_id, r.node_id, (r.timestamp_ms // 60_000) * 60)
            row = usage.get(k)
            if row is None:
                usage[k] = [r.bytes_in, r.bytes_out, r.requests]
            else:
                row[0] += r.bytes_in
                row[1] += r.bytes_out
                row[2] += r.requests
        self.applied[batch.dedupe_key] = (batch.digest, len(batch.records))
        self.records += len(batch.records)
        self.received_ms.append(batch.received_at_ms)


def merged_usage(aggregates: Iterable[Aggregate]) -> tuple[UsageDelta, int]:
    """The sums of several aggregates, and how many of them reached the overflow ceiling."""
    out: UsageDelta = {}
    for agg in aggregates:
        for k, v in agg.usage.items():
            add_into(out, k, v)
    saturated = sum(1 for v in out.values() for x in v if x > MAX_SUM)
    return out, saturated


def observe_freshness(metrics: PipelineMetrics, counted: Iterable[Aggregate]) -> None:
    """Acknowledgement to queryable, once per batch, right after the flush that counted it committed."""
    now_ms = time.time() * 1000
    for agg in counted:
        for received in agg.received_ms:
            if received:
                metrics.freshness_seconds.observe(max(0.0, (now_ms - received) / 1000))
