"""What a lost hosted flow runner means for its run; stale runner epochs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from control_plane.orchestration.runners import (
    MAX_RUNNER_RESUMES,
    OnRunnerLost,
    RunnerLost,
    RunnerPolicy,
    decide_runner_lost,
    is_superseded,
    validate_runner_policy,
)
from meridian.core.errors import ValidationError

LAPSED = dt.datetime(2026, 3, 1, 10, 42, 7, tzinfo=dt.UTC)
LOST_TEXT = "the flow runner on agent dc1-3 stopped renewing its lease at 2026-03-01 10:42:07 UTC"


def lost(resumes_used: int) -> RunnerLost:
    return RunnerLost("dc1-3", LAPSED, resumes_used)


def test_resume_while_resumes_remain() -> None:
    decision = decide_runner_lost(RunnerPolicy(), lost(0))
    assert decision.resume
    assert decision.reason == (
        f"{LOST_TEXT}; resuming on another runner (resume 1 of 3), completed steps are reused"
    )
    assert decide_runner_lost(RunnerPolicy(), lost(2)).resume


def test_fail_when_resumes_are_used_up() -> None:
    decision = decide_runner_lost(RunnerPolicy(max_resumes=3), lost(3))
    assert not decision.resume
    assert decision.reason == f"{LOST_TEXT}; 3 resumes used of max_runner_resumes=3"
    one = decide_runner_lost(RunnerPolicy(max_resumes=1), lost(1))
    assert one.reason.endswith("; 1 resume used of max_runner_resumes=1")
    assert not decide_runner_lost(RunnerPolicy(max_resumes=0), lost(0)).resume


def test_fail_policy_fails_at_once_with_that_reason() -> None:
    decision = decide_runner_lost(RunnerPolicy(OnRunnerLost.FAIL, 5), lost(0))
    assert decision == type(decision)(False, f"{LOST_TEXT}; on_runner_lost=fail")


def test_the_time_is_said_in_utc() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    decision = decide_runner_lost(
        RunnerPolicy(OnRunnerLost.FAIL), RunnerLost("dc1-3", LAPSED.astimezone(berlin), 0)
    )
    assert "10:42:07 UTC" in decision.reason


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        (RunnerPolicy(max_resumes=-1), "between 0 and 100"),
        (RunnerPolicy(max_resumes=MAX_RUNNER_RESUMES + 1), "between 0 and 100"),
        (RunnerPolicy(max_resumes=True), "must be an integer"),
        (RunnerPolicy(on_runner_lost="retry"), "on_runner_lost must be resume or fail"),  # type: ignore[arg-type]
    ],
)
def test_bad_policies_are_refused(policy: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_runner_policy(policy)
    assert fragment in str(info.value)


def test_only_the_current_epoch_may_act() -> None:
    assert not is_superseded(4, 4)
    assert is_superseded(3, 4)
    assert is_superseded(5, 4)
