from protos.meridian.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "agent_address")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    version: str
    agent_address: str
    def __init__(self, version: _Optional[str] = ..., agent_address: _Optional[str] = ...) -> None: ...

class HasBundleRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class HasBundleResponse(_message.Message):
    __slots__ = ("present", "max_size")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    present: bool
    max_size: int
    def __init__(self, present: _Optional[bool] = ..., max_size: _Optional[int] = ...) -> None: ...

class UploadBundleResponse(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("flow_name", "entrypoint", "parameters_json", "bundle_sha256", "trigger", "parent_run_id", "parent_key", "runner_target", "concurrency")
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    RUNNER_TARGET_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    flow_name: str
    entrypoint: str
    parameters_json: str
    bundle_sha256: str
    trigger: str
    parent_run_id: str
    parent_key: str
    runner_target: str
    concurrency: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, flow_name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., parameters_json: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., trigger: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., parent_key: _Optional[str] = ..., runner_target: _Optional[str] = ..., concurrency: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("flow_run_id", "runner_token")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    runner_token: str
    def __init__(self, flow_run_id: _Optional[str] = ..., runner_token: _Optional[str] = ...) -> None: ...

class StepSubmission(_message.Message):
    __slots__ = ("key", "spec", "inputs_json", "cache_key", "cache_expires_after_s", "input_refs_json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_EXPIRES_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    INPUT_REFS_JSON_FIELD_NUMBER: _ClassVar[int]
    key: str
    spec: _common_pb2.StepSpec
    inputs_json: str
    cache_key: str
    cache_expires_after_s: float
    input_refs_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.StepSpec, _Mapping]] = ..., inputs_json: _Optional[str] = ..., cache_key: _Optional[str] = ..., cache_expires_after_s: _Optional[float] = ..., input_refs_json: _Optional[_Iterable[str]] = ...) -> None: ...

class InputRefs(_message.Message):
    __slots__ = ("ref_json",)
    REF_JSON_FIELD_NUMBER: _ClassVar[int]
    ref_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref_json: _Optional[_Iterable[str]] = ...) -> None: ...

class StepBatch(_message.Message):
    __slots__ = ("spec", "keys", "inputs_json", "cache_keys", "cache_expires_after_s", "input_refs")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    CACHE_EXPIRES_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    INPUT_REFS_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.StepSpec
    keys: _containers.RepeatedScalarFieldContainer[str]
    inputs_json: _containers.RepeatedScalarFieldContainer[str]
    cache_keys: _containers.RepeatedScalarFieldContainer[str]
    cache_expires_after_s: float
    input_refs: _containers.RepeatedCompositeFieldContainer[InputRefs]
    def __init__(self, spec: _Optional[_Union[_common_pb2.StepSpec, _Mapping]] = ..., keys: _Optional[_Iterable[str]] = ..., inputs_json: _Optional[_Iterable[str]] = ..., cache_keys: _Optional[_Iterable[str]] = ..., cache_expires_after_s: _Optional[float] = ..., input_refs: _Optional[_Iterable[_Union[InputRefs, _Mapping]]] = ...) -> None: ...

class SubmitStepsRequest(_message.Message):
    __slots__ = ("flow_run_id", "steps", "batches")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    steps: _containers.RepeatedCompositeFieldContainer[StepSubmission]
    batches: _containers.RepeatedCompositeFieldContainer[StepBatch]
    def __init__(self, flow_run_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepSubmission, _Mapping]]] = ..., batches: _Optional[_Iterable[_Union[StepBatch, _Mapping]]] = ...) -> None: ...

class SubmittedStep(_message.Message):
    __slots__ = ("key", "step_run_id", "state", "existing", "outcome", "outcome_omitted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STEP_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_OMITTED_FIELD_NUMBER: _ClassVar[int]
    key: str
    step_run_id: str
    state: str
    existing: bool
    outcome: StepOutcome
    outcome_omitted: bool
    def __init__(self, key: _Optional[str] = ..., step_run_id: _Optional[str] = ..., state: _Optional[str] = ..., existing: _Optional[bool] = ..., outcome: _Optional[_Union[StepOutcome, _Mapping]] = ..., outcome_omitted: _Optional[bool] = ...) -> None: ...

class StepBatchAnswer(_message.Message):
    __slots__ = ("step_run_ids", "existing")
    STEP_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    step_run_ids: _containers.RepeatedScalarFieldContainer[str]
    existing: _containers.RepeatedCompositeFieldContainer[SubmittedStep]
    def __init__(self, step_run_ids: _Optional[_Iterable[str]] = ..., existing: _Optional[_Iterable[_Union[SubmittedStep, _Mapping]]] = ...) -> None: ...

class SubmitStepsResponse(_message.Message):
    __slots__ = ("steps", "batches")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[SubmittedStep]
    batches: _containers.RepeatedCompositeFieldContainer[StepBatchAnswer]
    def __init__(self, steps: _Optional[_Iterable[_Union[SubmittedStep, _Mapping]]] = ..., batches: _Optional[_Iterable[_Union[StepBatchAnswer, _Mapping]]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "after_event_id", "batched")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    after_event_id: int
    batched: bool
    def __init__(self, flow_run_id: _Optional[str] = ..., after_event_id: _Optional[int] = ..., batched: _Optional[bool] = ...) -> None: ...

class RunUpdate(_message.Message):
    __slots__ = ("event_id", "at_unix_ms", "kind", "step_key", "step_run_id", "attempt_id", "message", "state", "step_outcome", "run_state", "approval", "environment", "batch")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    STEP_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    at_unix_ms: int
    kind: str
    step_key: str
    step_run_id: str
    attempt_id: str
    message: str
    state: str
    step_outcome: StepOutcome
    run_state: str
    approval: ApprovalInfo
    environment: str
    batch: _containers.RepeatedCompositeFieldContainer[RunUpdate]
    def __init__(self, event_id: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., step_key: _Optional[str] = ..., step_run_id: _Optional[str] = ..., attempt_id: _Optional[str] = ..., message: _Optional[str] = ..., state: _Optional[str] = ..., step_outcome: _Optional[_Union[StepOutcome, _Mapping]] = ..., run_state: _Optional[str] = ..., approval: _Optional[_Union[ApprovalInfo, _Mapping]] = ..., environment: _Optional[str] = ..., batch: _Optional[_Iterable[_Union[RunUpdate, _Mapping]]] = ...) -> None: ...

class StepOutcome(_message.Message):
    __slots__ = ("step_run_id", "key", "state", "result_json", "error", "result_ref_json")
    STEP_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_REF_JSON_FIELD_NUMBER: _ClassVar[int]
    step_run_id: str
    key: str
    state: str
    result_json: str
    error: _common_pb2.ErrorInfo
    result_ref_json: str
    def __init__(self, step_run_id: _Optional[str] = ..., key: _Optional[str] = ..., state: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., result_ref_json: _Optional[str] = ...) -> None: ...

class FinishRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "succeeded", "result_json", "error")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    succeeded: bool
    result_json: str
    error: _common_pb2.ErrorInfo
    def __init__(self, flow_run_id: _Optional[str] = ..., succeeded: _Optional[bool] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ...) -> None: ...

class FinishRunResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class RenewRunnerLeaseRequest(_message.Message):
    __slots__ = ("flow_run_id", "lease_s")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    lease_s: float
    def __init__(self, flow_run_id: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RenewRunnerLeaseResponse(_message.Message):
    __slots__ = ("state", "expires_at_unix_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    state: str
    expires_at_unix_ms: int
    def __init__(self, state: _Optional[str] = ..., expires_at_unix_ms: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "reason")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    reason: str
    def __init__(self, flow_run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("flow_run_id", "state", "attempts_to_confirm")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_TO_CONFIRM_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    state: str
    attempts_to_confirm: int
    def __init__(self, flow_run_id: _Optional[str] = ..., state: _Optional[str] = ..., attempts_to_confirm: _Optional[int] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "here")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HERE_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    here: bool
    def __init__(self, flow_run_id: _Optional[str] = ..., here: _Optional[bool] = ...) -> None: ...

class RetryRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "here")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HERE_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    here: bool
    def __init__(self, flow_run_id: _Optional[str] = ..., here: _Optional[bool] = ...) -> None: ...

class RunToExecute(_message.Message):
    __slots__ = ("flow_run_id", "flow_name", "entrypoint", "parameters_json", "bundle_sha256", "state", "watch_after_event_id", "runner_token", "runner_epoch", "hosted")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WATCH_AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUNNER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    HOSTED_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    flow_name: str
    entrypoint: str
    parameters_json: str
    bundle_sha256: str
    state: str
    watch_after_event_id: int
    runner_token: str
    runner_epoch: int
    hosted: bool
    def __init__(self, flow_run_id: _Optional[str] = ..., flow_name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., parameters_json: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., state: _Optional[str] = ..., watch_after_event_id: _Optional[int] = ..., runner_token: _Optional[str] = ..., runner_epoch: _Optional[int] = ..., hosted: _Optional[bool] = ...) -> None: ...

class RequestApprovalRequest(_message.Message):
    __slots__ = ("flow_run_id", "key", "message", "timeout_s")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    key: str
    message: str
    timeout_s: float
    def __init__(self, flow_run_id: _Optional[str] = ..., key: _Optional[str] = ..., message: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("flow_run_id", "key", "approve", "reason")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    key: str
    approve: bool
    reason: str
    def __init__(self, flow_run_id: _Optional[str] = ..., key: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ApprovalInfo(_message.Message):
    __slots__ = ("flow_run_id", "key", "message", "state", "requested_at_unix_ms", "decided_at_unix_ms", "decided_by", "reason", "deadline_unix_ms")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    key: str
    message: str
    state: str
    requested_at_unix_ms: int
    decided_at_unix_ms: int
    decided_by: str
    reason: str
    deadline_unix_ms: int
    def __init__(self, flow_run_id: _Optional[str] = ..., key: _Optional[str] = ..., message: _Optional[str] = ..., state: _Optional[str] = ..., requested_at_unix_ms: _Optional[int] = ..., decided_at_unix_ms: _Optional[int] = ..., decided_by: _Optional[str] = ..., reason: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ...) -> None: ...

class ApprovalState(_message.Message):
    __slots__ = ("approval", "run_state")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    approval: ApprovalInfo
    run_state: str
    def __init__(self, approval: _Optional[_Union[ApprovalInfo, _Mapping]] = ..., run_state: _Optional[str] = ...) -> None: ...

class DownloadBundleRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("flow_run_id",)
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    def __init__(self, flow_run_id: _Optional[str] = ...) -> None: ...

class AttemptDetail(_message.Message):
    __slots__ = ("attempt_id", "number", "state", "environment", "agent_id", "agent_name", "provider", "resource_id", "fencing_token", "queued_at_unix_ms", "started_at_unix_ms", "ended_at_unix_ms", "error", "exit_code", "recovered")
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    attempt_id: str
    number: int
    state: str
    environment: str
    agent_id: str
    agent_name: str
    provider: str
    resource_id: str
    fencing_token: int
    queued_at_unix_ms: int
    started_at_unix_ms: int
    ended_at_unix_ms: int
    error: _common_pb2.ErrorInfo
    exit_code: int
    recovered: bool
    def __init__(self, attempt_id: _Optional[str] = ..., number: _Optional[int] = ..., state: _Optional[str] = ..., environment: _Optional[str] = ..., agent_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., provider: _Optional[str] = ..., resource_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., queued_at_unix_ms: _Optional[int] = ..., started_at_unix_ms: _Optional[int] = ..., ended_at_unix_ms: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., exit_code: _Optional[int] = ..., recovered: _Optional[bool] = ...) -> None: ...

class StepRunDetail(_message.Message):
    __slots__ = ("step_run_id", "key", "name", "state", "target", "provider", "inputs_digest", "result_json", "error", "created_at_unix_ms", "ended_at_unix_ms", "attempts", "reused_from_run_id", "reused_from_step_key", "result_ref_json")
    STEP_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REUSED_FROM_STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    RESULT_REF_JSON_FIELD_NUMBER: _ClassVar[int]
    step_run_id: str
    key: str
    name: str
    state: str
    target: str
    provider: str
    inputs_digest: str
    result_json: str
    error: _common_pb2.ErrorInfo
    created_at_unix_ms: int
    ended_at_unix_ms: int
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptDetail]
    reused_from_run_id: str
    reused_from_step_key: str
    result_ref_json: str
    def __init__(self, step_run_id: _Optional[str] = ..., key: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., target: _Optional[str] = ..., provider: _Optional[str] = ..., inputs_digest: _Optional[str] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., created_at_unix_ms: _Optional[int] = ..., ended_at_unix_ms: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[AttemptDetail, _Mapping]]] = ..., reused_from_run_id: _Optional[str] = ..., reused_from_step_key: _Optional[str] = ..., result_ref_json: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_id", "at_unix_ms", "kind", "step_key", "attempt_id", "from_state", "to_state", "message")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    at_unix_ms: int
    kind: str
    step_key: str
    attempt_id: str
    from_state: str
    to_state: str
    message: str
    def __init__(self, event_id: _Optional[int] = ..., at_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., step_key: _Optional[str] = ..., attempt_id: _Optional[str] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RunDetail(_message.Message):
    __slots__ = ("flow_run_id", "flow_name", "entrypoint", "trigger", "parameters_json", "bundle_sha256", "state", "created_at_unix_ms", "started_at_unix_ms", "ended_at_unix_ms", "result_json", "error", "steps", "events", "retry_of", "resumed_at_unix_ms", "approvals", "transfers", "deployment", "deployment_version", "trigger_detail_json", "parent_run_id", "parent_key", "children", "runner_agent_id", "runner_resumes", "waiting_for")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    RESUMED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    RUNNER_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_RESUMES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    flow_name: str
    entrypoint: str
    trigger: str
    parameters_json: str
    bundle_sha256: str
    state: str
    created_at_unix_ms: int
    started_at_unix_ms: int
    ended_at_unix_ms: int
    result_json: str
    error: _common_pb2.ErrorInfo
    steps: _containers.RepeatedCompositeFieldContainer[StepRunDetail]
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    retry_of: str
    resumed_at_unix_ms: int
    approvals: _containers.RepeatedCompositeFieldContainer[ApprovalInfo]
    transfers: _containers.RepeatedCompositeFieldContainer[TransferInfo]
    deployment: str
    deployment_version: int
    trigger_detail_json: str
    parent_run_id: str
    parent_key: str
    children: _containers.RepeatedCompositeFieldContainer[RunSummary]
    runner_agent_id: str
    runner_resumes: int
    waiting_for: str
    def __init__(self, flow_run_id: _Optional[str] = ..., flow_name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., trigger: _Optional[str] = ..., parameters_json: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., state: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., started_at_unix_ms: _Optional[int] = ..., ended_at_unix_ms: _Optional[int] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.ErrorInfo, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[StepRunDetail, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., retry_of: _Optional[str] = ..., resumed_at_unix_ms: _Optional[int] = ..., approvals: _Optional[_Iterable[_Union[ApprovalInfo, _Mapping]]] = ..., transfers: _Optional[_Iterable[_Union[TransferInfo, _Mapping]]] = ..., deployment: _Optional[str] = ..., deployment_version: _Optional[int] = ..., trigger_detail_json: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., parent_key: _Optional[str] = ..., children: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ..., runner_agent_id: _Optional[str] = ..., runner_resumes: _Optional[int] = ..., waiting_for: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit", "state", "flow_name")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    limit: int
    state: str
    flow_name: str
    def __init__(self, limit: _Optional[int] = ..., state: _Optional[str] = ..., flow_name: _Optional[str] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("flow_run_id", "flow_name", "state", "created_at_unix_ms", "ended_at_unix_ms", "steps_total", "steps_failed", "deployment", "deployment_version", "trigger", "parent_run_id")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FAILED_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    flow_name: str
    state: str
    created_at_unix_ms: int
    ended_at_unix_ms: int
    steps_total: int
    steps_failed: int
    deployment: str
    deployment_version: int
    trigger: str
    parent_run_id: str
    def __init__(self, flow_run_id: _Optional[str] = ..., flow_name: _Optional[str] = ..., state: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., ended_at_unix_ms: _Optional[int] = ..., steps_total: _Optional[int] = ..., steps_failed: _Optional[int] = ..., deployment: _Optional[str] = ..., deployment_version: _Optional[int] = ..., trigger: _Optional[str] = ..., parent_run_id: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class GetLogsRequest(_message.Message):
    __slots__ = ("flow_run_id", "step_key", "after_id", "limit")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    step_key: str
    after_id: int
    limit: int
    def __init__(self, flow_run_id: _Optional[str] = ..., step_key: _Optional[str] = ..., after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class StepLogLine(_message.Message):
    __slots__ = ("id", "step_key", "attempt_number", "line")
    ID_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    id: int
    step_key: str
    attempt_number: int
    line: _common_pb2.LogLine
    def __init__(self, id: _Optional[int] = ..., step_key: _Optional[str] = ..., attempt_number: _Optional[int] = ..., line: _Optional[_Union[_common_pb2.LogLine, _Mapping]] = ...) -> None: ...

class GetLogsResponse(_message.Message):
    __slots__ = ("lines", "next_after_id")
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[StepLogLine]
    next_after_id: int
    def __init__(self, lines: _Optional[_Iterable[_Union[StepLogLine, _Mapping]]] = ..., next_after_id: _Optional[int] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "name", "environment", "labels", "providers", "capacity", "in_use", "version", "last_heartbeat_unix_ms", "status", "hostname", "cert_fingerprint", "cert_not_after_unix_ms", "degraded", "loop_stall_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    LOOP_STALL_MS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    environment: str
    labels: _containers.ScalarMap[str, str]
    providers: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    in_use: int
    version: str
    last_heartbeat_unix_ms: int
    status: str
    hostname: str
    cert_fingerprint: str
    cert_not_after_unix_ms: int
    degraded: str
    loop_stall_ms: int
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., environment: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., providers: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., in_use: _Optional[int] = ..., version: _Optional[str] = ..., last_heartbeat_unix_ms: _Optional[int] = ..., status: _Optional[str] = ..., hostname: _Optional[str] = ..., cert_fingerprint: _Optional[str] = ..., cert_not_after_unix_ms: _Optional[int] = ..., degraded: _Optional[str] = ..., loop_stall_ms: _Optional[int] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class ListAuditRecordsRequest(_message.Message):
    __slots__ = ("since_unix_ms", "limit", "after_id", "newest")
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    since_unix_ms: int
    limit: int
    after_id: int
    newest: bool
    def __init__(self, since_unix_ms: _Optional[int] = ..., limit: _Optional[int] = ..., after_id: _Optional[int] = ..., newest: _Optional[bool] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "at_unix_us", "actor", "action", "subject", "details_json", "prev_hash", "hash")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    id: int
    at_unix_us: int
    actor: str
    action: str
    subject: str
    details_json: str
    prev_hash: str
    hash: str
    def __init__(self, id: _Optional[int] = ..., at_unix_us: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., subject: _Optional[str] = ..., details_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditRecordsResponse(_message.Message):
    __slots__ = ("records", "next_after_id")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_after_id: int
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_after_id: _Optional[int] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("ok", "records", "head_id", "head_hash", "first_bad_id", "problem")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    head_id: int
    head_hash: str
    first_bad_id: int
    problem: str
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., head_id: _Optional[int] = ..., head_hash: _Optional[str] = ..., first_bad_id: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class AgentRequest(_message.Message):
    __slots__ = ("agent", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    reason: str
    def __init__(self, agent: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FetchRunResultRequest(_message.Message):
    __slots__ = ("flow_run_id", "step_key", "offset")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    step_key: str
    offset: int
    def __init__(self, flow_run_id: _Optional[str] = ..., step_key: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class TransferInfo(_message.Message):
    __slots__ = ("transfer_id", "flow_run_id", "step_key", "attempt_id", "from_environment", "to_environment", "store", "bytes", "sha256", "state", "error", "started_at_unix_ms", "ended_at_unix_ms", "producer_run_id", "producer_step_key", "method")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    TO_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_STEP_KEY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    flow_run_id: str
    step_key: str
    attempt_id: str
    from_environment: str
    to_environment: str
    store: str
    bytes: int
    sha256: str
    state: str
    error: str
    started_at_unix_ms: int
    ended_at_unix_ms: int
    producer_run_id: str
    producer_step_key: str
    method: str
    def __init__(self, transfer_id: _Optional[str] = ..., flow_run_id: _Optional[str] = ..., step_key: _Optional[str] = ..., attempt_id: _Optional[str] = ..., from_environment: _Optional[str] = ..., to_environment: _Optional[str] = ..., store: _Optional[str] = ..., bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[str] = ..., error: _Optional[str] = ..., started_at_unix_ms: _Optional[int] = ..., ended_at_unix_ms: _Optional[int] = ..., producer_run_id: _Optional[str] = ..., producer_step_key: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class TransferTotal(_message.Message):
    __slots__ = ("from_environment", "to_environment", "bytes", "transfers")
    FROM_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    TO_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    from_environment: str
    to_environment: str
    bytes: int
    transfers: int
    def __init__(self, from_environment: _Optional[str] = ..., to_environment: _Optional[str] = ..., bytes: _Optional[int] = ..., transfers: _Optional[int] = ...) -> None: ...

class ListTransfersRequest(_message.Message):
    __slots__ = ("since_unix_ms", "flow_run_id", "limit")
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_unix_ms: int
    flow_run_id: str
    limit: int
    def __init__(self, since_unix_ms: _Optional[int] = ..., flow_run_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTransfersResponse(_message.Message):
    __slots__ = ("transfers", "totals")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[TransferInfo]
    totals: _containers.RepeatedCompositeFieldContainer[TransferTotal]
    def __init__(self, transfers: _Optional[_Iterable[_Union[TransferInfo, _Mapping]]] = ..., totals: _Optional[_Iterable[_Union[TransferTotal, _Mapping]]] = ...) -> None: ...

class EnvironmentInfo(_message.Message):
    __slots__ = ("name", "residency", "agents", "connected", "result_stores", "default_result_store", "residency_pinned_labels_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_STORES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RESULT_STORE_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_PINNED_LABELS_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    residency: str
    agents: int
    connected: int
    result_stores: _containers.RepeatedScalarFieldContainer[str]
    default_result_store: str
    residency_pinned_labels_only: bool
    def __init__(self, name: _Optional[str] = ..., residency: _Optional[str] = ..., agents: _Optional[int] = ..., connected: _Optional[int] = ..., result_stores: _Optional[_Iterable[str]] = ..., default_result_store: _Optional[str] = ..., residency_pinned_labels_only: _Optional[bool] = ...) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments",)
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[EnvironmentInfo]
    def __init__(self, environments: _Optional[_Iterable[_Union[EnvironmentInfo, _Mapping]]] = ...) -> None: ...

class SetResidencyRequest(_message.Message):
    __slots__ = ("environment", "rule", "reason", "pinned_labels_only")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PINNED_LABELS_ONLY_FIELD_NUMBER: _ClassVar[int]
    environment: str
    rule: str
    reason: str
    pinned_labels_only: bool
    def __init__(self, environment: _Optional[str] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., pinned_labels_only: _Optional[bool] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("flow_run_id", "reason")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    reason: str
    def __init__(self, flow_run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ("flow_run_id", "stored_objects")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    stored_objects: int
    def __init__(self, flow_run_id: _Optional[str] = ..., stored_objects: _Optional[int] = ...) -> None: ...

class CollectResultsRequest(_message.Message):
    __slots__ = ("dry_run", "environment", "older_than_s")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_S_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    environment: str
    older_than_s: float
    def __init__(self, dry_run: _Optional[bool] = ..., environment: _Optional[str] = ..., older_than_s: _Optional[float] = ...) -> None: ...

class StoreSweep(_message.Message):
    __slots__ = ("environment", "store", "objects", "orphans", "orphan_bytes", "deleted", "errors")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_BYTES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    environment: str
    store: str
    objects: int
    orphans: int
    orphan_bytes: int
    deleted: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, environment: _Optional[str] = ..., store: _Optional[str] = ..., objects: _Optional[int] = ..., orphans: _Optional[int] = ..., orphan_bytes: _Optional[int] = ..., deleted: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectResultsResponse(_message.Message):
    __slots__ = ("sweeps", "skipped")
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[StoreSweep]
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sweeps: _Optional[_Iterable[_Union[StoreSweep, _Mapping]]] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("schedule_id", "definition_json", "parameters_json", "catch_up", "catch_up_window_s", "max_catch_up_runs", "jitter_s", "paused", "description", "next_fire_unix_ms")
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CATCH_UP_RUNS_FIELD_NUMBER: _ClassVar[int]
    JITTER_S_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    schedule_id: str
    definition_json: str
    parameters_json: str
    catch_up: str
    catch_up_window_s: float
    max_catch_up_runs: int
    jitter_s: float
    paused: bool
    description: str
    next_fire_unix_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, schedule_id: _Optional[str] = ..., definition_json: _Optional[str] = ..., parameters_json: _Optional[str] = ..., catch_up: _Optional[str] = ..., catch_up_window_s: _Optional[float] = ..., max_catch_up_runs: _Optional[int] = ..., jitter_s: _Optional[float] = ..., paused: _Optional[bool] = ..., description: _Optional[str] = ..., next_fire_unix_ms: _Optional[_Iterable[int]] = ...) -> None: ...

class OutcomeTrigger(_message.Message):
    __slots__ = ("upstream_deployment", "states", "run_id_parameter", "result_parameter")
    UPSTREAM_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    RESULT_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    upstream_deployment: str
    states: _containers.RepeatedScalarFieldContainer[str]
    run_id_parameter: str
    result_parameter: str
    def __init__(self, upstream_deployment: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., run_id_parameter: _Optional[str] = ..., result_parameter: _Optional[str] = ...) -> None: ...

class DeploymentSpec(_message.Message):
    __slots__ = ("name", "flow_name", "entrypoint", "bundle_sha256", "description", "tags", "runner_target", "parameters_json", "parameter_schema_json", "schedules", "concurrency", "concurrency_overflow", "on_runner_lost", "max_runner_resumes", "triggers", "flow_concurrency")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RUNNER_TARGET_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    ON_RUNNER_LOST_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNER_RESUMES_FIELD_NUMBER: _ClassVar[int]
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    FLOW_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    flow_name: str
    entrypoint: str
    bundle_sha256: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    runner_target: str
    parameters_json: str
    parameter_schema_json: str
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleSpec]
    concurrency: int
    concurrency_overflow: str
    on_runner_lost: str
    max_runner_resumes: int
    triggers: _containers.RepeatedCompositeFieldContainer[OutcomeTrigger]
    flow_concurrency: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., flow_name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., bundle_sha256: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., runner_target: _Optional[str] = ..., parameters_json: _Optional[str] = ..., parameter_schema_json: _Optional[str] = ..., schedules: _Optional[_Iterable[_Union[ScheduleSpec, _Mapping]]] = ..., concurrency: _Optional[int] = ..., concurrency_overflow: _Optional[str] = ..., on_runner_lost: _Optional[str] = ..., max_runner_resumes: _Optional[int] = ..., triggers: _Optional[_Iterable[_Union[OutcomeTrigger, _Mapping]]] = ..., flow_concurrency: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: DeploymentSpec
    def __init__(self, spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ...) -> None: ...

class DeploymentInfo(_message.Message):
    __slots__ = ("deployment_id", "spec", "version", "paused", "created_at_unix_ms", "created_by", "active_runs", "queued_runs", "recent_runs")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_RUNS_FIELD_NUMBER: _ClassVar[int]
    RECENT_RUNS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    spec: DeploymentSpec
    version: int
    paused: bool
    created_at_unix_ms: int
    created_by: str
    active_runs: int
    queued_runs: int
    recent_runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, deployment_id: _Optional[str] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., version: _Optional[int] = ..., paused: _Optional[bool] = ..., created_at_unix_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., active_runs: _Optional[int] = ..., queued_runs: _Optional[int] = ..., recent_runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentInfo]
    def __init__(self, deployments: _Optional[_Iterable[_Union[DeploymentInfo, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListDeploymentVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DeploymentInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[DeploymentInfo, _Mapping]]] = ...) -> None: ...

class SetDeploymentPausedRequest(_message.Message):
    __slots__ = ("name", "paused", "schedule_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    schedule_id: str
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ..., schedule_id: _Optional[str] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TriggerDeploymentRequest(_message.Message):
    __slots__ = ("name", "parameters_json", "idempotency_key", "parent_run_id", "parent_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters_json: str
    idempotency_key: str
    parent_run_id: str
    parent_key: str
    def __init__(self, name: _Optional[str] = ..., parameters_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., parent_key: _Optional[str] = ...) -> None: ...

class TriggerDeploymentResponse(_message.Message):
    __slots__ = ("flow_run_id", "existing", "state", "message")
    FLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    flow_run_id: str
    existing: bool
    state: str
    message: str
    def __init__(self, flow_run_id: _Optional[str] = ..., existing: _Optional[bool] = ..., state: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SetLimitRequest(_message.Message):
    __slots__ = ("name", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class LimitInfo(_message.Message):
    __slots__ = ("name", "limit", "holders", "waiting")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    holders: _containers.RepeatedScalarFieldContainer[str]
    waiting: int
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., holders: _Optional[_Iterable[str]] = ..., waiting: _Optional[int] = ...) -> None: ...

class ListLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLimitsResponse(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[LimitInfo]
    def __init__(self, limits: _Optional[_Iterable[_Union[LimitInfo, _Mapping]]] = ...) -> None: ...

class DeleteLimitRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateWebhookRequest(_message.Message):
    __slots__ = ("deployment", "name")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    name: str
    def __init__(self, deployment: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class CreateWebhookResponse(_message.Message):
    __slots__ = ("webhook_id", "token", "url_path")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    URL_PATH_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    token: str
    url_path: str
    def __init__(self, webhook_id: _Optional[str] = ..., token: _Optional[str] = ..., url_path: _Optional[str] = ...) -> None: ...

class WebhookInfo(_message.Message):
    __slots__ = ("webhook_id", "deployment", "name", "created_at_unix_ms", "created_by", "revoked_at_unix_ms")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    deployment: str
    name: str
    created_at_unix_ms: int
    created_by: str
    revoked_at_unix_ms: int
    def __init__(self, webhook_id: _Optional[str] = ..., deployment: _Optional[str] = ..., name: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., revoked_at_unix_ms: _Optional[int] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("webhooks",)
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    webhooks: _containers.RepeatedCompositeFieldContainer[WebhookInfo]
    def __init__(self, webhooks: _Optional[_Iterable[_Union[WebhookInfo, _Mapping]]] = ...) -> None: ...

class RevokeWebhookRequest(_message.Message):
    __slots__ = ("deployment", "webhook_id")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    webhook_id: str
    def __init__(self, deployment: _Optional[str] = ..., webhook_id: _Optional[str] = ...) -> None: ...
