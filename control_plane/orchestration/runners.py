"""What a lost hosted flow runner means for its run, and whether a runner call is stale.

Decision 0018 (proposed): a deployment's flow body runs on an agent that offers runner
capacity, holding a lease on its run. When the lease lapses, the run is either resumed on
another matching agent by replay, or failed, per the run's ``on_runner_lost`` policy and a
bound on resumes. Each hand-out of the run to a runner takes the next runner epoch; calls
from an older epoch come from a superseded runner and are refused.

Pure: facts in, decision out. Not wired yet: today every lapsed runner lease crashes its run
(``usecases.runs.crash_runs_with_lapsed_leases``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from meridian.core.errors import ValidationError

DEFAULT_MAX_RUNNER_RESUMES = 3
MAX_RUNNER_RESUMES = 100


class OnRunnerLost(StrEnum):
    RESUME = "resume"
    FAIL = "fail"


@dataclass(frozen=True)
class RunnerPolicy:
    """Copied from the deployment version onto each of its runs when the run is created."""

    on_runner_lost: OnRunnerLost = OnRunnerLost.RESUME
    max_resumes: int = DEFAULT_MAX_RUNNER_RESUMES


@dataclass(frozen=True)
class RunnerLost:
    """The facts of one loss: where the runner was and when its lease ran out."""

    agent_name: str
    lease_expired_at: dt.datetime
    resumes_used: int


@dataclass(frozen=True)
class RunnerLostDecision:
    """``resume`` or fail; ``reason`` goes on the run's event (and its error when failing)."""

    resume: bool
    reason: str


def validate_runner_policy(policy: RunnerPolicy) -> None:
    """Raise :class:`ValidationError` naming the field that makes no sense."""
    if not isinstance(policy.on_runner_lost, OnRunnerLost):
        raise ValidationError(
            f"on_runner_lost must be resume or fail, got {policy.on_runner_lost!r}"
        )
    resumes = policy.max_resumes
    if isinstance(resumes, bool) or not isinstance(resumes, int):
        raise ValidationError(f"max_runner_resumes must be an integer, got {resumes!r}")
    if not 0 <= resumes <= MAX_RUNNER_RESUMES:
        raise ValidationError(
            f"max_runner_resumes must be between 0 and {MAX_RUNNER_RESUMES}, got {resumes}"
        )


def decide_runner_lost(policy: RunnerPolicy, lost: RunnerLost) -> RunnerLostDecision:
    """Resume the run on another runner, or fail it, after its runner's lease lapsed."""
    validate_runner_policy(policy)
    when = lost.lease_expired_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    what = f"the flow runner on agent {lost.agent_name} stopped renewing its lease at {when}"
    if policy.on_runner_lost is OnRunnerLost.FAIL:
        return RunnerLostDecision(False, f"{what}; on_runner_lost=fail")
    if lost.resumes_used >= policy.max_resumes:
        used = lost.resumes_used
        return RunnerLostDecision(
            False,
            f"{what}; {used} resume{'s' if used != 1 else ''} used of "
            f"max_runner_resumes={policy.max_resumes}",
        )
    number = lost.resumes_used + 1
    return RunnerLostDecision(
        True,
        f"{what}; resuming on another runner (resume {number} of {policy.max_resumes}), "
        "completed steps are reused",
    )


def is_superseded(call_epoch: int, run_epoch: int) -> bool:
    """Whether a runner call made under ``call_epoch`` comes from a runner that was replaced.

    Epochs only grow; a call from an epoch *ahead* of the run cannot be honest either (a token
    is minted with the run's epoch), so anything but equality is refused.
    """
    return call_epoch != run_epoch
