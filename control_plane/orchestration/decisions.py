"""What happens to a step after one of its attempts ended, and when an agent counts as lost:
named rules over facts (no rows, no session, no clock; randomness is passed in).

The use cases in ``control_plane/usecases/attempts.py`` and ``agents.py`` gather the facts,
call these, and carry the decision out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from control_plane.orchestration.retry import decide_retry, policy_from_spec
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.spec import OnAgentLost, StepSpec
from meridian.core.states import AttemptState, StepState

# How far ahead of the control plane's clock an agent's report time may be and still count.
MAX_CLOCK_SKEW = dt.timedelta(seconds=5)

# An attempt that ended without saying why gets the error class its outcome implies.
_OUTCOME_ERROR_CLASS = {
    AttemptState.TIMED_OUT: ErrorClass.TIMEOUT,
    AttemptState.CANCELLED: ErrorClass.CANCELLED,
    AttemptState.LOST: ErrorClass.LOST_AGENT,
}


@dataclass(frozen=True)
class StepDecision:
    """The step's next move: ``retry_delay_s`` set means queue another attempt after that
    delay (the step goes back to PENDING); otherwise the step ends in ``final_state``."""

    reason: str
    final_state: StepState | None = None
    retry_delay_s: float | None = None

    @property
    def retries(self) -> bool:
        return self.retry_delay_s is not None


def error_for_outcome(outcome: AttemptState, error: ErrorInfo | None) -> ErrorInfo | None:
    """The error to record: the reported one, or one that names the outcome."""
    if outcome == AttemptState.SUCCEEDED or error is not None:
        return error
    error_class = _OUTCOME_ERROR_CLASS.get(outcome, ErrorClass.INFRASTRUCTURE)
    return ErrorInfo(error_class, "meridian.AttemptFailed", f"attempt ended {outcome}")


def decide_after_failure(
    *,
    outcome: AttemptState,
    error: ErrorInfo,
    spec: StepSpec,
    attempt_number: int,
    run_is_live: bool,
    rand: float,
) -> StepDecision:
    """Decide what a failed (or cancelled, lost, timed-out) attempt means for its step.

    The rules, in order:

    1. *A cancel ends the step*: a cancelled attempt, or any failure once the run itself is
       over, is not retried: somebody decided to stop.
    2. *A lost agent fails the step when the step asked for it* (``on_agent_lost="fail"``):
       for work that must not run twice.
    3. *Otherwise the retry policy decides* (``retry.decide_retry``): retry after a backoff
       delay, or fail with the policy's reason.
    """
    if outcome == AttemptState.CANCELLED or not run_is_live:
        return StepDecision("cancelled", final_state=StepState.CANCELLED)
    if outcome == AttemptState.LOST and spec.on_agent_lost == OnAgentLost.FAIL:
        return StepDecision("agent lost; on_agent_lost=fail", final_state=StepState.FAILED)
    retry = decide_retry(
        policy_from_spec(spec), attempt_number, error.error_class, error.type_mro, rand
    )
    if not retry.retry:
        return StepDecision(retry.reason, final_state=StepState.FAILED)
    reason = f"retry {attempt_number}/{spec.retries} in {retry.delay_s:.2f}s: {retry.reason}"
    return StepDecision(reason, retry_delay_s=retry.delay_s)


# Refusals of one attempt by agents before it started that queue it again; the next one fails
# it like any infrastructure failure (then the retry policy decides).
MAX_REFUSALS = 5
_REFUSAL_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)


def requeue_after_refusal(refusals_before: int) -> float | None:
    """The delay before an attempt an agent refused (having started nothing) is queued for
    placement again, given how often it was refused before; None once refused too often.

    A refusal is a placement race (the control plane's view of the agent was a moment old), not
    a failure of the step: it costs no retry. The growing delay keeps an agent that refuses
    everything (say, degraded before it could tell) from bouncing the attempt in a hot loop.
    """
    if refusals_before >= MAX_REFUSALS:
        return None
    return _REFUSAL_BACKOFF_S[min(refusals_before, len(_REFUSAL_BACKOFF_S) - 1)]


def lost_after_s(spec: StepSpec, default_s: float) -> float | None:
    """How long an attempt's agent may stay silent before the attempt is LOST; None when the
    step waits for its agent however long it takes (``on_agent_lost="wait"``)."""
    if spec.on_agent_lost == OnAgentLost.WAIT:
        return None
    return spec.lost_after_s or default_s


def reported_time(
    at: dt.datetime | None, now: dt.datetime, not_before: dt.datetime | None
) -> tuple[dt.datetime, str]:
    """The time to record for an agent's observation ``at``, and a note when it was clamped.

    Bounds: no later than ``now`` + ``MAX_CLOCK_SKEW`` (clamped to ``now``), no earlier than
    ``not_before`` (when the attempt was assigned or started).
    """
    if at is None:
        return now, ""
    if at > now + MAX_CLOCK_SKEW:
        ahead = (at - now).total_seconds()
        return now, f" (agent clock {ahead:.1f}s ahead of the control plane; time clamped)"
    if not_before is not None and at < not_before:
        behind = (not_before - at).total_seconds()
        return not_before, f" (agent time {behind:.1f}s before the attempt began; time clamped)"
    return at, ""
