"""What a failed attempt means for its step (``orchestration/decisions.py``), over plain facts:
no store and no clock; the random number the retry jitter draws from is passed in."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from control_plane.orchestration.decisions import (
    MAX_CLOCK_SKEW,
    StepDecision,
    decide_after_failure,
    error_for_outcome,
    lost_after_s,
    reported_time,
)
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.spec import OnAgentLost, StepSpec
from meridian.core.states import AttemptState, StepState

# Two retries, 1s then 2s (backoff 2), no jitter unless a test asks for it.
SPEC = StepSpec(
    name="extract",
    module="flows",
    function="extract",
    retries=2,
    retry_delay_s=1.0,
    retry_backoff=2.0,
    retry_jitter=0.0,
)
VALUE_ERROR = ErrorInfo(
    ErrorClass.TRANSIENT,
    "builtins.ValueError",
    "boom",
    type_mro=("builtins.ValueError", "builtins.Exception"),
)


def decide(
    outcome: AttemptState = AttemptState.FAILED,
    error: ErrorInfo = VALUE_ERROR,
    spec: StepSpec = SPEC,
    attempt_number: int = 1,
    run_is_live: bool = True,
    rand: float = 0.5,
) -> StepDecision:
    """``decide_after_failure`` with a failed first attempt of a live run as the default."""
    return decide_after_failure(
        outcome=outcome,
        error=error,
        spec=spec,
        attempt_number=attempt_number,
        run_is_live=run_is_live,
        rand=rand,
    )


def with_spec(**changes: object) -> StepSpec:
    return dataclasses.replace(SPEC, **changes)  # type: ignore[arg-type]


def error_of(error_class: str) -> ErrorInfo:
    return dataclasses.replace(VALUE_ERROR, error_class=error_class)


# ---- rule 1: a cancel ends the step ----------------------------------------------------------


def test_a_cancelled_attempt_cancels_the_step_even_with_retries_left() -> None:
    cancelled = error_of(ErrorClass.CANCELLED)
    decision = decide(AttemptState.CANCELLED, cancelled)
    assert decision == StepDecision("cancelled", final_state=StepState.CANCELLED)
    assert not decision.retries


@pytest.mark.parametrize(
    "outcome", [AttemptState.FAILED, AttemptState.LOST, AttemptState.TIMED_OUT]
)
def test_no_failure_is_retried_once_the_run_is_over(outcome: AttemptState) -> None:
    """Somebody decided to stop the run: its steps end as cancelled, not failed."""
    decision = decide(outcome, run_is_live=False)
    assert decision == StepDecision("cancelled", final_state=StepState.CANCELLED)


# ---- rule 2: a lost agent fails the step when it asked for that --------------------------------


def test_a_lost_agent_fails_a_step_that_must_not_run_twice() -> None:
    lost = error_of(ErrorClass.LOST_AGENT)
    decision = decide(AttemptState.LOST, lost, with_spec(on_agent_lost=OnAgentLost.FAIL))
    assert decision.final_state == StepState.FAILED and not decision.retries
    assert decision.reason == "agent lost; on_agent_lost=fail"


def test_a_lost_agent_retries_a_step_with_the_default_policy() -> None:
    lost = error_of(ErrorClass.LOST_AGENT)
    decision = decide(AttemptState.LOST, lost, with_spec(on_agent_lost=OnAgentLost.RETRY))
    assert decision.retries and decision.final_state is None
    assert decision.retry_delay_s == 1.0


def test_on_agent_lost_fail_concerns_only_lost_attempts() -> None:
    decision = decide(spec=with_spec(on_agent_lost=OnAgentLost.FAIL))
    assert decision.retries


# ---- rule 3: the retry policy decides ---------------------------------------------------------


def test_a_transient_failure_is_retried_after_the_policy_delay() -> None:
    decision = decide()
    assert decision.retries and decision.retry_delay_s == 1.0 and decision.final_state is None
    assert decision.reason.startswith("retry 1/2 in 1.00s: transient failure")


def test_each_further_retry_waits_backoff_times_longer() -> None:
    # approx: the delay is computed in log space (no overflow for absurd backoffs).
    assert decide(attempt_number=2).retry_delay_s == pytest.approx(2.0)
    tripled = with_spec(retries=5, retry_backoff=3.0)
    assert decide(attempt_number=3, spec=tripled).retry_delay_s == pytest.approx(9.0)
    assert decide(attempt_number=3, spec=tripled).reason.startswith("retry 3/5 in 9.00s")


@pytest.mark.parametrize(("rand", "delay"), [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)])
def test_the_jitter_is_drawn_from_the_random_number_passed_in(rand: float, delay: float) -> None:
    """Jitter 0.5 spreads a 1s delay over [0.5s, 1.5s]; the caller owns the randomness."""
    decision = decide(spec=with_spec(retry_jitter=0.5), rand=rand)
    assert decision.retry_delay_s == pytest.approx(delay)


def test_the_step_fails_once_its_retries_are_used() -> None:
    decision = decide(attempt_number=3)
    assert decision.final_state == StepState.FAILED and not decision.retries
    assert decision.reason == "2 retries used (3 attempts made)"


def test_a_step_without_retries_fails_at_once() -> None:
    decision = decide(spec=with_spec(retries=0))
    assert decision.final_state == StepState.FAILED
    assert decision.reason == "no retries configured (1 attempts made)"


@pytest.mark.parametrize("error_class", [ErrorClass.PERMANENT, ErrorClass.SCHEDULING])
def test_permanent_and_scheduling_failures_are_never_retried(error_class: ErrorClass) -> None:
    decision = decide(error=error_of(error_class), spec=with_spec(retries=100))
    assert decision.final_state == StepState.FAILED and not decision.retries
    assert decision.reason == f"{error_class} failures are never retried"


def test_an_unknown_error_class_is_not_retried() -> None:
    """A class written by a newer version: failing is safer than guessing."""
    decision = decide(error=error_of("cosmic_ray"))
    assert decision.final_state == StepState.FAILED and "unknown error class" in decision.reason


def test_an_exception_outside_retry_on_fails_the_step() -> None:
    decision = decide(spec=with_spec(retry_on=("KeyError",)))
    assert decision.final_state == StepState.FAILED
    assert decision.reason == "ValueError is not in retry_on"


def test_an_exception_in_retry_on_is_retried_by_its_base_class_too() -> None:
    assert decide(spec=with_spec(retry_on=("ValueError",))).retries
    assert decide(spec=with_spec(retry_on=("builtins.Exception",))).retries


@pytest.mark.parametrize(
    ("outcome", "error_class"),
    [
        (AttemptState.TIMED_OUT, ErrorClass.TIMEOUT),
        (AttemptState.FAILED, ErrorClass.INFRASTRUCTURE),
        (AttemptState.LOST, ErrorClass.LOST_AGENT),
    ],
)
def test_platform_failures_are_retried_whatever_retry_on_says(
    outcome: AttemptState, error_class: ErrorClass
) -> None:
    decision = decide(outcome, error_of(error_class), with_spec(retry_on=("KeyError",)))
    assert decision.retries


# ---- error_for_outcome -----------------------------------------------------------------------


def test_a_reported_error_is_kept() -> None:
    for outcome in (AttemptState.FAILED, AttemptState.TIMED_OUT, AttemptState.LOST):
        assert error_for_outcome(outcome, VALUE_ERROR) is VALUE_ERROR


def test_a_success_has_no_error() -> None:
    assert error_for_outcome(AttemptState.SUCCEEDED, None) is None


@pytest.mark.parametrize(
    ("outcome", "error_class"),
    [
        (AttemptState.TIMED_OUT, ErrorClass.TIMEOUT),
        (AttemptState.CANCELLED, ErrorClass.CANCELLED),
        (AttemptState.LOST, ErrorClass.LOST_AGENT),
        (AttemptState.FAILED, ErrorClass.INFRASTRUCTURE),
    ],
)
def test_an_attempt_that_ended_without_saying_why_gets_the_class_of_its_outcome(
    outcome: AttemptState, error_class: ErrorClass
) -> None:
    error = error_for_outcome(outcome, None)
    assert error == ErrorInfo(error_class, "meridian.AttemptFailed", f"attempt ended {outcome}")


# ---- lost_after_s ----------------------------------------------------------------------------


def test_a_step_that_waits_for_its_agent_is_never_lost() -> None:
    assert lost_after_s(with_spec(on_agent_lost=OnAgentLost.WAIT, lost_after_s=5.0), 30.0) is None


def test_a_step_may_set_its_own_lost_after() -> None:
    assert lost_after_s(with_spec(lost_after_s=120.0), 30.0) == 120.0
    assert lost_after_s(with_spec(on_agent_lost=OnAgentLost.FAIL, lost_after_s=5.0), 30.0) == 5.0


def test_otherwise_the_control_planes_default_applies() -> None:
    assert lost_after_s(SPEC, 30.0) == 30.0


def test_report_times_are_the_agents_within_clock_skew_bounds() -> None:
    """Reports carry the agent's own time (a step that finished during an outage keeps it),
    bounded by the control plane's clock and the attempt's assignment."""
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assigned = now - dt.timedelta(seconds=30)
    earlier = now - dt.timedelta(seconds=20)  # e.g. finished during a control-plane outage
    assert reported_time(earlier, now, assigned) == (earlier, "")
    assert reported_time(None, now, assigned) == (now, "")
    ahead, note = reported_time(now + MAX_CLOCK_SKEW * 3, now, assigned)
    assert ahead == now and "ahead" in note and "clamped" in note
    within = now + MAX_CLOCK_SKEW / 2
    assert reported_time(within, now, assigned) == (within, "")
    before, note = reported_time(assigned - dt.timedelta(seconds=5), now, assigned)
    assert before == assigned and "before the attempt began" in note
