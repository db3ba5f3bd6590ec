from fedgov.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TreeHead(_message.Message):
    __slots__ = ("size", "root", "timestamp", "signature")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    size: int
    root: bytes
    timestamp: int
    signature: bytes
    def __init__(self, size: _Optional[int] = ..., root: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LogKey(_message.Message):
    __slots__ = ("public_key", "endorsement", "coordinator_cert_pem")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENT_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    endorsement: bytes
    coordinator_cert_pem: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., endorsement: _Optional[bytes] = ..., coordinator_cert_pem: _Optional[bytes] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ("max_age_ms",)
    MAX_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    max_age_ms: int
    def __init__(self, max_age_ms: _Optional[int] = ...) -> None: ...

class GetHeadReply(_message.Message):
    __slots__ = ("head", "key")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    head: TreeHead
    key: LogKey
    def __init__(self, head: _Optional[_Union[TreeHead, _Mapping]] = ..., key: _Optional[_Union[LogKey, _Mapping]] = ...) -> None: ...

class ConsistencyProofRequest(_message.Message):
    __slots__ = ("old_size", "new_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class Proof(_message.Message):
    __slots__ = ("hashes",)
    HASHES_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InclusionProofRequest(_message.Message):
    __slots__ = ("index", "size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    size: int
    def __init__(self, index: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("index", "size", "entry", "hashes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    index: int
    size: int
    entry: bytes
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., size: _Optional[int] = ..., entry: _Optional[bytes] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AddCosignatureRequest(_message.Message):
    __slots__ = ("head", "signature")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    head: TreeHead
    signature: bytes
    def __init__(self, head: _Optional[_Union[TreeHead, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetCosignaturesRequest(_message.Message):
    __slots__ = ("size", "latest")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    size: int
    latest: bool
    def __init__(self, size: _Optional[int] = ..., latest: _Optional[bool] = ...) -> None: ...

class Cosignature(_message.Message):
    __slots__ = ("witness", "head", "signature")
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    witness: str
    head: TreeHead
    signature: bytes
    def __init__(self, witness: _Optional[str] = ..., head: _Optional[_Union[TreeHead, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GetCosignaturesReply(_message.Message):
    __slots__ = ("cosignatures",)
    COSIGNATURES_FIELD_NUMBER: _ClassVar[int]
    cosignatures: _containers.RepeatedCompositeFieldContainer[Cosignature]
    def __init__(self, cosignatures: _Optional[_Iterable[_Union[Cosignature, _Mapping]]] = ...) -> None: ...

class GossipMessage(_message.Message):
    __slots__ = ("sender", "recipient", "envelope")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    envelope: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class GetGossipRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetGossipReply(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GossipMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[GossipMessage, _Mapping]]] = ...) -> None: ...

class QueryEntriesRequest(_message.Message):
    __slots__ = ("types", "node", "job", "since_ms", "until_ms", "before", "has_before", "limit", "ascending")
    TYPES_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    HAS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ASCENDING_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[str]
    node: str
    job: str
    since_ms: int
    until_ms: int
    before: int
    has_before: bool
    limit: int
    ascending: bool
    def __init__(self, types: _Optional[_Iterable[str]] = ..., node: _Optional[str] = ..., job: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., before: _Optional[int] = ..., has_before: _Optional[bool] = ..., limit: _Optional[int] = ..., ascending: _Optional[bool] = ...) -> None: ...

class QueryEntriesReply(_message.Message):
    __slots__ = ("entries", "next", "has_next", "size")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    HAS_NEXT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    next: int
    has_next: bool
    size: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., next: _Optional[int] = ..., has_next: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class ListHeadsRequest(_message.Message):
    __slots__ = ("before_ts", "limit")
    BEFORE_TS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    before_ts: int
    limit: int
    def __init__(self, before_ts: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListHeadsReply(_message.Message):
    __slots__ = ("heads",)
    HEADS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedCompositeFieldContainer[TreeHead]
    def __init__(self, heads: _Optional[_Iterable[_Union[TreeHead, _Mapping]]] = ...) -> None: ...
