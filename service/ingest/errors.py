"""Typed ingestion failures; each transport renders them (problem+json or a gRPC status)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # e.g. "records[3].timestamp_ms"
    description: str


class IngestError(Exception):
    """Base: the batch was not accepted; nothing was written."""

    title = "ingest error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidBatch(IngestError):
    title = "invalid batch"

    def __init__(self, violations: list[FieldViolation]) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{first.field}: {first.description}{more}")
        self.violations = violations


class ForeignRecords(IngestError):
    """An account key tried to write records of another account."""

    title = "records of another account"


class ReadOnlyCredential(IngestError):
    """A read-only customer token tried to write traffic."""

    title = "read-only token"


class BatchConflict(IngestError):
    """The batch_id was already used for different records."""

    title = "batch_id reused"


class DependencyDown(IngestError):
    """Kafka or the database is unreachable (or its circuit breaker is open): retry later."""

    title = "dependency unavailable"

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
