from hashmatch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChangeAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_ACTION_UNSPECIFIED: _ClassVar[ChangeAction]
    CHANGE_ACTION_ADDED: _ClassVar[ChangeAction]
    CHANGE_ACTION_REMOVED: _ClassVar[ChangeAction]

class SignalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_STATE_UNSPECIFIED: _ClassVar[SignalState]
    SIGNAL_STATE_LIVE: _ClassVar[SignalState]
    SIGNAL_STATE_RETRACTED: _ClassVar[SignalState]
    SIGNAL_STATE_EXPIRED: _ClassVar[SignalState]
    SIGNAL_STATE_LIST_DISABLED: _ClassVar[SignalState]
    SIGNAL_STATE_DELETED: _ClassVar[SignalState]
CHANGE_ACTION_UNSPECIFIED: ChangeAction
CHANGE_ACTION_ADDED: ChangeAction
CHANGE_ACTION_REMOVED: ChangeAction
SIGNAL_STATE_UNSPECIFIED: SignalState
SIGNAL_STATE_LIVE: SignalState
SIGNAL_STATE_RETRACTED: SignalState
SIGNAL_STATE_EXPIRED: SignalState
SIGNAL_STATE_LIST_DISABLED: SignalState
SIGNAL_STATE_DELETED: SignalState

class Signal(_message.Message):
    __slots__ = ("hash", "labels", "external_id", "frames", "frame_qualities", "timestamps", "expires_at")
    HASH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FRAME_QUALITIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    hash: _common_pb2.HashValue
    labels: _containers.RepeatedScalarFieldContainer[str]
    external_id: str
    frames: _containers.RepeatedScalarFieldContainer[str]
    frame_qualities: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[float]
    expires_at: float
    def __init__(self, hash: _Optional[_Union[_common_pb2.HashValue, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., external_id: _Optional[str] = ..., frames: _Optional[_Iterable[str]] = ..., frame_qualities: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[float]] = ..., expires_at: _Optional[float] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("list_name", "signals", "source", "strict", "request_id")
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    list_name: str
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    source: str
    strict: bool
    request_id: str
    def __init__(self, list_name: _Optional[str] = ..., signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ..., source: _Optional[str] = ..., strict: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("added", "updated", "unchanged", "rejected", "rejections", "still_retracted", "still_retracted_targets")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    STILL_RETRACTED_FIELD_NUMBER: _ClassVar[int]
    STILL_RETRACTED_TARGETS_FIELD_NUMBER: _ClassVar[int]
    added: int
    updated: int
    unchanged: int
    rejected: int
    rejections: _containers.RepeatedCompositeFieldContainer[_common_pb2.ItemError]
    still_retracted: int
    still_retracted_targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., rejected: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[_common_pb2.ItemError, _Mapping]]] = ..., still_retracted: _Optional[int] = ..., still_retracted_targets: _Optional[_Iterable[str]] = ...) -> None: ...

class RetractRequest(_message.Message):
    __slots__ = ("list_name", "hashes", "signal_ids", "reason", "request_id")
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    list_name: str
    hashes: _containers.RepeatedCompositeFieldContainer[_common_pb2.HashValue]
    signal_ids: _containers.RepeatedScalarFieldContainer[int]
    reason: str
    request_id: str
    def __init__(self, list_name: _Optional[str] = ..., hashes: _Optional[_Iterable[_Union[_common_pb2.HashValue, _Mapping]]] = ..., signal_ids: _Optional[_Iterable[int]] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RetractResponse(_message.Message):
    __slots__ = ("retracted", "not_found", "not_found_total", "already_retracted", "already_retracted_total")
    RETRACTED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_RETRACTED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_RETRACTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    retracted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    not_found_total: int
    already_retracted: _containers.RepeatedScalarFieldContainer[str]
    already_retracted_total: int
    def __init__(self, retracted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ..., not_found_total: _Optional[int] = ..., already_retracted: _Optional[_Iterable[str]] = ..., already_retracted_total: _Optional[int] = ...) -> None: ...

class ListHashListsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HashList(_message.Message):
    __slots__ = ("name", "description", "signal_count", "enabled", "signal_types", "expired_count", "owner", "labels", "uid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    signal_count: int
    enabled: bool
    signal_types: _containers.RepeatedScalarFieldContainer[str]
    expired_count: int
    owner: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    uid: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., signal_count: _Optional[int] = ..., enabled: _Optional[bool] = ..., signal_types: _Optional[_Iterable[str]] = ..., expired_count: _Optional[int] = ..., owner: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., uid: _Optional[str] = ...) -> None: ...

class ListHashListsResponse(_message.Message):
    __slots__ = ("lists", "tenant", "store_id")
    LISTS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    lists: _containers.RepeatedCompositeFieldContainer[HashList]
    tenant: str
    store_id: str
    def __init__(self, lists: _Optional[_Iterable[_Union[HashList, _Mapping]]] = ..., tenant: _Optional[str] = ..., store_id: _Optional[str] = ...) -> None: ...

class ChangesRequest(_message.Message):
    __slots__ = ("since", "signal_types", "max_changes", "split_entries", "since_signal_id")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANGES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SINCE_SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    since: int
    signal_types: _containers.RepeatedScalarFieldContainer[str]
    max_changes: int
    split_entries: bool
    since_signal_id: int
    def __init__(self, since: _Optional[int] = ..., signal_types: _Optional[_Iterable[str]] = ..., max_changes: _Optional[int] = ..., split_entries: _Optional[bool] = ..., since_signal_id: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("seq", "action", "signal_id", "signal_type", "live", "hash", "frames", "list_name", "labels", "external_id", "quality", "expires_at", "frame_qualities", "timestamps", "state", "list_uid")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    FRAME_QUALITIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIST_UID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    action: ChangeAction
    signal_id: int
    signal_type: str
    live: bool
    hash: bytes
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    list_name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    external_id: str
    quality: int
    expires_at: float
    frame_qualities: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[float]
    state: SignalState
    list_uid: str
    def __init__(self, seq: _Optional[int] = ..., action: _Optional[_Union[ChangeAction, str]] = ..., signal_id: _Optional[int] = ..., signal_type: _Optional[str] = ..., live: _Optional[bool] = ..., hash: _Optional[bytes] = ..., frames: _Optional[_Iterable[bytes]] = ..., list_name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., external_id: _Optional[str] = ..., quality: _Optional[int] = ..., expires_at: _Optional[float] = ..., frame_qualities: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[float]] = ..., state: _Optional[_Union[SignalState, str]] = ..., list_uid: _Optional[str] = ...) -> None: ...

class ChangesResponse(_message.Message):
    __slots__ = ("changes", "head", "more", "store_id", "since_digest", "head_digest", "split_entries", "head_signal_id", "head_entry_digest", "since_entry_digest", "deleted_lists", "tenant")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SPLIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_ENTRY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SINCE_ENTRY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DELETED_LISTS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    head: int
    more: bool
    store_id: str
    since_digest: str
    head_digest: str
    split_entries: bool
    head_signal_id: int
    head_entry_digest: str
    since_entry_digest: str
    deleted_lists: _containers.RepeatedCompositeFieldContainer[DeletedList]
    tenant: str
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., head: _Optional[int] = ..., more: _Optional[bool] = ..., store_id: _Optional[str] = ..., since_digest: _Optional[str] = ..., head_digest: _Optional[str] = ..., split_entries: _Optional[bool] = ..., head_signal_id: _Optional[int] = ..., head_entry_digest: _Optional[str] = ..., since_entry_digest: _Optional[str] = ..., deleted_lists: _Optional[_Iterable[_Union[DeletedList, _Mapping]]] = ..., tenant: _Optional[str] = ...) -> None: ...

class DeletedList(_message.Message):
    __slots__ = ("list_name", "seq", "deleted_at", "list_uid")
    LIST_NAME_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    LIST_UID_FIELD_NUMBER: _ClassVar[int]
    list_name: str
    seq: int
    deleted_at: float
    list_uid: str
    def __init__(self, list_name: _Optional[str] = ..., seq: _Optional[int] = ..., deleted_at: _Optional[float] = ..., list_uid: _Optional[str] = ...) -> None: ...

class SignalStatesRequest(_message.Message):
    __slots__ = ("signal_ids",)
    SIGNAL_IDS_FIELD_NUMBER: _ClassVar[int]
    signal_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, signal_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SignalStatesResponse(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[SignalState]
    def __init__(self, states: _Optional[_Iterable[_Union[SignalState, str]]] = ...) -> None: ...
