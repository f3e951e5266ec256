"""Attempt use cases against a real store (SQLite, and PostgreSQL when configured): assignment,
agents' reports, retries, lost agents and the end of a run."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from control_plane.orchestration.decisions import MAX_REFUSALS
from control_plane.orchestration.values import Effects, ReportIn, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, EventRow, StepRunRow
from control_plane.usecases.agents import expire_agent_leases
from control_plane.usecases.runs import finish_run
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import ConflictError
from meridian.core.kinds import ASSIGNMENT_REFUSED, EventKind, ReportKind
from tests.control_plane.usecases.helpers import (
    T0,
    apply,
    attempts,
    new_run,
    report,
    run_at,
    schedule,
    spec,
    submit,
)

# A transient ValueError, as the agent reports it (retried under the default policy).
TRANSIENT = {
    "error_class": "transient",
    "type": "builtins.ValueError",
    "message": "boom",
    "traceback": "tb",
    "type_mro": ["builtins.ValueError", "builtins.Exception"],
}


def test_assigns_to_matching_agent_and_completes(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    effects, _ = schedule(store)
    assert [a.agent_id for a in effects.assigns] == ["a1"]
    attempt = attempts(store, step_id)[0]
    assert attempt.state == "ASSIGNED" and attempt.fencing_token == 1
    _, decisions, _ = apply(store, "a1", [report(attempt, 1, "running")], T0)
    assert decisions[0].accept
    done = report(attempt, 2, "finished", outcome="SUCCEEDED", result_json='{"rows": 3}')
    watermark, _, effects = apply(store, "a1", [done], T0)
    assert watermark == 2 and effects.released_slots == {"a1": 1}
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "COMPLETED" and json.loads(step.result_json) == {"rows": 3}


def test_transient_failure_is_retried_after_backoff_then_final(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=1)
    schedule(store)
    first = attempts(store, step_id)[0]
    error = TRANSIENT
    apply(
        store,
        "a1",
        [report(first, 1, "running"), report(first, 2, "finished", outcome="FAILED", error=error)],
        T0,
    )
    second = attempts(store, step_id)[1]
    assert second.state == "QUEUED" and second.not_before == T0 + dt.timedelta(seconds=1)
    effects, next_timer = schedule(store)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=1)
    later = T0 + dt.timedelta(seconds=1)
    effects, _ = schedule(store, later)
    second = attempts(store, step_id)[1]
    assert second.fencing_token == 2
    apply(
        store,
        "a1",
        [
            report(second, 3, "running"),
            report(second, 4, "finished", outcome="FAILED", error=error),
        ],
        later,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error.type == "builtins.ValueError"
    assert len(attempts(store, step_id)) == 2


def test_permanent_error_is_not_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=5)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    error = {
        "error_class": "permanent",
        "type": "meridian.core.errors.Permanent",
        "message": "no",
        "traceback": "",
        "type_mro": [],
    }
    apply(
        store,
        "a1",
        [
            report(attempt, 1, "running"),
            report(attempt, 2, "finished", outcome="FAILED", error=error),
        ],
        T0,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and len(attempts(store, step_id)) == 1


def refusal(message: str = "agent at capacity") -> dict[str, object]:
    """The error an agent reports for an assignment it refused before starting anything."""
    return {"error_class": "infrastructure", "type": ASSIGNMENT_REFUSED, "message": message}


def test_a_refused_assignment_is_queued_again_without_using_a_retry(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=0)
    schedule(store)
    refused = attempts(store, step_id)[0]
    _, _, effects = apply(
        store, "a1", [report(refused, 1, "finished", outcome="FAILED", error=refusal())], T0
    )
    assert effects.released_slots == {"a1": 1}
    [again] = attempts(store, step_id)
    assert (again.state, again.agent_id, again.number) == ("QUEUED", None, 1)
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "PENDING" and step.error is None
    events = store.run_sync(
        lambda s: list(s.scalars(select(EventRow).where(EventRow.attempt_id == again.id)))
    )
    queued_again = [e for e in events if e.from_state == "ASSIGNED" and e.to_state == "QUEUED"]
    assert len(queued_again) == 1
    assert "a1 refused it before starting: agent at capacity" in queued_again[0].message
    assert "no retry used" in queued_again[0].message
    # Placed again with a new token; the refusing agent's old token no longer counts.
    effects, _ = schedule(store)
    assert [a.attempt_id for a in effects.assigns] == [again.id]
    placed = attempts(store, step_id)[0]
    assert placed.state == "ASSIGNED" and placed.fencing_token == refused.fencing_token + 1
    _, decisions, _ = apply(store, "a1", [report(refused, 2, "running")], T0)
    assert decisions and not decisions[0].accept
    apply(store, "a1", [report(placed, 3, "running")], T0)
    done = report(placed, 4, "finished", outcome="SUCCEEDED", result_json="1")
    apply(store, "a1", [done], T0)
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "COMPLETED"


def test_an_attempt_refused_too_often_fails_like_an_infrastructure_failure(
    store: Store,
) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=0)
    now, seq = T0, 0
    for _ in range(MAX_REFUSALS):
        schedule(store, now)
        attempt = attempts(store, step_id)[0]
        assert attempt.state == "ASSIGNED"
        seq += 1
        message = "agent is draining"
        apply(
            store,
            "a1",
            [report(attempt, seq, "finished", outcome="FAILED", error=refusal(message))],
            now,
        )
        assert attempts(store, step_id)[0].state == "QUEUED"
        now = attempts(store, step_id)[0].not_before
    schedule(store, now)
    attempt = attempts(store, step_id)[0]
    apply(
        store, "a1", [report(attempt, seq + 1, "finished", outcome="FAILED", error=refusal())], now
    )
    [failed] = attempts(store, step_id)
    assert failed.state == "FAILED" and failed.error.type == ASSIGNMENT_REFUSED
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED"


def test_an_infrastructure_failure_after_the_start_is_not_a_refusal(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=0)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    finished = report(attempt, 2, "finished", outcome="FAILED", error=refusal())
    apply(store, "a1", [report(attempt, 1, "running"), finished], T0)
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and len(attempts(store, step_id)) == 1


def test_stale_token_foreign_agent_and_duplicate_seq_are_not_applied(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    stale = ReportIn(seq=1, attempt_id=attempt.id, fencing_token=99, at=T0, kind=ReportKind.RUNNING)
    _, decisions, _ = apply(store, "a1", [stale], T0)
    assert not decisions[0].accept and "stale fencing token" in decisions[0].reason
    _, decisions, _ = apply(store, "g1", [report(attempt, 1, "running")], T0)
    assert not decisions[0].accept
    apply(store, "a1", [report(attempt, 2, "running")], T0)
    done = report(attempt, 3, "finished", outcome="SUCCEEDED", result_json="1")
    apply(store, "a1", [done], T0)
    # The same seq again (ack lost): applied once only.
    apply(store, "a1", [done], T0)
    kinds = store.run_sync(
        lambda s: [e.kind for e in s.scalars(select(EventRow).order_by(EventRow.id))]
    )
    assert kinds.count("attempt.succeeded") == 1
    assert kinds.count("report.rejected") == 2


def test_a_late_outcome_on_a_finished_attempt_is_recorded_as_ignored(store: Store) -> None:
    """A second FINISHED (a new seq: e.g. the agent's provider saw the end twice) is not
    applied, but the history says it arrived. Regression: the message once read "ignoreed"
    (built as ``f"{verdict}ed"``)."""
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    done = report(attempt, 2, "finished", outcome="SUCCEEDED", result_json="1")
    apply(store, "a1", [report(attempt, 1, "running"), done])
    late = report(attempt, 3, "finished", outcome="FAILED", error=TRANSIENT)
    watermark, decisions, effects = apply(store, "a1", [late], T0 + dt.timedelta(seconds=9))
    # Acked (the agent stops resending it) but changes nothing.
    assert watermark == 3 and decisions == [] and not effects.released_slots
    assert attempts(store, step_id)[0].state == "SUCCEEDED"
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "COMPLETED"
    ignored = store.run_sync(
        lambda s: list(s.scalars(select(EventRow).where(EventRow.kind == "report.ignored")))
    )
    assert len(ignored) == 1
    event = ignored[0]
    assert event.kind == EventKind.REPORT_IGNORED
    assert (event.flow_run_id, event.attempt_id) == (run_id, attempt.id)
    assert event.message == ("finished report from agent a1 ignored: attempt already SUCCEEDED")
    assert "ignoreed" not in event.message
    assert event.details == {"agent_id": "a1", "token": attempt.fencing_token, "seq": 3}


def test_a_late_log_report_on_a_finished_attempt_is_ignored_without_an_event(
    store: Store,
) -> None:
    """Only late outcomes are worth a line in the history; late log lines are dropped."""
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    done = report(attempt, 2, "finished", outcome="SUCCEEDED", result_json="1")
    apply(store, "a1", [report(attempt, 1, "running"), done])
    watermark, _, _ = apply(store, "a1", [report(attempt, 3, "logs")])
    assert watermark == 3
    kinds = store.run_sync(lambda s: [e.kind for e in s.scalars(select(EventRow))])
    assert "report.ignored" not in kinds and "report.rejected" not in kinds


def test_inputs_conflict_for_same_key_is_refused(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)
    other = StepSubmission(key="extract#1", spec=spec(), inputs_json='{"args": [2], "kwargs": {}}')
    with pytest.raises(ConflictError, match="different inputs"):
        run_at(store, T0, submit_steps, run_id, [other])


def test_unschedulable_target_fails_with_known_environments(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=azure", schedule_timeout_s=5.0)
    effects, next_timer = schedule(store)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=5)
    schedule(store, T0 + dt.timedelta(seconds=5))
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error.error_class == "scheduling"
    assert "aws-demo" in step.error.message and "gcp-demo" in step.error.message


def lose_agent(store: Store, seconds: float = 31.0) -> Effects:
    later = T0 + dt.timedelta(seconds=seconds)
    return run_at(store, later, expire_agent_leases, 30.0, T0)[1]


def test_lost_agent_attempt_is_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    assert not lose_agent(store, 29.0).released_slots  # within lost_after: keeps its attempt
    effects = lose_agent(store)
    assert effects.released_slots == {"a1": 1}
    first, second = attempts(store, step_id)
    assert first.state == "LOST" and first.error is not None
    assert first.error.error_class == "lost_agent"
    assert second.state == "QUEUED"
    agent = store.run_sync(lambda s: s.get(AgentRow, "a1"))
    assert agent.status == "lost"


def test_lost_agent_policy_fail_and_wait(store: Store) -> None:
    run_id = new_run(store)
    failing = submit(store, run_id, key="a#1", on_agent_lost="fail")
    waiting = submit(store, run_id, key="b#1", on_agent_lost="wait")
    schedule(store)
    lose_agent(store)
    assert store.run_sync(lambda s: s.get(StepRunRow, failing)).state == "FAILED"
    assert [a.state for a in attempts(store, waiting)] == ["ASSIGNED"]


def test_per_step_lost_after(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, lost_after_s=120.0)
    schedule(store)
    lose_agent(store, 60.0)
    assert [a.state for a in attempts(store, step_id)] == ["ASSIGNED"]
    lose_agent(store, 121.0)
    assert attempts(store, step_id)[0].state == "LOST"


def test_finish_run_cancels_unfinished_steps(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    state, effects = run_at(
        store, T0, finish_run, run_id, succeeded=True, result_json="null", error=None
    )
    assert state == "COMPLETED"
    assert [c.agent_id for c in effects.cancels] == ["a1"]
    # The step ends only when its agent confirms the cancel.
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "PENDING"
    attempt = attempts(store, step_id)[0]
    apply(store, "a1", [report(attempt, 1, "finished", outcome="CANCELLED")], T0)
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "CANCELLED"
