"""Approvals in the store (SQLite and PostgreSQL): ask, decide, time out, and the PAUSED run."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from control_plane.orchestration.values import Effects
from control_plane.store.db import Store
from control_plane.store.models import ApprovalRow, AuditRecordRow, EventRow, FlowRunRow
from control_plane.usecases.agents import HelloIn, agent_connected
from control_plane.usecases.approvals import (
    decide_approval,
    expire_approvals,
    request_approval,
)
from control_plane.usecases.runs import (
    cancel_run,
    crash_runs_with_lapsed_leases,
    finish_run,
    renew_runner_lease,
    resume_run,
)
from meridian.core.errorinfo import ErrorInfo
from meridian.core.errors import ConflictError, NotFound
from meridian.core.states import RunState
from tests.control_plane.usecases.helpers import (
    T0,
    apply,
    attempts,
    holder,
    new_run,
    report,
    run_as,
    run_at,
    schedule,
    submit,
)


def at(seconds: float) -> dt.datetime:
    """``seconds`` after ``T0``."""
    return T0 + dt.timedelta(seconds=seconds)


def run_state(store: Store, run_id: str) -> str:
    """The run's state as stored now."""
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id)).state


def kinds(store: Store, run_id: str) -> list[str]:
    """The kinds of the run's events, oldest first."""
    return store.run_sync(
        lambda s: [
            e.kind
            for e in s.scalars(
                select(EventRow).where(EventRow.flow_run_id == run_id).order_by(EventRow.id)
            )
        ]
    )


Answer = tuple[ApprovalRow, RunState, Effects]


def ask(
    store: Store, run_id: str, key: str = "deploy#1", timeout_s: float = 0.0, now: float = 1
) -> Answer:
    """The run's body asks for ``key`` at ``at(now)``: (approval, run state, effects)."""
    (approval, state), effects = run_at(
        store, at(now), request_approval, run_id, key, "ship it?", timeout_s
    )
    return approval, state, effects


def decide(
    store: Store, run_id: str, key: str = "deploy#1", approve: bool = True, reason: str = "ok"
) -> Answer:
    """Operator ``token:op1`` decides ``key`` at ``at(2)``: (approval, run state, effects)."""
    (approval, state), effects = run_as(
        store, "token:op1", at(2), decide_approval, run_id, key, approve, reason
    )
    return approval, state, effects


def expire(store: Store, now: dt.datetime) -> tuple[Effects, dt.datetime | None]:
    """The dispatcher's approval timer fires at ``now``: (effects, next deadline)."""
    next_due, effects = run_at(store, now, expire_approvals)
    return effects, next_due


def audit_actions(store: Store) -> list[tuple[str, str, str]]:
    """(action, actor, subject) of the run audit records other than the trigger."""
    return store.run_sync(
        lambda s: [
            (r.action, r.actor, r.subject)
            for r in s.scalars(select(AuditRecordRow).order_by(AuditRecordRow.id))
            if r.action.startswith("run.") and r.action != "run.triggered"
        ]
    )


def test_asking_pauses_the_run_and_asking_again_changes_nothing(store: Store) -> None:
    run_id = new_run(store)
    approval, state, effects = ask(store, run_id, timeout_s=60)
    assert (approval.state, state) == ("pending", "PAUSED")
    assert approval.deadline == at(61) and effects.timers == [at(61)]
    before = kinds(store, run_id)
    assert before[-2:] == ["approval.requested", "run.paused"]
    (again, state), effects = run_at(
        store, at(3), request_approval, run_id, "deploy#1", "another message", 5.0
    )
    assert (again.state, state, again.message, again.deadline) == (
        "pending",
        "PAUSED",
        "ship it?",
        at(61),
    )
    assert kinds(store, run_id) == before and not effects.timers


def test_approving_resumes_the_run_and_is_audited_with_the_caller(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id)
    approval, state, _ = decide(store, run_id, reason="looks right")
    assert (approval.state, approval.decided_by, approval.reason, state) == (
        "approved",
        "token:op1",
        "looks right",
        "RUNNING",
    )
    assert kinds(store, run_id)[-2:] == ["approval.approved", "run.running"]
    assert audit_actions(store) == [("run.approved", "token:op1", run_id)]
    # The same decision again is a no-op (no second record); another one is refused.
    assert decide(store, run_id, reason="again")[0].reason == "looks right"
    assert len(audit_actions(store)) == 1
    with pytest.raises(ConflictError, match="already approved"):
        decide(store, run_id, approve=False, reason="changed my mind")
    # A body that asks again (a replay) gets the decision; the run stays RUNNING.
    answered, state, _ = ask(store, run_id, now=5)
    assert (answered.state, state) == ("approved", "RUNNING")


def test_rejecting_records_the_reason_and_names_are_enough_when_unambiguous(
    store: Store,
) -> None:
    run_id = new_run(store)
    ask(store, run_id)
    rejected, state, _ = decide(store, run_id, key="deploy", approve=False, reason="not today")
    assert (rejected.key, rejected.state, rejected.reason, state) == (
        "deploy#1",
        "rejected",
        "not today",
        "RUNNING",
    )
    assert audit_actions(store) == [("run.rejected", "token:op1", run_id)]
    with pytest.raises(NotFound, match="no approval 'nope'"):
        decide(store, run_id, key="nope")


def test_a_run_waiting_for_two_approvals_stays_paused_until_both_are_decided(
    store: Store,
) -> None:
    run_id = new_run(store)
    ask(store, run_id, "a#1")
    ask(store, run_id, "b#1")
    assert decide(store, run_id, "a#1")[1] == "PAUSED"
    assert decide(store, run_id, "b#1")[1] == "RUNNING"


def test_timeouts_are_stored_timers(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id, "slow#1", timeout_s=10)
    ask(store, run_id, "fast#1", timeout_s=5)
    effects, next_due = expire(store, at(2))
    assert next_due == at(6) and not effects.touched_runs
    effects, next_due = expire(store, at(6))
    assert next_due == at(11) and effects.touched_runs == {run_id}
    assert run_state(store, run_id) == "PAUSED"  # slow#1 still waits
    _, next_due = expire(store, at(11))
    assert next_due is None and run_state(store, run_id) == "RUNNING"
    rows = store.run_sync(lambda s: {a.key: a for a in s.scalars(select(ApprovalRow))})
    assert {k: (a.state, a.decided_by) for k, a in rows.items()} == {
        "slow#1": ("timed_out", "system"),
        "fast#1": ("timed_out", "system"),
    }
    with pytest.raises(ConflictError, match="already timed_out"):
        decide(store, run_id, "fast#1")


def test_cancelling_a_paused_run_ends_it_and_closes_its_approvals(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id, timeout_s=5)
    (run, waiting), _ = run_at(store, at(2), cancel_run, run_id, "stop")
    assert (run.state, waiting) == ("CANCELLED", 0)
    with pytest.raises(ConflictError, match="is CANCELLED"):
        decide(store, run_id)
    with pytest.raises(ConflictError, match="only a RUNNING run"):
        ask(store, run_id, now=3)
    # The timer of an ended run's approval waits for nobody.
    effects, next_due = expire(store, at(60))
    assert next_due is None and not effects.touched_runs


def test_a_paused_run_keeps_its_lease_and_crashes_only_when_its_runner_stops(
    store: Store,
) -> None:
    alive, dead = new_run(store), new_run(store)
    ask(store, alive)
    ask(store, dead)
    (state, expires), _ = run_at(store, at(50), renew_runner_lease, alive, 30.0)
    assert state == "PAUSED" and expires == at(80)
    run_at(store, at(75), crash_runs_with_lapsed_leases, T0, 1.0)
    assert (run_state(store, alive), run_state(store, dead)) == ("PAUSED", "CRASHED")


def test_a_decision_taken_while_crashed_is_reused_after_resume(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id)
    run_at(store, at(120), crash_runs_with_lapsed_leases, T0, 1.0)
    approval, state, _ = decide(store, run_id)
    assert (approval.state, state) == ("approved", "CRASHED")
    run_at(store, at(130), resume_run, run_id)
    answered, state, _ = ask(store, run_id, now=131)
    assert (answered.state, state) == ("approved", "RUNNING")


def test_after_resume_only_approvals_asked_again_keep_the_run_paused(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id, "old#1")
    run_at(store, at(120), crash_runs_with_lapsed_leases, T0, 1.0)
    run_at(store, at(130), resume_run, run_id)
    # The replayed body takes another path: it asks for new#1, never for old#1 again.
    assert ask(store, run_id, "new#1", now=131)[1] == "PAUSED"
    assert decide(store, run_id, "new#1")[1] == "RUNNING"
    # Asking for a pending approval again after a resume pauses the run again.
    answered, state, _ = ask(store, run_id, "old#1", now=140)
    assert (answered.state, state) == ("pending", "PAUSED")


def test_steps_of_a_paused_run_keep_running_and_retrying(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=2)
    schedule(store)
    ask(store, run_id)
    attempt = attempts(store, step_id)[0]
    error = {"error_class": "transient", "type": "x.E", "message": "blip", "traceback": ""}
    reports = [
        report(attempt, 1, "running"),
        report(attempt, 2, "finished", outcome="FAILED", error=error),
    ]
    apply(store, holder(attempt), reports, T0)
    assert [a.state for a in attempts(store, step_id)] == ["FAILED", "QUEUED"]
    # An agent reconnecting with work of a paused run is not told to cancel it.
    schedule(store, at(5))
    held = attempts(store, step_id)[1]
    hello = HelloIn("0.1", {"cloud": "aws"}, ("process",), 2, {held.id: held.fencing_token},
                    "host", False)  # fmt: skip
    _, effects = run_at(store, at(6), agent_connected, held.agent_id, "", hello)
    assert not effects.cancels
    # New steps wait until the body is running again.
    with pytest.raises(ConflictError, match="PAUSED"):
        submit(store, run_id, key="later#1")


def test_a_body_interrupted_while_waiting_can_still_finish_the_run(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id)
    error = ErrorInfo("cancelled", "KeyboardInterrupt", "")
    state, _ = run_at(
        store, at(3), finish_run, run_id, succeeded=False, result_json="", error=error
    )
    assert state == "FAILED"


def test_the_deadline_does_not_restart_when_a_resumed_body_asks_again(store: Store) -> None:
    run_id = new_run(store)
    ask(store, run_id, timeout_s=5)
    run_at(store, at(2), cancel_run, run_id, "stop")
    run_at(store, at(60), resume_run, run_id)
    approval, state, effects = ask(store, run_id, timeout_s=5, now=61)
    assert (approval.state, state) == ("pending", "PAUSED")
    assert effects.timers == [at(6)]  # the dispatcher is told: it is due already
    expire(store, at(61))
    assert run_state(store, run_id) == "RUNNING"
    assert ask(store, run_id, now=62)[0].state == "timed_out"
