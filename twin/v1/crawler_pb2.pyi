from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CrawlRequest(_message.Message):
    __slots__ = ("twin", "targets", "source_type", "index")
    TWIN_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    twin: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    source_type: str
    index: bool
    def __init__(self, twin: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., source_type: _Optional[str] = ..., index: _Optional[bool] = ...) -> None: ...

class CrawlOutcome(_message.Message):
    __slots__ = ("target", "status", "detail", "document_id")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    target: str
    status: str
    detail: str
    document_id: str
    def __init__(self, target: _Optional[str] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., document_id: _Optional[str] = ...) -> None: ...

class CrawlResponse(_message.Message):
    __slots__ = ("stored", "updated", "unchanged", "failed", "outcomes", "chunks_indexed")
    STORED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    updated: int
    unchanged: int
    failed: int
    outcomes: _containers.RepeatedCompositeFieldContainer[CrawlOutcome]
    chunks_indexed: int
    def __init__(self, stored: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., failed: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[CrawlOutcome, _Mapping]]] = ..., chunks_indexed: _Optional[int] = ...) -> None: ...
