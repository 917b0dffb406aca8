"""Whole-batch validation. Collects every violation (up to a cap) so a client can fix all at once."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.config import IngestSettings
from service.ingest.errors import FieldViolation, ForeignRecords, InvalidBatch
from service.pb.meterd.v1 import traffic_pb2

BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Printable ASCII that hostnames, UUIDs, IP:port and cloud/pod paths use; no control characters,
# spaces or quotes (they break PostgreSQL text, logs and CSV), and no leading = + - @ (spreadsheet
# formulas in an export).
NODE_ID_PATTERN = r"^(?![=+@-])[A-Za-z0-9._:@/+=~\[\]-]{1,128}$"  # also the OpenAPI schema's
NODE_ID = re.compile(NODE_ID_PATTERN[1:-1])
NODE_ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ : @ / + = ~ [ ] -, not starting with = + - @"
_MAX_VIOLATIONS = 50


def validate_shape(batch_id: str, record_count: int, settings: IngestSettings) -> None:
    """The checks that need no lookup; run first so an oversized batch costs no query."""
    violations: list[FieldViolation] = []
    if not BATCH_ID.fullmatch(batch_id):
        violations.append(FieldViolation("batch_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -"))
    if record_count == 0:
        violations.append(FieldViolation("records", "must contain at least one record"))
    elif record_count > settings.max_batch_records:
        violations.append(FieldViolation(
            "records", f"has {record_count} records; the limit is {settings.max_batch_records}"))
    if violations:
        raise InvalidBatch(violations)


@dataclass(frozen=True, slots=True)
class BatchFacts:
    """What the writer needs next, gathered in the validation pass (no second pass over records)."""

    latest_ms: int  # the latest record timestamp: kept with the claim for dedupe retention
    nodes: set[tuple[str, str]]  # (account_id, node_id) pairs: the node cap


def validate_batch(
    batch_id: str,
    records: Sequence[traffic_pb2.TrafficRecord],
    statuses: Mapping[str, str],
    settings: IngestSettings,
    *,
    own_account: str | None,
    now_ms: int | None = None,
) -> BatchFacts:
    """Raises InvalidBatch / ForeignRecords unless every record may be accepted.

    ``statuses`` maps each account id in the batch to its status (missing: unknown account).
    ``own_account`` is set when an account key (not the admin token) wrote the batch.
    """
    validate_shape(batch_id, len(records), settings)
    violations: list[FieldViolation] = []
    add = violations.append
    now = int(time.time() * 1000) if now_ms is None else now_ms
    earliest = now - settings.max_past_seconds * 1000
    latest = now + settings.max_future_seconds * 1000
    max_bytes = settings.max_bytes_per_record
    max_requests = settings.max_requests_per_record
    good_nodes: set[str] = set()  # a batch repeats few node ids: match each once
    pairs: set[tuple[str, str]] = set()
    latest_ms = 0
    for i, r in enumerate(records):
        acc = r.account_id
        status = statuses.get(acc)
        if own_account is not None and acc != own_account and acc:
            raise ForeignRecords(f"records[{i}].account_id: an account key may only write its own records")
        if not acc:
            add(FieldViolation(f"records[{i}].account_id", "is required"))
        elif status is None:
            add(FieldViolation(f"records[{i}].account_id", f"unknown account '{acc[:64]}'"))
        elif status != "active":
            add(FieldViolation(f"records[{i}].account_id", f"account '{acc}' is {status}"))
        node = r.node_id
        pairs.add((acc, node))
        if node in good_nodes:
            pass
        elif not node:
            add(FieldViolation(f"records[{i}].node_id", "is required"))
        elif NODE_ID.fullmatch(node):
            good_nodes.add(node)
        else:
            add(FieldViolation(f"records[{i}].node_id", NODE_ID_RULE))
        ts = r.timestamp_ms
        if ts > latest_ms:
            latest_ms = ts
        if ts <= 0:
            add(FieldViolation(f"records[{i}].timestamp_ms", "is required (Unix time in milliseconds)"))
        elif ts < earliest:
            add(FieldViolation(f"records[{i}].timestamp_ms",
                               f"is more than {settings.max_past_seconds} s in the past"))
        elif ts > latest:
            add(FieldViolation(f"records[{i}].timestamp_ms",
                               f"is more than {settings.max_future_seconds} s in the future"))
        if r.bytes_in > max_bytes:
            add(FieldViolation(f"records[{i}].bytes_in", f"must be at most {max_bytes}"))
        if r.bytes_out > max_bytes:
            add(FieldViolation(f"records[{i}].bytes_out", f"must be at most {max_bytes}"))
        if r.requests > max_requests:
            add(FieldViolation(f"records[{i}].requests", f"must be at most {max_requests}"))
        if len(violations) >= _MAX_VIOLATIONS:
            break
    if violations:
        raise InvalidBatch(violations)
    return BatchFacts(latest_ms, pairs)
