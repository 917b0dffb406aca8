"""What the ledger takes and gives back: claims and batch states, database-log rows, one flush's
contents, and the three races a flush can lose (ledger.py is the behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.storage.rollup import UsageDelta


class OffsetConflict(Exception):
    """Another consumer moved these partitions' stored offsets: this one lost them."""

    def __init__(self, topic: str, partitions: set[int]) -> None:
        super().__init__(f"{topic}{sorted(partitions)} offsets moved by another consumer")
        self.partitions = partitions


class LogRowsTaken(Exception):
    """Another consumer counted some of these database-log rows first."""


class AlreadyApplied(Exception):
    """Some batch ids were counted by someone else after this consumer checked them."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"{len(keys)} batch id(s) already counted")
        self.keys = keys


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    digest: bytes
    records: int
    payload: bytes = b""  # for the database log: the serialized batch
    traceparent: str | None = None
    latest_record_s: int | None = None  # the batch's latest record time (dedupe retention)


@dataclass(frozen=True, slots=True)
class BatchState:
    digest: bytes
    records: int
    claimed_at: int
    applied_at_ms: int | None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    new: bool  # this call claimed it
    conflict: bool  # claimed before with other records
    applied: bool  # already counted


@dataclass(frozen=True, slots=True)
class LogRow:
    seq: int
    key: str
    payload: bytes
    traceparent: str | None
    appended_at_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str | None
    payload: bytes
    reason: str


@dataclass
class Flush:
    """What one flush transaction writes."""

    usage: UsageDelta = field(default_factory=dict)  # (account, node, minute) -> sums
    applied: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # key -> (digest, records)
    offsets: dict[int, tuple[int | None, int]] = field(default_factory=dict)  # Kafka: partition CAS
    marks: dict[int, str] = field(default_factory=dict)  # Kafka: fingerprint of each new offset's last message
    log_seqs: list[int] = field(default_factory=list)  # database log rows this flush consumes
    dead: list[DeadLetter] = field(default_factory=list)  # database log rows it could not count
