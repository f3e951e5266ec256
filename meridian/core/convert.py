"""The one converter between the shared vocabulary and ``common.proto``.

The control plane's API layer, the agent and the SDK client each convert their own messages,
and call these for the values they share: times, errors and step specs. Sizes are bounded by
the validation at each edge, not here.
"""

from __future__ import annotations

import datetime as dt

from meridian.core.errorinfo import ErrorInfo
from meridian.core.spec import Isolation, OnAgentLost, StepSpec
from protos.meridian.v1 import common_pb2

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def ms_from_time(value: dt.datetime | None) -> int:
    """Aware datetime -> Unix milliseconds; None -> 0 (proto3's "unset").

    Integer arithmetic: ``timestamp() * 1000`` is a float product that lands just below the
    integer for some values, and truncating it loses a millisecond on the round trip.
    """
    return (value - _EPOCH) // _MILLISECOND if value else 0


def time_from_ms(value: int) -> dt.datetime | None:
    """Unix milliseconds -> aware UTC datetime; 0, negative or out of range -> None."""
    if value <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(value / 1000.0, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def error_to_proto(error: ErrorInfo | None) -> common_pb2.ErrorInfo:
    if error is None:
        return common_pb2.ErrorInfo()
    return common_pb2.ErrorInfo(
        error_class=error.error_class,
        type=error.type,
        message=error.message,
        traceback=error.traceback,
        type_mro=list(error.type_mro),
    )


def error_from_proto(msg: common_pb2.ErrorInfo) -> ErrorInfo | None:
    # Sub-message presence is not reliable across proto3 implementations: an all-empty
    # ErrorInfo means "no error".
    if not (msg.error_class or msg.type or msg.message or msg.traceback):
        return None
    return ErrorInfo(
        error_class=msg.error_class,
        type=msg.type,
        message=msg.message,
        traceback=msg.traceback,
        type_mro=tuple(msg.type_mro),
    )


def spec_to_proto(spec: StepSpec) -> common_pb2.StepSpec:
    return common_pb2.StepSpec(
        name=spec.name,
        module=spec.module,
        function=spec.function,
        target=spec.target,
        provider=spec.provider,
        retries=spec.retries,
        retry_delay_s=spec.retry_delay_s,
        retry_backoff=spec.retry_backoff,
        retry_jitter=spec.retry_jitter,
        timeout_s=spec.timeout_s,
        schedule_timeout_s=spec.schedule_timeout_s,
        retry_on=list(spec.retry_on),
        options_json=spec.options_json,
        on_agent_lost=str(spec.on_agent_lost),
        lost_after_s=spec.lost_after_s,
        secrets=dict(spec.secrets),
        isolation=str(spec.isolation),
        result_store=spec.result_store,
        inline_threshold_bytes=spec.inline_threshold_bytes,
        serializer=spec.serializer,
        concurrency=list(spec.concurrency),
    )


def spec_from_proto(msg: common_pb2.StepSpec) -> StepSpec:
    """The wire spec as sent: proto3 cannot tell 0 from unset, so the sender's values are
    taken as they are (the SDK always sends every field) and validated at the edge."""
    return StepSpec(
        name=msg.name,
        module=msg.module,
        function=msg.function,
        target=msg.target,
        provider=msg.provider,
        retries=msg.retries,
        retry_delay_s=msg.retry_delay_s,
        retry_backoff=msg.retry_backoff,
        retry_jitter=msg.retry_jitter,
        timeout_s=msg.timeout_s,
        schedule_timeout_s=msg.schedule_timeout_s,
        retry_on=tuple(msg.retry_on),
        options_json=msg.options_json,
        on_agent_lost=msg.on_agent_lost or OnAgentLost.RETRY,
        lost_after_s=msg.lost_after_s,
        secrets=tuple(sorted(msg.secrets.items())),
        isolation=msg.isolation or Isolation.WARM,  # "" from senders that predate the field
        result_store=msg.result_store,
        inline_threshold_bytes=msg.inline_threshold_bytes,
        serializer=msg.serializer,
        concurrency=tuple(msg.concurrency),
    )
