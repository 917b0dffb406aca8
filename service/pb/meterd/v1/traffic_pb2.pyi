from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteRequest(_message.Message):
    __slots__ = ("batch_id", "records")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    records: _containers.RepeatedCompositeFieldContainer[TrafficRecord]
    def __init__(self, batch_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[TrafficRecord, _Mapping]]] = ...) -> None: ...

class TrafficRecord(_message.Message):
    __slots__ = ("account_id", "node_id", "timestamp_ms", "bytes_in", "bytes_out", "requests")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    node_id: str
    timestamp_ms: int
    bytes_in: int
    bytes_out: int
    requests: int
    def __init__(self, account_id: _Optional[str] = ..., node_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("batch_id", "accepted", "duplicate")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    duplicate: bool
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...
