"""CaptureInfo: what is known about one capture, as stored in its meta file."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["running", "completed", "failed", "interrupted"]
Kind = Literal["folded", "flamegraph", "threads", "alloc", "meta"]

# kind -> file extension; the order is the order people see links in.
KINDS: dict[str, str] = {
    "flamegraph": "svg",
    "folded": "txt",
    "threads": "txt",
    "alloc": "txt",
    "meta": "json",
}


@dataclasses.dataclass(frozen=True)
class CaptureInfo:
    id: str  # "<UTC time>_<pid>_<service>", the shared prefix of the capture's files
    service: str
    pid: int
    trigger: str
    status: Status
    started_at: datetime
    stopped_at: datetime | None = None
    requested_duration_s: float | None = None
    rate_hz: int | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> file name
    error: str | None = None
    stop_reason: str | None = None
    samples: int | None = None
    py_spy_summary: str | None = None
    allocation_sites: bool | None = None  # True when tracemalloc traced this capture
    trigger_detail: str | None = None  # why, e.g. the watchdog's reading

    @property
    def duration_s(self) -> float | None:
        if self.stopped_at is None:
            return None
        return max(0.0, (self.stopped_at - self.started_at).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["started_at"] = _iso(self.started_at)
        data["stopped_at"] = _iso(self.stopped_at)
        data["duration_s"] = self.duration_s
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["started_at"] = _parse(values["started_at"])
        values["stopped_at"] = _parse(values.get("stopped_at"))
        values["files"] = dict(values.get("files") or {})
        return cls(**values)

    def replace(self, **changes: Any) -> CaptureInfo:
        return dataclasses.replace(self, **changes)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
