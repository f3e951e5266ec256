"""Orchestration engine against a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from control_plane.orchestration import engine
from control_plane.orchestration.values import Effects, ReportIn, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, EventRow, StepRunRow
from control_plane.usecases.agents import expire_agent_leases
from control_plane.usecases.scheduling import scheduling_pass
from meridian.core.errors import ConflictError
from tests.control_plane.engine_helpers import SLOTS, T0, attempts, new_run, report, spec, submit


def test_assigns_to_matching_agent_and_completes(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    effects, _ = store.run_sync(scheduling_pass, SLOTS, T0)
    assert [a.agent_id for a in effects.assigns] == ["a1"]
    attempt = attempts(store, step_id)[0]
    assert attempt.state == "ASSIGNED" and attempt.fencing_token == 1
    _, decisions, _ = store.run_sync(
        engine.apply_reports, "a1", [report(attempt, 1, "running")], T0
    )
    assert decisions[0].accept
    done = report(attempt, 2, "finished", outcome="SUCCEEDED", result_json='{"rows": 3}')
    watermark, _, effects = store.run_sync(engine.apply_reports, "a1", [done], T0)
    assert watermark == 2 and effects.released_slots == {"a1": 1}
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "COMPLETED" and json.loads(step.result_json) == {"rows": 3}


def test_transient_failure_is_retried_after_backoff_then_final(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=1)
    store.run_sync(scheduling_pass, SLOTS, T0)
    first = attempts(store, step_id)[0]
    error = {
        "error_class": "transient",
        "type": "builtins.ValueError",
        "message": "boom",
        "traceback": "tb",
        "type_mro": ["builtins.ValueError", "builtins.Exception"],
    }
    store.run_sync(
        engine.apply_reports,
        "a1",
        [report(first, 1, "running"), report(first, 2, "finished", outcome="FAILED", error=error)],
        T0,
    )
    second = attempts(store, step_id)[1]
    assert second.state == "QUEUED" and second.not_before == T0 + dt.timedelta(seconds=1)
    effects, next_timer = store.run_sync(scheduling_pass, SLOTS, T0)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=1)
    later = T0 + dt.timedelta(seconds=1)
    effects, _ = store.run_sync(scheduling_pass, SLOTS, later)
    second = attempts(store, step_id)[1]
    assert second.fencing_token == 2
    store.run_sync(
        engine.apply_reports,
        "a1",
        [
            report(second, 3, "running"),
            report(second, 4, "finished", outcome="FAILED", error=error),
        ],
        later,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error["type"] == "builtins.ValueError"
    assert len(attempts(store, step_id)) == 2


def test_permanent_error_is_not_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=5)
    store.run_sync(scheduling_pass, SLOTS, T0)
    attempt = attempts(store, step_id)[0]
    error = {
        "error_class": "permanent",
        "type": "meridian.core.errors.Permanent",
        "message": "no",
        "traceback": "",
        "type_mro": [],
    }
    store.run_sync(
        engine.apply_reports,
        "a1",
        [
            report(attempt, 1, "running"),
            report(attempt, 2, "finished", outcome="FAILED", error=error),
        ],
        T0,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and len(attempts(store, step_id)) == 1


def test_stale_token_foreign_agent_and_duplicate_seq_are_not_applied(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    attempt = attempts(store, step_id)[0]
    stale = ReportIn(seq=1, attempt_id=attempt.id, fencing_token=99, at=T0, kind="running")
    _, decisions, _ = store.run_sync(engine.apply_reports, "a1", [stale], T0)
    assert not decisions[0].accept and "stale fencing token" in decisions[0].reason
    _, decisions, _ = store.run_sync(
        engine.apply_reports, "g1", [report(attempt, 1, "running")], T0
    )
    assert not decisions[0].accept
    store.run_sync(engine.apply_reports, "a1", [report(attempt, 2, "running")], T0)
    done = report(attempt, 3, "finished", outcome="SUCCEEDED", result_json="1")
    store.run_sync(engine.apply_reports, "a1", [done], T0)
    # The same seq again (ack lost): applied once only.
    store.run_sync(engine.apply_reports, "a1", [done], T0)
    kinds = store.run_sync(
        lambda s: [e.kind for e in s.scalars(select(EventRow).order_by(EventRow.id))]
    )
    assert kinds.count("attempt.succeeded") == 1
    assert kinds.count("report.rejected") == 2


def test_inputs_conflict_for_same_key_is_refused(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)
    other = StepSubmission(key="extract#1", spec=spec(), inputs_json='{"args": [2], "kwargs": {}}')
    with pytest.raises(ConflictError, match="different inputs"):
        store.run_sync(engine.submit_steps, run_id, [other], T0, Effects())


def test_unschedulable_target_fails_with_known_environments(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=azure", schedule_timeout_s=5.0)
    effects, next_timer = store.run_sync(scheduling_pass, SLOTS, T0)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=5)
    store.run_sync(scheduling_pass, SLOTS, T0 + dt.timedelta(seconds=5))
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error["error_class"] == "scheduling"
    assert "aws-demo" in step.error["message"] and "gcp-demo" in step.error["message"]


def lose_agent(store: Store, seconds: float = 31.0) -> Effects:
    later = T0 + dt.timedelta(seconds=seconds)
    return store.run_sync(expire_agent_leases, later, 30.0, T0)


def test_lost_agent_attempt_is_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    assert not lose_agent(store, 29.0).released_slots  # within lost_after: keeps its attempt
    effects = lose_agent(store)
    assert effects.released_slots == {"a1": 1}
    first, second = attempts(store, step_id)
    assert first.state == "LOST" and first.error["error_class"] == "lost_agent"
    assert second.state == "QUEUED"
    agent = store.run_sync(lambda s: s.get(AgentRow, "a1"))
    assert agent.status == "lost"


def test_lost_agent_policy_fail_and_wait(store: Store) -> None:
    run_id = new_run(store)
    failing = submit(store, run_id, key="a#1", on_agent_lost="fail")
    waiting = submit(store, run_id, key="b#1", on_agent_lost="wait")
    store.run_sync(scheduling_pass, SLOTS, T0)
    lose_agent(store)
    assert store.run_sync(lambda s: s.get(StepRunRow, failing)).state == "FAILED"
    assert [a.state for a in attempts(store, waiting)] == ["ASSIGNED"]


def test_per_step_lost_after(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, lost_after_s=120.0)
    store.run_sync(scheduling_pass, SLOTS, T0)
    lose_agent(store, 60.0)
    assert [a.state for a in attempts(store, step_id)] == ["ASSIGNED"]
    lose_agent(store, 121.0)
    assert attempts(store, step_id)[0].state == "LOST"


def test_finish_run_cancels_unfinished_steps(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    effects = Effects()
    state = store.run_sync(
        lambda s: engine.finish_run(
            s, run_id, succeeded=True, result_json="null", error=None, now=T0, effects=effects
        )
    )
    assert state == "COMPLETED"
    assert [c.agent_id for c in effects.cancels] == ["a1"]
    # The step ends only when its agent confirms the cancel.
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "PENDING"
    attempt = attempts(store, step_id)[0]
    store.run_sync(
        engine.apply_reports, "a1", [report(attempt, 1, "finished", outcome="CANCELLED")], T0
    )
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "CANCELLED"
