from twin.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("query", "twin", "category", "top_k", "strategy")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TWIN_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    query: str
    twin: str
    category: str
    top_k: int
    strategy: str
    def __init__(self, query: _Optional[str] = ..., twin: _Optional[str] = ..., category: _Optional[str] = ..., top_k: _Optional[int] = ..., strategy: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Source]
    def __init__(self, sources: _Optional[_Iterable[_Union[_common_pb2.Source, _Mapping]]] = ...) -> None: ...

class ListTwinsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Twin(_message.Message):
    __slots__ = ("id", "name", "documents", "chunks")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    documents: int
    chunks: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., documents: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class ListTwinsResponse(_message.Message):
    __slots__ = ("twins",)
    TWINS_FIELD_NUMBER: _ClassVar[int]
    twins: _containers.RepeatedCompositeFieldContainer[Twin]
    def __init__(self, twins: _Optional[_Iterable[_Union[Twin, _Mapping]]] = ...) -> None: ...
