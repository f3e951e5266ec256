"""The named kinds that travel between the layers: reports, verdicts, events and approvals.

Each is a ``StrEnum`` so the stored and printed value is the plain string users already see
(``attempt.succeeded``), while code can only name kinds that exist.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from meridian.core.states import AttemptState, RunState, StepState


class RunnerNotStarted(IntEnum):
    """``RunnerExited`` codes of a hosted runner its agent never started (real exit codes are
    >= 0, or -N for a signal); the control plane hands such a run out again."""

    NO_FREE_SLOT = -2  # every runner slot still busy after the agent's wait
    COULD_NOT_START = -3  # the bundle or the process could not be had (or a fork was lost)


# The error type of an attempt its agent refused before starting anything (at capacity,
# draining, degraded, provider not offered): the control plane queues it again instead of
# failing it, a bounded number of times.
ASSIGNMENT_REFUSED = "meridian.AssignmentRefused"


class ReportKind(StrEnum):
    """What an agent's report says about an attempt."""

    RUNNING = "running"  # a proposal: may the infrastructure start?
    HANDLE = "handle"  # the provider's handle and cloud resource id
    LOGS = "logs"
    FINISHED = "finished"


class Verdict(StrEnum):
    """The control plane's answer to a report that is not applied."""

    REJECT = "reject"  # the report is wrong (unknown attempt, foreign agent, stale token)
    IGNORE = "ignore"  # the report is late or replayed: recorded, not applied

    @property
    def past_tense(self) -> str:
        return {Verdict.REJECT: "rejected", Verdict.IGNORE: "ignored"}[self]


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


class EventKind(StrEnum):
    """Every kind of event in a run's history (``events.kind``)."""

    RUN_SCHEDULED = "run.scheduled"
    RUN_PENDING = "run.pending"
    RUN_RUNNING = "run.running"
    RUN_PAUSED = "run.paused"
    RUN_CANCELLING = "run.cancelling"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_CRASHED = "run.crashed"
    RUN_RETRIED = "run.retried"
    # Hosted flow runners (decision 0018): a runner took the run, or its lease lapsed.
    RUN_RUNNER_ASSIGNED = "run.runner_assigned"
    RUN_RUNNER_LOST = "run.runner_lost"
    # A subflow (a child run) started from this run's body.
    RUN_SUBFLOW = "run.subflow"
    STEP_PENDING = "step.pending"
    STEP_RUNNING = "step.running"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_CANCELLED = "step.cancelled"
    STEP_CACHED = "step.cached"
    STEP_RETRYING = "step.retrying"
    ATTEMPT_QUEUED = "attempt.queued"
    ATTEMPT_ASSIGNED = "attempt.assigned"
    ATTEMPT_RUNNING = "attempt.running"
    ATTEMPT_SUCCEEDED = "attempt.succeeded"
    ATTEMPT_FAILED = "attempt.failed"
    ATTEMPT_LOST = "attempt.lost"
    ATTEMPT_TIMED_OUT = "attempt.timed_out"
    ATTEMPT_CANCELLED = "attempt.cancelled"
    ATTEMPT_RESOURCE = "attempt.resource"
    # Why a queued attempt is not assigned yet (details.reason: orchestration.waiting);
    # written once per attempt and distinct reason.
    ATTEMPT_WAITING = "attempt.waiting"
    REPORT_REJECTED = "report.rejected"
    REPORT_IGNORED = "report.ignored"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_APPROVED = "approval.approved"
    APPROVAL_REJECTED = "approval.rejected"
    APPROVAL_TIMED_OUT = "approval.timed_out"

    @classmethod
    def entered(cls, state: RunState | StepState | AttemptState) -> EventKind:
        """The event that records entering ``state``."""
        # Keyed by class too: the three enums share values ("RUNNING"), and StrEnum members
        # with equal values are equal dictionary keys.
        return _ENTERED[(type(state), state.value)]

    @classmethod
    def decided(cls, state: ApprovalState) -> EventKind:
        return _DECIDED[state]

    @classmethod
    def verdict(cls, verdict: Verdict) -> EventKind:
        return cls.REPORT_REJECTED if verdict is Verdict.REJECT else cls.REPORT_IGNORED


_ENTERED: dict[tuple[type, str], EventKind] = {
    (machine, state.value): EventKind(f"{prefix}.{state.value.lower()}")
    for machine, prefix in ((RunState, "run"), (StepState, "step"), (AttemptState, "attempt"))
    for state in machine
}
_DECIDED = {
    ApprovalState.APPROVED: EventKind.APPROVAL_APPROVED,
    ApprovalState.REJECTED: EventKind.APPROVAL_REJECTED,
    ApprovalState.TIMED_OUT: EventKind.APPROVAL_TIMED_OUT,
}
