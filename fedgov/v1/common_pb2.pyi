from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "schema_json", "schema_digest", "rows", "quality_json", "fact", "purposes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_JSON_FIELD_NUMBER: _ClassVar[int]
    FACT_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema_json: str
    schema_digest: str
    rows: int
    quality_json: str
    fact: bytes
    purposes: _containers.RepeatedCompositeFieldContainer[PurposeAllowed]
    def __init__(self, name: _Optional[str] = ..., schema_json: _Optional[str] = ..., schema_digest: _Optional[str] = ..., rows: _Optional[int] = ..., quality_json: _Optional[str] = ..., fact: _Optional[bytes] = ..., purposes: _Optional[_Iterable[_Union[PurposeAllowed, _Mapping]]] = ...) -> None: ...

class PurposeAllowed(_message.Message):
    __slots__ = ("purpose", "kinds")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, purpose: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...
