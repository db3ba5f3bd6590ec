from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "schema_json", "schema_digest", "rows", "quality_json", "fact")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_JSON_FIELD_NUMBER: _ClassVar[int]
    FACT_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema_json: str
    schema_digest: str
    rows: int
    quality_json: str
    fact: bytes
    def __init__(self, name: _Optional[str] = ..., schema_json: _Optional[str] = ..., schema_digest: _Optional[str] = ..., rows: _Optional[int] = ..., quality_json: _Optional[str] = ..., fact: _Optional[bytes] = ...) -> None: ...
