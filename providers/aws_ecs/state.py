"""The ``aws-ecs`` handle and how a STOPPED ECS task maps to an ``Outcome`` (pure functions).

Kept apart from the provider so the mapping can be read (and changed) without the API calls.
Cancellation and timeouts are recognised by the ``stoppedReason`` our StopTask set, which ECS
keeps with the task: a restarted agent reports them the same way.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import cancelled_detail, timeout_detail

PROVIDER_TYPE = "aws-ecs"
CANCEL_REASON = "meridian: cancelled"
TIMEOUT_REASON = "meridian: timed out"
OUR_REASONS = "meridian:"
_TAG_UNSAFE = re.compile(r"[^\w\s+\-=.:/@]")
_INFRA = "providers.base.ProviderError"


@dataclass(frozen=True)
class TaskDefInfo:
    """What a submit needs to know about a task definition's step container."""

    container: str
    log_group: str | None
    log_prefix: str | None
    log_region: str | None


@dataclass(frozen=True)
class EcsAttempt:
    """What an aws-ecs handle says, typed."""

    cluster: str
    task_arn: str
    container: str
    python_step: bool
    timeout_s: float | None
    started_at_ms: int
    log_group: str | None
    log_stream: str | None
    log_region: str | None

    @classmethod
    def of(cls, handle: Handle) -> EcsAttempt:
        if handle.provider != PROVIDER_TYPE or handle.version != 1:
            raise ProviderError(f"not an aws-ecs v1 handle: {handle.to_json()}")
        d = handle.data
        try:
            timeout = d.get("timeout_s")
            return cls(
                cluster=str(d["cluster"]),
                task_arn=handle.resource_id,
                container=str(d["container"]),
                python_step=bool(d["python_step"]),
                timeout_s=None if timeout is None else float(timeout),
                started_at_ms=int(d["started_at_ms"]),
                log_group=d.get("log_group"),
                log_stream=d.get("log_stream"),
                log_region=d.get("log_region"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed aws-ecs handle {handle.to_json()}: {exc}") from exc

    def overdue(self) -> bool:
        """Whether the attempt's timeout has passed (counted from submit, so restarts keep it)."""
        if self.timeout_s is None:
            return False
        return time.time() * 1000 - self.started_at_ms >= self.timeout_s * 1000


def infra(message: str, exit_code: int | None = None) -> Outcome:
    return Outcome("failed", exit_code, None, ErrorInfo("infrastructure", _INFRA, message))


def ecs_tag(key: str, value: str) -> dict[str, str]:
    # ECS tag values allow letters, digits, spaces and + - = . _ : / @ only (no '#').
    return {"key": key, "value": _TAG_UNSAFE.sub("_", value)[:256]}


def ended_by_us(attempt: EcsAttempt, reason: str, rc: int | None) -> Outcome | None:
    """The outcome of a task our own StopTask ended (cancel or timeout), else None."""
    if reason.startswith(TIMEOUT_REASON):
        limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
        message = f"step exceeded its timeout of {limit} s; ECS task stopped"
        detail = timeout_detail(message)
        return Outcome(state="timed_out", exit_code=rc, error=detail)
    if reason.startswith(CANCEL_REASON):
        detail = cancelled_detail()
        return Outcome(state="cancelled", exit_code=rc, error=detail)
    return None


def _container(attempt: EcsAttempt, task: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = task.get("containers") or []
    return next((c for c in containers if c.get("name") == attempt.container), {})


def _exit_code(attempt: EcsAttempt, task: Mapping[str, Any]) -> int | None:
    raw = _container(attempt, task).get("exitCode")
    return None if raw is None else int(raw)


def _why(attempt: EcsAttempt, task: Mapping[str, Any]) -> str:
    reason = task.get("stoppedReason") or "no reason given"
    why = f"stop code {task.get('stopCode') or 'unknown'}: {reason}"
    container_reason = _container(attempt, task).get("reason")
    return f"{why}; container: {container_reason}" if container_reason else why


def outcome_without_logs(attempt: EcsAttempt, task: Mapping[str, Any]) -> Outcome | None:
    """The outcome of a STOPPED task when the logs cannot change it, else None.

    That is: we stopped it (cancel/timeout), or the container never exited with a code
    (TaskFailedToStart: image pull, ENI, secrets, capacity) - an infrastructure failure.
    """
    rc = _exit_code(attempt, task)
    ours = ended_by_us(attempt, str(task.get("stoppedReason") or ""), rc)
    if ours is not None:
        return ours
    if rc is None:
        why = _why(attempt, task)
        return infra(f"ECS task {attempt.task_arn} stopped before the step ran ({why})")
    return None


def outcome_from_exit(
    attempt: EcsAttempt, task: Mapping[str, Any], marker: Outcome | None
) -> Outcome:
    """The outcome of a container that exited, given the outcome marker found in its logs."""
    rc = _exit_code(attempt, task)
    if marker is not None:
        return dataclasses.replace(marker, exit_code=rc)
    if rc == 0 and not attempt.python_step:
        return Outcome(state="succeeded", exit_code=0, result_json="null")
    if rc == 0:
        return infra(
            "the step exited with code 0 but no outcome line reached CloudWatch Logs "
            f"stream {attempt.log_group}:{attempt.log_stream}",
            exit_code=0,
        )
    message = f"container {attempt.container!r} exited with code {rc} ({_why(attempt, task)})"
    return Outcome("failed", rc, None, ErrorInfo("transient", _INFRA, message))
