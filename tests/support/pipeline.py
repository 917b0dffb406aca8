"""Pipeline batches as a writer makes them, for consumer tests that feed a log directly."""

from __future__ import annotations

import hashlib

from service.pb.meterd.v1 import pipeline_pb2


def writer_batch(batch_id: str, bytes_in: int, minute_s: int, account: str = "acc") -> pipeline_pb2.TrafficBatch:
    """One record of `bytes_in` bytes in `minute_s`, written by the admin, digest included."""
    b = pipeline_pb2.TrafficBatch(dedupe_key=f"admin/{batch_id}", batch_id=batch_id, principal="admin")
    b.records.add(account_id=account, node_id="n", timestamp_ms=minute_s * 1000, bytes_in=bytes_in, requests=1)
    b.digest = hashlib.blake2b(b.SerializeToString(deterministic=True), digest_size=16).digest()
    return b
