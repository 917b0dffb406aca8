from service.pb.meterd.v1 import traffic_pb2 as _traffic_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrafficBatch(_message.Message):
    __slots__ = ("dedupe_key", "batch_id", "principal", "records", "received_at_ms", "digest")
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    dedupe_key: str
    batch_id: str
    principal: str
    records: _containers.RepeatedCompositeFieldContainer[_traffic_pb2.TrafficRecord]
    received_at_ms: int
    digest: bytes
    def __init__(self, dedupe_key: _Optional[str] = ..., batch_id: _Optional[str] = ..., principal: _Optional[str] = ..., records: _Optional[_Iterable[_Union[_traffic_pb2.TrafficRecord, _Mapping]]] = ..., received_at_ms: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...
