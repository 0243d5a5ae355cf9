from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HashValue(_message.Message):
    __slots__ = ("signal_type", "hex", "raw", "quality")
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEX_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    signal_type: str
    hex: str
    raw: bytes
    quality: int
    def __init__(self, signal_type: _Optional[str] = ..., hex: _Optional[str] = ..., raw: _Optional[bytes] = ..., quality: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("query_index", "signal_id", "signal_type", "hash_hex", "distance", "list_name", "labels", "external_id", "variant", "query_match_pct", "target_match_pct")
    QUERY_INDEX_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    HASH_HEX_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    QUERY_MATCH_PCT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MATCH_PCT_FIELD_NUMBER: _ClassVar[int]
    query_index: int
    signal_id: int
    signal_type: str
    hash_hex: str
    distance: int
    list_name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    external_id: str
    variant: int
    query_match_pct: float
    target_match_pct: float
    def __init__(self, query_index: _Optional[int] = ..., signal_id: _Optional[int] = ..., signal_type: _Optional[str] = ..., hash_hex: _Optional[str] = ..., distance: _Optional[int] = ..., list_name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., external_id: _Optional[str] = ..., variant: _Optional[int] = ..., query_match_pct: _Optional[float] = ..., target_match_pct: _Optional[float] = ...) -> None: ...

class ComputedHash(_message.Message):
    __slots__ = ("signal_type", "hex", "qualities", "timestamps")
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEX_FIELD_NUMBER: _ClassVar[int]
    QUALITIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    signal_type: str
    hex: _containers.RepeatedScalarFieldContainer[str]
    qualities: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, signal_type: _Optional[str] = ..., hex: _Optional[_Iterable[str]] = ..., qualities: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[float]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "field", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
