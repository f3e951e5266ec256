from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorInfo(_message.Message):
    __slots__ = ("error_class", "type", "message", "traceback", "type_mro")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    TYPE_MRO_FIELD_NUMBER: _ClassVar[int]
    error_class: str
    type: str
    message: str
    traceback: str
    type_mro: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, error_class: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ..., type_mro: _Optional[_Iterable[str]] = ...) -> None: ...

class StepSpec(_message.Message):
    __slots__ = ("name", "module", "function", "target", "provider", "retries", "retry_delay_s", "retry_backoff", "retry_jitter", "timeout_s", "schedule_timeout_s", "retry_on", "options_json", "on_agent_lost", "lost_after_s", "secrets", "isolation", "result_store", "inline_threshold_bytes", "serializer", "concurrency")
    class SecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    RETRY_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    RETRY_JITTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    ON_AGENT_LOST_FIELD_NUMBER: _ClassVar[int]
    LOST_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    RESULT_STORE_FIELD_NUMBER: _ClassVar[int]
    INLINE_THRESHOLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERIALIZER_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    module: str
    function: str
    target: str
    provider: str
    retries: int
    retry_delay_s: float
    retry_backoff: float
    retry_jitter: float
    timeout_s: float
    schedule_timeout_s: float
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    options_json: str
    on_agent_lost: str
    lost_after_s: float
    secrets: _containers.ScalarMap[str, str]
    isolation: str
    result_store: str
    inline_threshold_bytes: int
    serializer: str
    concurrency: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., module: _Optional[str] = ..., function: _Optional[str] = ..., target: _Optional[str] = ..., provider: _Optional[str] = ..., retries: _Optional[int] = ..., retry_delay_s: _Optional[float] = ..., retry_backoff: _Optional[float] = ..., retry_jitter: _Optional[float] = ..., timeout_s: _Optional[float] = ..., schedule_timeout_s: _Optional[float] = ..., retry_on: _Optional[_Iterable[str]] = ..., options_json: _Optional[str] = ..., on_agent_lost: _Optional[str] = ..., lost_after_s: _Optional[float] = ..., secrets: _Optional[_Mapping[str, str]] = ..., isolation: _Optional[str] = ..., result_store: _Optional[str] = ..., inline_threshold_bytes: _Optional[int] = ..., serializer: _Optional[str] = ..., concurrency: _Optional[_Iterable[str]] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("transfer_id", "offset", "data", "total_size", "sha256", "error", "presigned_url", "presigned_url_ttl_s")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_TTL_S_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    offset: int
    data: bytes
    total_size: int
    sha256: str
    error: str
    presigned_url: str
    presigned_url_ttl_s: int
    def __init__(self, transfer_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., error: _Optional[str] = ..., presigned_url: _Optional[str] = ..., presigned_url_ttl_s: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("at_unix_ms", "stream", "text")
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    stream: str
    text: str
    def __init__(self, at_unix_ms: _Optional[int] = ..., stream: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("sha256", "total_size", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_size: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
