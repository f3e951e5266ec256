"""The ``gcp-cloud-run`` attempt: its handle, typed, and how an execution maps to an Outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import cancelled_detail, timeout_detail

TYPE = "gcp-cloud-run"


@dataclass(frozen=True)
class Attempt:
    """What a Cloud Run handle says, typed."""

    execution: str
    python: bool
    timeout_s: float | None
    submitted_at_ms: int

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != TYPE:
            raise ProviderError(f"not a {TYPE} handle (provider {handle.provider!r})")
        try:
            timeout = handle.data.get("timeout_s")
            return cls(
                execution=handle.resource_id,
                python=bool(handle.data["python"]),
                timeout_s=None if timeout is None else float(timeout),
                submitted_at_ms=int(handle.data["submitted_at_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed {TYPE} handle {handle.to_json()}: {exc}") from exc

    def deadline(self) -> float | None:
        """The monotonic time at which the attempt times out (survives a re-attach)."""
        if self.timeout_s is None:
            return None
        return time.monotonic() + self.timeout_s - (time.time() - self.submitted_at_ms / 1000)

    def ran_out(self, execution: Any) -> bool:
        """Whether the execution ended only after its timeout (Cloud Run's or ours)."""
        if self.timeout_s is None or "completion_time" not in execution:
            return False
        ended_ms = execution.completion_time.timestamp() * 1000
        return ended_ms - self.submitted_at_ms >= self.timeout_s * 1000


def execution_state(execution: Any) -> str:
    """succeeded / failed / cancelled of an execution that has a completion time."""
    if execution.cancelled_count > 0:
        return "cancelled"
    for condition in execution.conditions:
        if condition.type_ == "Completed":
            if condition.execution_reason.name in ("CANCELLED", "CANCELLING"):
                return "cancelled"
            if condition.state.name == "CONDITION_SUCCEEDED":
                return "succeeded"
            return "failed"
    wanted = max(1, execution.task_count)
    return "succeeded" if execution.succeeded_count >= wanted else "failed"


def condition_message(execution: Any) -> str:
    for condition in execution.conditions:
        if condition.type_ == "Completed" and condition.message:
            return str(condition.message)
    return ""


def infrastructure(message: str, exit_code: int | None = None) -> Outcome:
    detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
    return Outcome(state="failed", exit_code=exit_code, error=detail)


def timed_out(attempt: Attempt, how: str, exit_code: int | None = None) -> Outcome:
    message = f"step exceeded its timeout of {attempt.timeout_s:g} s and {how}"
    detail = timeout_detail(message)
    return Outcome(state="timed_out", exit_code=exit_code, error=detail)


def cancelled() -> Outcome:
    detail = cancelled_detail()
    return Outcome(state="cancelled", error=detail)
