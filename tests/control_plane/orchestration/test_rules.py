"""The report rules (``orchestration/rules.py``) over plain facts: no store, no clock.

Each rule is checked on its own (it answers only its situation and passes on everything
else), then ``judge_report`` for the order in which they are asked.
"""

from __future__ import annotations

import datetime as dt

import pytest

from control_plane.orchestration.rules import (
    REPORT_RULES,
    AttemptFacts,
    IgnoreReportsAfterTheEnd,
    Judgement,
    RejectForeignAgent,
    RejectImpossibleOutcome,
    RejectStaleFencingToken,
    RejectStartOfFinishedAttempt,
    RejectUnknownAttempt,
    judge_report,
)
from control_plane.orchestration.values import ReportIn
from meridian.core.kinds import ReportKind, Verdict
from meridian.core.states import TERMINAL_ATTEMPT, AttemptState

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
AGENT = "agent-1"
TOKEN = 3


def facts(
    state: AttemptState = AttemptState.RUNNING, agent_id: str | None = AGENT, token: int = TOKEN
) -> AttemptFacts:
    """An attempt held by ``AGENT`` with fencing token ``TOKEN`` unless told otherwise."""
    return AttemptFacts(state=state, agent_id=agent_id, fencing_token=token)


def report(kind: ReportKind = ReportKind.FINISHED, token: int = TOKEN) -> ReportIn:
    """A report on attempt ``att-1``; a finished one says SUCCEEDED."""
    outcome = AttemptState.SUCCEEDED if kind == ReportKind.FINISHED else None
    return ReportIn(
        seq=1, attempt_id="att-1", fencing_token=token, at=T0, kind=kind, outcome=outcome
    )


# ---- each rule on its own ------------------------------------------------------------------


def finished(outcome: AttemptState | None) -> ReportIn:
    return ReportIn(
        seq=1,
        attempt_id="att-1",
        fencing_token=TOKEN,
        at=T0,
        kind=ReportKind.FINISHED,
        outcome=outcome,
    )


@pytest.mark.parametrize("outcome", [AttemptState.SUCCEEDED, AttemptState.TIMED_OUT, None])
def test_an_outcome_the_attempt_cannot_reach_is_rejected(outcome: AttemptState | None) -> None:
    """An attempt whose start was never accepted cannot have succeeded or timed out."""
    judgement = RejectImpossibleOutcome().check(
        AGENT, facts(AttemptState.ASSIGNED), finished(outcome)
    )
    assert judgement is not None and judgement.verdict == Verdict.REJECT
    assert "attempt is ASSIGNED" in judgement.reason


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (AttemptState.ASSIGNED, AttemptState.FAILED),  # the provider could not start it
        (AttemptState.ASSIGNED, AttemptState.CANCELLED),
        (AttemptState.RUNNING, AttemptState.SUCCEEDED),
        (AttemptState.RUNNING, AttemptState.TIMED_OUT),
        (AttemptState.SUCCEEDED, AttemptState.FAILED),  # late: the next rule ignores it
    ],
)
def test_a_reachable_or_late_outcome_passes_the_outcome_rule(
    state: AttemptState, outcome: AttemptState
) -> None:
    assert RejectImpossibleOutcome().check(AGENT, facts(state), finished(outcome)) is None


def test_unknown_attempt_is_rejected_and_names_it() -> None:
    judgement = RejectUnknownAttempt().check(AGENT, None, report())
    assert judgement == Judgement(Verdict.REJECT, "unknown attempt att-1")
    assert RejectUnknownAttempt().check(AGENT, facts(), report()) is None


@pytest.mark.parametrize("holder", ["agent-2", None])
def test_a_report_on_another_agents_attempt_is_rejected(holder: str | None) -> None:
    """Also when nobody holds it (a queued attempt): only the holder may report."""
    judgement = RejectForeignAgent().check(AGENT, facts(agent_id=holder), report())
    assert judgement is not None and judgement.verdict == Verdict.REJECT
    assert "not held by this agent" in judgement.reason
    assert RejectForeignAgent().check(AGENT, facts(), report()) is None


@pytest.mark.parametrize("token", [TOKEN - 1, TOKEN + 1])
def test_a_stale_fencing_token_is_rejected_with_both_tokens(token: int) -> None:
    judgement = RejectStaleFencingToken().check(AGENT, facts(), report(token=token))
    assert judgement is not None and judgement.verdict == Verdict.REJECT
    assert f"stale fencing token {token}" in judgement.reason
    assert f"current token is {TOKEN}" in judgement.reason
    assert RejectStaleFencingToken().check(AGENT, facts(), report()) is None


@pytest.mark.parametrize("state", sorted(TERMINAL_ATTEMPT | {AttemptState.QUEUED}))
def test_a_start_of_an_attempt_that_is_not_held_any_more_is_rejected(state: AttemptState) -> None:
    """Infrastructure must not start for an attempt that was cancelled, lost or failed."""
    judgement = RejectStartOfFinishedAttempt().check(
        AGENT, facts(state=state), report(ReportKind.RUNNING)
    )
    assert judgement == Judgement(Verdict.REJECT, f"attempt is {state}")


@pytest.mark.parametrize("state", [AttemptState.ASSIGNED, AttemptState.RUNNING])
def test_a_start_of_a_held_attempt_passes(state: AttemptState) -> None:
    """ASSIGNED is the first proposal; RUNNING is a proposal the agent sends again."""
    rule = RejectStartOfFinishedAttempt()
    assert rule.check(AGENT, facts(state=state), report(ReportKind.RUNNING)) is None


def test_the_start_rule_looks_only_at_running_proposals() -> None:
    finished = facts(state=AttemptState.CANCELLED)
    for kind in (ReportKind.HANDLE, ReportKind.LOGS, ReportKind.FINISHED):
        assert RejectStartOfFinishedAttempt().check(AGENT, finished, report(kind)) is None


@pytest.mark.parametrize("state", sorted(TERMINAL_ATTEMPT))
@pytest.mark.parametrize("kind", [ReportKind.HANDLE, ReportKind.LOGS, ReportKind.FINISHED])
def test_reports_after_the_end_are_ignored(state: AttemptState, kind: ReportKind) -> None:
    """Late or replayed: not wrong (no reject), only too late to change anything."""
    judgement = IgnoreReportsAfterTheEnd().check(AGENT, facts(state=state), report(kind))
    assert judgement == Judgement(Verdict.IGNORE, f"attempt already {state}")


@pytest.mark.parametrize("state", [AttemptState.ASSIGNED, AttemptState.RUNNING])
def test_reports_on_a_live_attempt_are_not_ignored(state: AttemptState) -> None:
    for kind in ReportKind:
        assert IgnoreReportsAfterTheEnd().check(AGENT, facts(state=state), report(kind)) is None


def test_a_running_proposal_after_the_end_is_left_to_the_start_rule() -> None:
    """A proposal needs an answer (reject), which the ignore rule would not give."""
    rule = IgnoreReportsAfterTheEnd()
    assert rule.check(AGENT, facts(state=AttemptState.LOST), report(ReportKind.RUNNING)) is None


# ---- judge_report: the first rule that answers wins -----------------------------------------


def test_the_rules_are_asked_in_this_order() -> None:
    assert [type(rule) for rule in REPORT_RULES] == [
        RejectUnknownAttempt,
        RejectForeignAgent,
        RejectStaleFencingToken,
        RejectStartOfFinishedAttempt,
        RejectImpossibleOutcome,
        IgnoreReportsAfterTheEnd,
    ]


def test_a_valid_report_on_a_live_attempt_is_applied() -> None:
    for kind in ReportKind:
        assert judge_report(AGENT, facts(), report(kind)) is None
    assert judge_report(AGENT, facts(AttemptState.ASSIGNED), report(ReportKind.RUNNING)) is None


def test_an_unknown_attempt_is_judged_before_anything_is_read_from_it() -> None:
    """The later rules assume the attempt exists: the unknown rule must come first."""
    judgement = judge_report(AGENT, None, report(ReportKind.RUNNING, token=99))
    assert judgement is not None and judgement.reason == "unknown attempt att-1"


def test_a_foreign_agent_is_rejected_before_its_token_is_compared() -> None:
    """Another agent learns nothing about the current token of an attempt it does not hold."""
    judgement = judge_report("agent-2", facts(), report(token=TOKEN + 1))
    assert judgement is not None and "not held by this agent" in judgement.reason
    assert "current token" not in judgement.reason


def test_a_stale_token_is_rejected_even_on_a_finished_attempt() -> None:
    """A late outcome from an old holder is wrong, not merely late: reject beats ignore."""
    judgement = judge_report(AGENT, facts(AttemptState.SUCCEEDED), report(token=TOKEN - 1))
    assert judgement is not None and judgement.verdict == Verdict.REJECT
    assert "stale fencing token" in judgement.reason


def test_a_late_outcome_from_the_holder_is_ignored_not_rejected() -> None:
    judgement = judge_report(AGENT, facts(AttemptState.TIMED_OUT), report())
    assert judgement == Judgement(Verdict.IGNORE, "attempt already TIMED_OUT")


def test_a_late_proposal_from_the_holder_is_rejected() -> None:
    judgement = judge_report(AGENT, facts(AttemptState.CANCELLED), report(ReportKind.RUNNING))
    assert judgement == Judgement(Verdict.REJECT, "attempt is CANCELLED")
