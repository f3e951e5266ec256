from protos.meridian.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_SUCCEEDED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_TIMED_OUT: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_CANCELLED: _ClassVar[AttemptOutcome]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ACCEPT: _ClassVar[Verdict]
    VERDICT_REJECT: _ClassVar[Verdict]
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_SUCCEEDED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_TIMED_OUT: AttemptOutcome
ATTEMPT_OUTCOME_CANCELLED: AttemptOutcome
VERDICT_UNSPECIFIED: Verdict
VERDICT_ACCEPT: Verdict
VERDICT_REJECT: Verdict

class FetchResultRequest(_message.Message):
    __slots__ = ("attempt_id", "fencing_token", "ref_json", "offset", "accept_presigned_url")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REF_JSON_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_PRESIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    fencing_token: int
    ref_json: str
    offset: int
    accept_presigned_url: bool
    def __init__(self, attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., ref_json: _Optional[str] = ..., offset: _Optional[int] = ..., accept_presigned_url: _Optional[bool] = ...) -> None: ...

class PushResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "csr_pem", "name")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_pem: bytes
    name: str
    def __init__(self, join_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "environment", "certificate_pem", "ca_certificate_pem", "agent_address")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    environment: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    agent_address: str
    def __init__(self, agent_id: _Optional[str] = ..., environment: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., agent_address: _Optional[str] = ...) -> None: ...

class FetchBundleRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class AgentFrame(_message.Message):
    __slots__ = ("hello", "heartbeat", "reports", "renew_certificate", "result_listing", "results_deleted", "runner_exited")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    RENEW_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_LISTING_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EXITED_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    reports: ReportBatch
    renew_certificate: RenewCertificate
    result_listing: ResultListing
    results_deleted: ResultsDeleted
    runner_exited: RunnerExited
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reports: _Optional[_Union[ReportBatch, _Mapping]] = ..., renew_certificate: _Optional[_Union[RenewCertificate, _Mapping]] = ..., result_listing: _Optional[_Union[ResultListing, _Mapping]] = ..., results_deleted: _Optional[_Union[ResultsDeleted, _Mapping]] = ..., runner_exited: _Optional[_Union[RunnerExited, _Mapping]] = ...) -> None: ...

class RunnerExited(_message.Message):
    __slots__ = ("flow_run_id", "runner_epoch", "exit_code", "message")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    runner_epoch: int
    exit_code: int
    message: str
    def __init__(self, flow_run_id: _Optional[str] = ..., runner_epoch: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StoredObject(_message.Message):
    __slots__ = ("store", "uri", "size", "modified_unix_ms")
    STORE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    store: str
    uri: str
    size: int
    modified_unix_ms: int
    def __init__(self, store: _Optional[str] = ..., uri: _Optional[str] = ..., size: _Optional[int] = ..., modified_unix_ms: _Optional[int] = ...) -> None: ...

class ResultListing(_message.Message):
    __slots__ = ("sweep_id", "objects", "done", "error")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    objects: _containers.RepeatedCompositeFieldContainer[StoredObject]
    done: bool
    error: str
    def __init__(self, sweep_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[StoredObject, _Mapping]]] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ResultsDeleted(_message.Message):
    __slots__ = ("request_id", "count", "bytes", "errors")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    count: int
    bytes: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewCertificate(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("type", "config_schema_json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    type: str
    config_schema_json: str
    def __init__(self, type: _Optional[str] = ..., config_schema_json: _Optional[str] = ...) -> None: ...

class HeldAttempt(_message.Message):
    __slots__ = ("attempt_id", "fencing_token")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    fencing_token: int
    def __init__(self, attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "labels", "providers", "capacity", "held_attempts", "hostname", "draining", "degraded", "result_stores", "default_result_store", "runner_slots", "held_runners")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HELD_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RESULT_STORES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RESULT_STORE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_SLOTS_FIELD_NUMBER: _ClassVar[int]
    HELD_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    labels: _containers.ScalarMap[str, str]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderInfo]
    capacity: int
    held_attempts: _containers.RepeatedCompositeFieldContainer[HeldAttempt]
    hostname: str
    draining: bool
    degraded: str
    result_stores: _containers.RepeatedScalarFieldContainer[str]
    default_result_store: str
    runner_slots: int
    held_runners: _containers.RepeatedCompositeFieldContainer[HeldRunner]
    def __init__(self, version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., providers: _Optional[_Iterable[_Union[ProviderInfo, _Mapping]]] = ..., capacity: _Optional[int] = ..., held_attempts: _Optional[_Iterable[_Union[HeldAttempt, _Mapping]]] = ..., hostname: _Optional[str] = ..., draining: _Optional[bool] = ..., degraded: _Optional[str] = ..., result_stores: _Optional[_Iterable[str]] = ..., default_result_store: _Optional[str] = ..., runner_slots: _Optional[int] = ..., held_runners: _Optional[_Iterable[_Union[HeldRunner, _Mapping]]] = ...) -> None: ...

class HeldRunner(_message.Message):
    __slots__ = ("flow_run_id", "runner_epoch")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    runner_epoch: int
    def __init__(self, flow_run_id: _Optional[str] = ..., runner_epoch: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("in_use", "held_attempts", "draining", "degraded", "held_runners", "loop_stall_ms")
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    HELD_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    HELD_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    LOOP_STALL_MS_FIELD_NUMBER: _ClassVar[int]
    in_use: int
    held_attempts: _containers.RepeatedCompositeFieldContainer[HeldAttempt]
    draining: bool
    degraded: str
    held_runners: _containers.RepeatedCompositeFieldContainer[HeldRunner]
    loop_stall_ms: int
    def __init__(self, in_use: _Optional[int] = ..., held_attempts: _Optional[_Iterable[_Union[HeldAttempt, _Mapping]]] = ..., draining: _Optional[bool] = ..., degraded: _Optional[str] = ..., held_runners: _Optional[_Iterable[_Union[HeldRunner, _Mapping]]] = ..., loop_stall_ms: _Optional[int] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[Report]
    def __init__(self, reports: _Optional[_Iterable[_Union[Report, _Mapping]]] = ...) -> None: ...

class ProposeRunning(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HandleRecorded(_message.Message):
    __slots__ = ("handle_json", "resource_id")
    HANDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    handle_json: str
    resource_id: str
    def __init__(self, handle_json: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[_common_pb2.LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[_common_pb2.LogLine, _Mapping]]] = ...) -> None: ...

class AttemptFinished(_message.Message):
    __slots__ = ("outcome", "result_json", "result_ref_json", "error", "exit_code")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_REF_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    outcome: AttemptOutcome
    result_json: str
    result_ref_json: str
    error: _common_pb2.ErrorInfo
    exit_code: int
    def __init__(self, outcome: _Optional[_Union[AttemptOutcome, str]] = ..., result_json: _Optional[str] = ..., result_ref_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., exit_code: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("seq", "attempt_id", "fencing_token", "at_unix_ms", "running", "handle", "logs", "finished")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    attempt_id: str
    fencing_token: int
    at_unix_ms: int
    running: ProposeRunning
    handle: HandleRecorded
    logs: LogChunk
    finished: AttemptFinished
    def __init__(self, seq: _Optional[int] = ..., attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., running: _Optional[_Union[ProposeRunning, _Mapping]] = ..., handle: _Optional[_Union[HandleRecorded, _Mapping]] = ..., logs: _Optional[_Union[LogChunk, _Mapping]] = ..., finished: _Optional[_Union[AttemptFinished, _Mapping]] = ...) -> None: ...

class ControlFrame(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "ack", "drain", "decisions", "certificate", "serve_result", "sweep_results", "delete_results", "assign_runner", "cancel_runner")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SERVE_RESULT_FIELD_NUMBER: _ClassVar[int]
    SWEEP_RESULTS_FIELD_NUMBER: _ClassVar[int]
    DELETE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_RUNNER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RUNNER_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: AssignBatch
    cancel: Cancel
    ack: Ack
    drain: Drain
    decisions: DecisionBatch
    certificate: CertificateRenewal
    serve_result: ServeResult
    sweep_results: SweepResults
    delete_results: DeleteResults
    assign_runner: AssignRunner
    cancel_runner: CancelRunner
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[AssignBatch, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., decisions: _Optional[_Union[DecisionBatch, _Mapping]] = ..., certificate: _Optional[_Union[CertificateRenewal, _Mapping]] = ..., serve_result: _Optional[_Union[ServeResult, _Mapping]] = ..., sweep_results: _Optional[_Union[SweepResults, _Mapping]] = ..., delete_results: _Optional[_Union[DeleteResults, _Mapping]] = ..., assign_runner: _Optional[_Union[AssignRunner, _Mapping]] = ..., cancel_runner: _Optional[_Union[CancelRunner, _Mapping]] = ...) -> None: ...

class AssignRunner(_message.Message):
    __slots__ = ("flow_run_id", "runner_epoch", "bundle_sha256", "entrypoint", "runner_token", "client_address", "ca_certificate_pem")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    RUNNER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    runner_epoch: int
    bundle_sha256: str
    entrypoint: str
    runner_token: str
    client_address: str
    ca_certificate_pem: bytes
    def __init__(self, flow_run_id: _Optional[str] = ..., runner_epoch: _Optional[int] = ..., bundle_sha256: _Optional[str] = ..., entrypoint: _Optional[str] = ..., runner_token: _Optional[str] = ..., client_address: _Optional[str] = ..., ca_certificate_pem: _Optional[bytes] = ...) -> None: ...

class CancelRunner(_message.Message):
    __slots__ = ("flow_run_id", "runner_epoch", "reason", "grace_s")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    runner_epoch: int
    reason: str
    grace_s: float
    def __init__(self, flow_run_id: _Optional[str] = ..., runner_epoch: _Optional[int] = ..., reason: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class ServeResult(_message.Message):
    __slots__ = ("transfer_id", "ref_json", "offset", "presigned_url_allowed")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REF_JSON_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    ref_json: str
    offset: int
    presigned_url_allowed: bool
    def __init__(self, transfer_id: _Optional[str] = ..., ref_json: _Optional[str] = ..., offset: _Optional[int] = ..., presigned_url_allowed: _Optional[bool] = ...) -> None: ...

class SweepResults(_message.Message):
    __slots__ = ("sweep_id", "older_than_s")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    older_than_s: float
    def __init__(self, sweep_id: _Optional[str] = ..., older_than_s: _Optional[float] = ...) -> None: ...

class DeleteResults(_message.Message):
    __slots__ = ("request_id", "objects")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    objects: _containers.RepeatedCompositeFieldContainer[StoredObject]
    def __init__(self, request_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[StoredObject, _Mapping]]] = ...) -> None: ...

class CertificateRenewal(_message.Message):
    __slots__ = ("certificate_pem", "renew_in_s", "refused", "retry_in_s")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    RENEW_IN_S_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_S_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    renew_in_s: float
    refused: str
    retry_in_s: float
    def __init__(self, certificate_pem: _Optional[bytes] = ..., renew_in_s: _Optional[float] = ..., refused: _Optional[str] = ..., retry_in_s: _Optional[float] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("agent_id", "environment", "session_id", "heartbeat_interval_s", "lease_timeout_s", "last_applied_seq", "max_frame_bytes", "certificate_renew_in_s", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_RENEW_IN_S_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    environment: str
    session_id: str
    heartbeat_interval_s: float
    lease_timeout_s: float
    last_applied_seq: int
    max_frame_bytes: int
    certificate_renew_in_s: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., environment: _Optional[str] = ..., session_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_timeout_s: _Optional[float] = ..., last_applied_seq: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., certificate_renew_in_s: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assign(_message.Message):
    __slots__ = ("attempt_id", "fencing_token", "flow_run_id", "step_run_id", "step_key", "attempt_number", "spec", "bundle_sha256", "inputs_json", "input_refs_json")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_REFS_JSON_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    fencing_token: int
    flow_run_id: str
    step_run_id: str
    step_key: str
    attempt_number: int
    spec: _common_pb2.StepSpec
    bundle_sha256: str
    inputs_json: str
    input_refs_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., flow_run_id: _Optional[str] = ..., step_run_id: _Optional[str] = ..., step_key: _Optional[str] = ..., attempt_number: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.StepSpec, _Mapping]] = ..., bundle_sha256: _Optional[str] = ..., inputs_json: _Optional[str] = ..., input_refs_json: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignBatch(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assign]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assign, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("attempt_id", "fencing_token", "reason", "grace_s")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    fencing_token: int
    reason: str
    grace_s: float
    def __init__(self, attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., reason: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("up_to_seq",)
    UP_TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    up_to_seq: int
    def __init__(self, up_to_seq: _Optional[int] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("attempt_id", "fencing_token", "verdict", "reason")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    fencing_token: int
    verdict: Verdict
    reason: str
    def __init__(self, attempt_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...
