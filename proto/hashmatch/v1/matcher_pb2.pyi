from hashmatch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LowQualityQueries(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOW_QUALITY_QUERIES_UNSPECIFIED: _ClassVar[LowQualityQueries]
    LOW_QUALITY_QUERIES_MATCH_QUALITY_STORED: _ClassVar[LowQualityQueries]
    LOW_QUALITY_QUERIES_SKIP: _ClassVar[LowQualityQueries]
LOW_QUALITY_QUERIES_UNSPECIFIED: LowQualityQueries
LOW_QUALITY_QUERIES_MATCH_QUALITY_STORED: LowQualityQueries
LOW_QUALITY_QUERIES_SKIP: LowQualityQueries

class MatchOptions(_message.Message):
    __slots__ = ("threshold", "lists", "max_results", "dihedral", "min_quality", "trim_borders", "all_frames", "uncrop", "derotate", "upscale_small", "low_quality_queries", "upscale_small_replicate", "upscale_small_phases")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LISTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    TRIM_BORDERS_FIELD_NUMBER: _ClassVar[int]
    ALL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    UNCROP_FIELD_NUMBER: _ClassVar[int]
    DEROTATE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_SMALL_FIELD_NUMBER: _ClassVar[int]
    LOW_QUALITY_QUERIES_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_SMALL_REPLICATE_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_SMALL_PHASES_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    lists: _containers.RepeatedScalarFieldContainer[str]
    max_results: int
    dihedral: bool
    min_quality: int
    trim_borders: bool
    all_frames: bool
    uncrop: bool
    derotate: bool
    upscale_small: bool
    low_quality_queries: LowQualityQueries
    upscale_small_replicate: bool
    upscale_small_phases: bool
    def __init__(self, threshold: _Optional[int] = ..., lists: _Optional[_Iterable[str]] = ..., max_results: _Optional[int] = ..., dihedral: _Optional[bool] = ..., min_quality: _Optional[int] = ..., trim_borders: _Optional[bool] = ..., all_frames: _Optional[bool] = ..., uncrop: _Optional[bool] = ..., derotate: _Optional[bool] = ..., upscale_small: _Optional[bool] = ..., low_quality_queries: _Optional[_Union[LowQualityQueries, str]] = ..., upscale_small_replicate: _Optional[bool] = ..., upscale_small_phases: _Optional[bool] = ...) -> None: ...

class MatchRequest(_message.Message):
    __slots__ = ("hashes", "media", "media_types", "options", "request_id", "videos")
    HASHES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedCompositeFieldContainer[_common_pb2.HashValue]
    media: _containers.RepeatedScalarFieldContainer[bytes]
    media_types: _containers.RepeatedScalarFieldContainer[str]
    options: MatchOptions
    request_id: str
    videos: _containers.RepeatedCompositeFieldContainer[VideoQuery]
    def __init__(self, hashes: _Optional[_Iterable[_Union[_common_pb2.HashValue, _Mapping]]] = ..., media: _Optional[_Iterable[bytes]] = ..., media_types: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[MatchOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., videos: _Optional[_Iterable[_Union[VideoQuery, _Mapping]]] = ...) -> None: ...

class VideoQuery(_message.Message):
    __slots__ = ("signal_type", "frames", "qualities")
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    QUALITIES_FIELD_NUMBER: _ClassVar[int]
    signal_type: str
    frames: _containers.RepeatedScalarFieldContainer[str]
    qualities: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, signal_type: _Optional[str] = ..., frames: _Optional[_Iterable[str]] = ..., qualities: _Optional[_Iterable[int]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("source", "index", "computed", "matches", "skipped_low_quality", "quality_stored_only")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SOURCE_UNSPECIFIED: _ClassVar[QueryResult.Source]
        SOURCE_HASH: _ClassVar[QueryResult.Source]
        SOURCE_MEDIA: _ClassVar[QueryResult.Source]
        SOURCE_VIDEO: _ClassVar[QueryResult.Source]
    SOURCE_UNSPECIFIED: QueryResult.Source
    SOURCE_HASH: QueryResult.Source
    SOURCE_MEDIA: QueryResult.Source
    SOURCE_VIDEO: QueryResult.Source
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_LOW_QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_STORED_ONLY_FIELD_NUMBER: _ClassVar[int]
    source: QueryResult.Source
    index: int
    computed: _containers.RepeatedCompositeFieldContainer[_common_pb2.ComputedHash]
    matches: _containers.RepeatedCompositeFieldContainer[_common_pb2.Match]
    skipped_low_quality: bool
    quality_stored_only: bool
    def __init__(self, source: _Optional[_Union[QueryResult.Source, str]] = ..., index: _Optional[int] = ..., computed: _Optional[_Iterable[_Union[_common_pb2.ComputedHash, _Mapping]]] = ..., matches: _Optional[_Iterable[_Union[_common_pb2.Match, _Mapping]]] = ..., skipped_low_quality: _Optional[bool] = ..., quality_stored_only: _Optional[bool] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("results", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class HashRequest(_message.Message):
    __slots__ = ("media", "signal_types", "dihedral", "trim_borders")
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPES_FIELD_NUMBER: _ClassVar[int]
    DIHEDRAL_FIELD_NUMBER: _ClassVar[int]
    TRIM_BORDERS_FIELD_NUMBER: _ClassVar[int]
    media: _containers.RepeatedScalarFieldContainer[bytes]
    signal_types: _containers.RepeatedScalarFieldContainer[str]
    dihedral: bool
    trim_borders: bool
    def __init__(self, media: _Optional[_Iterable[bytes]] = ..., signal_types: _Optional[_Iterable[str]] = ..., dihedral: _Optional[bool] = ..., trim_borders: _Optional[bool] = ...) -> None: ...

class MediaHashes(_message.Message):
    __slots__ = ("index", "hashes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    index: int
    hashes: _containers.RepeatedCompositeFieldContainer[_common_pb2.ComputedHash]
    def __init__(self, index: _Optional[int] = ..., hashes: _Optional[_Iterable[_Union[_common_pb2.ComputedHash, _Mapping]]] = ...) -> None: ...

class HashResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MediaHashes]
    def __init__(self, items: _Optional[_Iterable[_Union[MediaHashes, _Mapping]]] = ...) -> None: ...
