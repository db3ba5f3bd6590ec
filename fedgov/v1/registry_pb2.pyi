from fedgov.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("software_version", "key_bundle")
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    software_version: str
    key_bundle: bytes
    def __init__(self, software_version: _Optional[str] = ..., key_bundle: _Optional[bytes] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("node", "coordinator_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    coordinator_version: str
    def __init__(self, node: _Optional[str] = ..., coordinator_version: _Optional[str] = ...) -> None: ...

class PublishCatalogRequest(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[_common_pb2.DatasetInfo]
    def __init__(self, datasets: _Optional[_Iterable[_Union[_common_pb2.DatasetInfo, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "online", "last_seen", "datasets", "registered_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    online: bool
    last_seen: float
    datasets: _containers.RepeatedCompositeFieldContainer[_common_pb2.DatasetInfo]
    registered_at: float
    def __init__(self, name: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen: _Optional[float] = ..., datasets: _Optional[_Iterable[_Union[_common_pb2.DatasetInfo, _Mapping]]] = ..., registered_at: _Optional[float] = ...) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class GetKeyBundleRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class KeyBundle(_message.Message):
    __slots__ = ("node", "bundle")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    node: str
    bundle: bytes
    def __init__(self, node: _Optional[str] = ..., bundle: _Optional[bytes] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("crl_der",)
    CRL_DER_FIELD_NUMBER: _ClassVar[int]
    crl_der: bytes
    def __init__(self, crl_der: _Optional[bytes] = ...) -> None: ...

class GetRevocationsRequest(_message.Message):
    __slots__ = ("have_number",)
    HAVE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    have_number: int
    def __init__(self, have_number: _Optional[int] = ...) -> None: ...

class JobKey(_message.Message):
    __slots__ = ("job_id", "node", "statement")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: str
    statement: bytes
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[str] = ..., statement: _Optional[bytes] = ...) -> None: ...

class GetJobKeyRequest(_message.Message):
    __slots__ = ("job_id", "node", "wait_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: str
    wait_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...
