"""JSON body of POST /v1/traffic -> the same protobuf records the gRPC writer receives, so both
transports share one validation (service.ingest.validate) and one produce path."""

from __future__ import annotations

from typing import Any

from service.ingest.errors import FieldViolation, InvalidBatch
from service.pb.meterd.v1 import traffic_pb2

_INT_FIELDS = ("timestamp_ms", "bytes_in", "bytes_out", "requests")
_STR_FIELDS = ("account_id", "node_id")
_KNOWN = frozenset(_INT_FIELDS + _STR_FIELDS)
_MAX_INT = (1 << 63) - 1


def parse_traffic(body: Any) -> tuple[str, list[traffic_pb2.TrafficRecord]]:
    if not isinstance(body, dict):
        raise InvalidBatch([FieldViolation("body", "must be a JSON object {batch_id, records}")])
    violations: list[FieldViolation] = []
    batch_id = body.get("batch_id")
    if not isinstance(batch_id, str):
        violations.append(FieldViolation("batch_id", "is required and must be a string"))
    for key in body:
        if key not in ("batch_id", "records"):
            violations.append(FieldViolation(key, "unknown field"))
    raw = body.get("records")
    if not isinstance(raw, list):
        violations.append(FieldViolation("records", "is required and must be an array"))
        raise InvalidBatch(violations)
    records: list[traffic_pb2.TrafficRecord] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            violations.append(FieldViolation(f"records[{i}]", "must be an object"))
            continue
        rec = traffic_pb2.TrafficRecord()
        for name in _STR_FIELDS:
            value = item.get(name)
            if not isinstance(value, str) or not value:
                violations.append(FieldViolation(f"records[{i}].{name}", "is required and must be a non-empty string"))
            else:
                setattr(rec, name, value)
        for name in _INT_FIELDS:
            value = item.get(name, 0 if name != "timestamp_ms" else None)
            if value is None and name == "timestamp_ms":
                violations.append(FieldViolation(f"records[{i}].{name}", "is required (Unix time in milliseconds)"))
            elif not isinstance(value, int) or isinstance(value, bool):
                violations.append(FieldViolation(f"records[{i}].{name}", "must be an integer"))
            elif value < 0:
                violations.append(FieldViolation(f"records[{i}].{name}", "must be >= 0"))
            elif value > _MAX_INT:
                violations.append(FieldViolation(f"records[{i}].{name}", "is too large"))
            else:
                setattr(rec, name, value)
        for key in item:
            if key not in _KNOWN:
                violations.append(FieldViolation(f"records[{i}].{key}", "unknown field"))
        records.append(rec)
        if len(violations) >= 50:
            break
    if violations:
        raise InvalidBatch(violations)
    assert isinstance(batch_id, str)
    return batch_id, records
