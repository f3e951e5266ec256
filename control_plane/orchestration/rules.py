"""Ordered rules that answer an agent's report: accept, reject, or ignore it.

Each rule is a small class that guards one situation and says why it exists. The first rule
that returns a judgement wins; when none does, the report is applied. Rules see facts about
the attempt, never its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from control_plane.orchestration.machines import attempt_may_move
from control_plane.orchestration.values import ReportIn
from meridian.core.kinds import ReportKind, Verdict
from meridian.core.states import TERMINAL_ATTEMPT, AttemptState


@dataclass(frozen=True)
class AttemptFacts:
    """What the rules need to know about the attempt a report names."""

    state: AttemptState
    agent_id: str | None
    fencing_token: int


@dataclass(frozen=True)
class Judgement:
    """A report that is not applied: rejected or ignored, and why."""

    verdict: Verdict
    reason: str


class ReportRule(Protocol):
    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None: ...


class RejectUnknownAttempt:
    """A report about an attempt we never created cannot be applied to anything."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        if attempt is None:
            return Judgement(Verdict.REJECT, f"unknown attempt {report.attempt_id}")
        return None


class RejectForeignAgent:
    """An agent may report only on attempts it holds (never on another agent's work)."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        assert attempt is not None
        if attempt.agent_id != agent_id:
            return Judgement(Verdict.REJECT, "attempt is not held by this agent")
        return None


class RejectStaleFencingToken:
    """After a reassignment the old holder's token is stale: its reports must not count."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        assert attempt is not None
        if report.fencing_token != attempt.fencing_token:
            return Judgement(
                Verdict.REJECT,
                f"stale fencing token {report.fencing_token} "
                f"(current token is {attempt.fencing_token})",
            )
        return None


class RejectStartOfFinishedAttempt:
    """A RUNNING proposal for an attempt that already ended (cancelled, lost, failed) must not
    start infrastructure."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        assert attempt is not None
        if report.kind == ReportKind.RUNNING and attempt.state not in (
            AttemptState.ASSIGNED,
            AttemptState.RUNNING,
        ):
            return Judgement(Verdict.REJECT, f"attempt is {attempt.state}")
        return None


class RejectImpossibleOutcome:
    """An outcome the attempt cannot reach from where it is (SUCCEEDED for an attempt whose
    start was never accepted) comes from a broken or forged agent: refusing it keeps the rest
    of the batch, and the agent's later reports, flowing instead of failing the whole batch."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        assert attempt is not None
        if (
            report.kind == ReportKind.FINISHED
            and attempt.state not in TERMINAL_ATTEMPT
            and (report.outcome is None or not attempt_may_move(attempt.state, report.outcome))
        ):
            outcome = report.outcome or "no outcome"
            return Judgement(Verdict.REJECT, f"attempt is {attempt.state}; cannot end {outcome}")
        return None


class IgnoreReportsAfterTheEnd:
    """Replayed or late reports on a finished attempt are duplicates: recorded once, ignored."""

    def check(
        self, agent_id: str, attempt: AttemptFacts | None, report: ReportIn
    ) -> Judgement | None:
        assert attempt is not None
        if report.kind != ReportKind.RUNNING and attempt.state in TERMINAL_ATTEMPT:
            return Judgement(Verdict.IGNORE, f"attempt already {attempt.state}")
        return None


REPORT_RULES: tuple[ReportRule, ...] = (
    RejectUnknownAttempt(),
    RejectForeignAgent(),
    RejectStaleFencingToken(),
    RejectStartOfFinishedAttempt(),
    RejectImpossibleOutcome(),
    IgnoreReportsAfterTheEnd(),
)


def judge_report(agent_id: str, attempt: AttemptFacts | None, report: ReportIn) -> Judgement | None:
    """The first rule's judgement, or None when the report should be applied."""
    for rule in REPORT_RULES:
        judgement = rule.check(agent_id, attempt, report)
        if judgement is not None:
            return judgement
    return None
