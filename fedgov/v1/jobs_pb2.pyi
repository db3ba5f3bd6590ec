from fedgov.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitJobRequest(_message.Message):
    __slots__ = ("manifest_toml", "signature")
    MANIFEST_TOML_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest_toml: str
    signature: bytes
    def __init__(self, manifest_toml: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ParticipantStatus(_message.Message):
    __slots__ = ("node", "decision", "reason", "task_state", "approvers")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TASK_STATE_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    node: str
    decision: str
    reason: str
    task_state: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., task_state: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "kind", "purpose", "requester", "state", "reason", "participants", "created_at", "updated_at", "manifest_toml", "events")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_TOML_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    purpose: str
    requester: str
    state: str
    reason: str
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantStatus]
    created_at: float
    updated_at: float
    manifest_toml: str
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., purpose: _Optional[str] = ..., requester: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., participants: _Optional[_Iterable[_Union[ParticipantStatus, _Mapping]]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., manifest_toml: _Optional[str] = ..., events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("ts", "event", "node", "detail")
    TS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ts: float
    event: str
    node: str
    detail: str
    def __init__(self, ts: _Optional[float] = ..., event: _Optional[str] = ..., node: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("status", "result_json", "sealed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    result_json: str
    sealed: _containers.RepeatedCompositeFieldContainer[SealedResult]
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ..., result_json: _Optional[str] = ..., sealed: _Optional[_Iterable[_Union[SealedResult, _Mapping]]] = ...) -> None: ...

class SealedResult(_message.Message):
    __slots__ = ("node", "envelope", "key_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    node: str
    envelope: bytes
    key_id: str
    def __init__(self, node: _Optional[str] = ..., envelope: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class PollTasksRequest(_message.Message):
    __slots__ = ("wait_seconds",)
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    def __init__(self, wait_seconds: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("job_id", "action", "manifest_toml", "manifest_signature", "requester_cert_pem", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_TOML_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    action: str
    manifest_toml: str
    manifest_signature: bytes
    requester_cert_pem: bytes
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., action: _Optional[str] = ..., manifest_toml: _Optional[str] = ..., manifest_signature: _Optional[bytes] = ..., requester_cert_pem: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class PollTasksReply(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class TaskDecision(_message.Message):
    __slots__ = ("job_id", "approve", "reason", "approvers", "fact")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    FACT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    approve: bool
    reason: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    fact: bytes
    def __init__(self, job_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., fact: _Optional[bytes] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("job_id", "ok", "result_json", "error", "public_json", "sealed_result", "facts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_JSON_FIELD_NUMBER: _ClassVar[int]
    SEALED_RESULT_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    ok: bool
    result_json: str
    error: str
    public_json: str
    sealed_result: bytes
    facts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, job_id: _Optional[str] = ..., ok: _Optional[bool] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., public_json: _Optional[str] = ..., sealed_result: _Optional[bytes] = ..., facts: _Optional[_Iterable[bytes]] = ...) -> None: ...
