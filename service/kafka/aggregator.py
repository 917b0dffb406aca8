"""The in-memory half of the consumer: per-(account, node, minute) sums, seen batch ids and the next
offset of every partition, all flushed together in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.pb.meterd.v1 import pipeline_pb2


@dataclass
class Aggregate:
    # (account, node, minute): per-node sums feed the per-node hourly and daily rollups.
    usage: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    seen: dict[str, bytes] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0

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
        self.seen[batch.dedupe_key] = batch.digest
        self.records += len(batch.records)

    def advance(self, partition: int, next_offset: int) -> None:
        self.next_offsets[partition] = next_offset

    def empty(self) -> bool:
        return not self.next_offsets
