"""Typed ingestion failures. Each carries its own mapping (HTTP status and problem title/slug, gRPC
code name), so the two renderers (service.api.app.ingest_problem, service.grpc_writer.status_for)
read attributes instead of testing types; only their extra details (field violations, retry delay)
are per error."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # e.g. "records[3].timestamp_ms"
    description: str


class IngestError(Exception):
    """Base: the batch was not accepted; nothing was written. Answered as an internal error, its
    detail kept from the client; each subclass below names its own answer."""

    title = "ingest error"
    status: int = 500
    http_title: str = "Internal Server Error"
    slug: str | None = None  # None: derived from http_title
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode name
    shows_detail = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def public_detail(self) -> str:
        """What the client is told: the detail, or nothing of it for an unexpected error."""
        return self.detail if self.shows_detail else "internal error"


class InvalidBatch(IngestError):
    title = "invalid batch"
    status, http_title, slug, grpc_code = 400, "Invalid Batch", "invalid-batch", "INVALID_ARGUMENT"
    shows_detail = True

    def __init__(self, violations: list[FieldViolation]) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{first.field}: {first.description}{more}")
        self.violations = violations


class ForeignRecords(IngestError):
    """An account key tried to write records of another account."""

    title = "records of another account"
    status, http_title, slug, grpc_code = 403, "Forbidden", "foreign-records", "PERMISSION_DENIED"
    shows_detail = True


class ReadOnlyCredential(IngestError):
    """A read-only customer token tried to write traffic."""

    title = "read-only token"
    status, http_title, slug, grpc_code = 403, "Forbidden", "read-only-token", "PERMISSION_DENIED"
    shows_detail = True


class BatchConflict(IngestError):
    """The batch_id was already used for different records."""

    title = "batch_id reused"
    status, http_title, slug, grpc_code = 409, "Batch Conflict", "batch-conflict", "ALREADY_EXISTS"
    shows_detail = True


class DependencyDown(IngestError):
    """Kafka or the database is unreachable (or its circuit breaker is open): retry later."""

    title = "dependency unavailable"
    # The same answer as governance's DependencyUnavailable (503, Retry-After; gRPC UNAVAILABLE).
    status, http_title, slug, grpc_code = 503, "Dependency Unavailable", None, "UNAVAILABLE"
    shows_detail = True

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
