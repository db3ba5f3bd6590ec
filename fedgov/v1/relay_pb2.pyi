from fedgov.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RelayChunk(_message.Message):
    __slots__ = ("job_id", "step", "sender", "recipient", "seq", "index", "total", "total_size", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: str
    sender: str
    recipient: str
    seq: int
    index: int
    total: int
    total_size: int
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[str] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., seq: _Optional[int] = ..., index: _Optional[int] = ..., total: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("job_id", "step", "sender", "seq", "wait_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: str
    sender: str
    seq: int
    wait_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[str] = ..., sender: _Optional[str] = ..., seq: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...
