from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TypeStats(_message.Message):
    __slots__ = ("signal_type", "count", "shard_counts")
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNTS_FIELD_NUMBER: _ClassVar[int]
    signal_type: str
    count: int
    shard_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, signal_type: _Optional[str] = ..., count: _Optional[int] = ..., shard_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ListStats(_message.Message):
    __slots__ = ("name", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("total_signals", "types", "lists", "index_kind", "memory_bytes", "snapshot_age_seconds", "details_json")
    TOTAL_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    total_signals: int
    types: _containers.RepeatedCompositeFieldContainer[TypeStats]
    lists: _containers.RepeatedCompositeFieldContainer[ListStats]
    index_kind: str
    memory_bytes: int
    snapshot_age_seconds: float
    details_json: str
    def __init__(self, total_signals: _Optional[int] = ..., types: _Optional[_Iterable[_Union[TypeStats, _Mapping]]] = ..., lists: _Optional[_Iterable[_Union[ListStats, _Mapping]]] = ..., index_kind: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., snapshot_age_seconds: _Optional[float] = ..., details_json: _Optional[str] = ...) -> None: ...

class RebuildIndexRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebuildProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "finished", "summary_json", "snapshot_error")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ERROR_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    finished: bool
    summary_json: str
    snapshot_error: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., finished: _Optional[bool] = ..., summary_json: _Optional[str] = ..., snapshot_error: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...
