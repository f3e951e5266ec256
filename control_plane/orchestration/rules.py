"""Ordered rules that answer an agent's report: accept, reject, or ignore it.

Each rule is a small class that guards one situation and says why it exists (STYLE.md 5).
The first rule that returns a verdict wins; when none does, the report is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from control_plane.orchestration.values import ReportIn
from control_plane.store.models import AttemptRow
from meridian.core.states import TERMINAL_ATTEMPT, AttemptState

Action = Literal["reject", "ignore"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


class ReportRule(Protocol):
    def check(
        self, agent_id: str, attempt: AttemptRow | None, report: ReportIn
    ) -> Verdict | None: ...


class RejectUnknownAttempt:
    """A report about an attempt we never created cannot be applied to anything."""

    def check(self, agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
        if attempt is None:
            return Verdict("reject", f"unknown attempt {report.attempt_id}")
        return None


class RejectForeignAgent:
    """An agent may report only on attempts it holds (never on another agent's work)."""

    def check(self, agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
        assert attempt is not None
        if attempt.agent_id != agent_id:
            return Verdict("reject", "attempt is not held by this agent")
        return None


class RejectStaleFencingToken:
    """After a reassignment the old holder's token is stale: its reports must not count."""

    def check(self, agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
        assert attempt is not None
        if report.fencing_token != attempt.fencing_token:
            return Verdict(
                "reject",
                f"stale fencing token {report.fencing_token} "
                f"(current token is {attempt.fencing_token})",
            )
        return None


class RejectStartOfFinishedAttempt:
    """A RUNNING proposal for an attempt that already ended (cancelled, lost, failed) must not
    start infrastructure."""

    def check(self, agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
        assert attempt is not None
        if report.kind == "running" and attempt.state not in (
            AttemptState.ASSIGNED,
            AttemptState.RUNNING,
        ):
            return Verdict("reject", f"attempt is {attempt.state}")
        return None


class IgnoreReportsAfterTheEnd:
    """Replayed or late reports on a finished attempt are duplicates: recorded once, ignored."""

    def check(self, agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
        assert attempt is not None
        if report.kind != "running" and attempt.state in TERMINAL_ATTEMPT:
            return Verdict("ignore", f"attempt already {attempt.state}")
        return None


REPORT_RULES: tuple[ReportRule, ...] = (
    RejectUnknownAttempt(),
    RejectForeignAgent(),
    RejectStaleFencingToken(),
    RejectStartOfFinishedAttempt(),
    IgnoreReportsAfterTheEnd(),
)


def judge_report(agent_id: str, attempt: AttemptRow | None, report: ReportIn) -> Verdict | None:
    """The first rule's verdict, or None when the report should be applied."""
    for rule in REPORT_RULES:
        verdict = rule.check(agent_id, attempt, report)
        if verdict is not None:
            return verdict
    return None
