"""Run-level resilience in the store: runner leases, cancel, resume and retry."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, StepRunRow
from control_plane.usecases.agents import HelloIn, agent_connected
from control_plane.usecases.runs import (
    cancel_run,
    crash_runs_with_lapsed_leases,
    finish_run,
    renew_runner_lease,
    resume_run,
    retry_run,
)
from control_plane.usecases.steps import submit_steps
from meridian.core.errorinfo import ErrorInfo
from tests.control_plane.usecases.helpers import (
    T0,
    apply,
    attempts,
    holder,
    new_run,
    report,
    run_at,
    schedule,
    spec,
    submit,
)


def run_state(store: Store, run_id: str) -> str:
    """The run's state as stored now."""
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id)).state


def finish(store: Store, step_id: str, seq: int, outcome: str, **kw: object) -> None:
    """The step's latest attempt starts and ends with ``outcome`` (reports ``seq``, ``seq+1``)."""
    attempt = attempts(store, step_id)[-1]
    reports = [
        report(attempt, seq, "running"),
        report(attempt, seq + 1, "finished", outcome=outcome, **kw),
    ]
    apply(store, holder(attempt), reports, T0)


def test_lapsed_runner_lease_crashes_the_run_but_not_its_steps(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    run_at(store, T0, renew_runner_lease, run_id, 30.0)
    # Within the grace after a control-plane start nothing crashes.
    later = T0 + dt.timedelta(seconds=31)
    run_at(store, later, crash_runs_with_lapsed_leases, T0, 60.0)
    assert run_state(store, run_id) == "RUNNING"
    much_later = T0 + dt.timedelta(seconds=90)
    run_at(store, much_later, crash_runs_with_lapsed_leases, T0, 60.0)
    assert run_state(store, run_id) == "CRASHED"
    finish(store, step_id, 1, "SUCCEEDED", result_json="5")
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "COMPLETED"


def test_cancel_waits_for_every_agent_to_confirm(store: Store) -> None:
    run_id = new_run(store)
    held = submit(store, run_id, key="held#1")
    schedule(store)
    queued = submit(store, run_id, key="queued#1", target="cloud=azure")
    (run, waiting), effects = run_at(store, T0, cancel_run, run_id, "operator said so")
    assert run.state == "CANCELLING" and waiting == 1
    assert [c.attempt_id for c in effects.cancels] == [attempts(store, held)[0].id]
    assert attempts(store, queued)[0].state == "CANCELLED"
    attempt = attempts(store, held)[0]
    confirm = report(attempt, 1, "finished", outcome="CANCELLED")
    apply(store, "a1", [confirm], T0)
    assert run_state(store, run_id) == "CANCELLED"
    states = store.run_sync(lambda s: {r.key: r.state for r in s.scalars(select(StepRunRow))})
    assert states == {"held#1": "CANCELLED", "queued#1": "CANCELLED"}


def test_cancel_of_a_run_with_nothing_running_is_immediate(store: Store) -> None:
    run_id = new_run(store)
    (run, waiting), _ = run_at(store, T0, cancel_run, run_id, "")
    assert run.state == "CANCELLED" and waiting == 0


def test_resume_reuses_completed_steps_and_reruns_failed_ones(store: Store) -> None:
    run_id = new_run(store)
    done = submit(store, run_id, key="done#1")
    failed = submit(store, run_id, key="failed#1", retries=0)
    schedule(store)
    finish(store, done, 1, "SUCCEEDED", result_json='{"ok": 1}')
    error = {
        "error_class": "permanent",
        "type": "x.E",
        "message": "bad",
        "traceback": "",
        "type_mro": [],
    }
    finish(store, failed, 3, "FAILED", error=error)
    run_at(
        store,
        T0,
        finish_run,
        run_id,
        succeeded=False,
        result_json="",
        error=ErrorInfo.from_json(error),
    )
    later = T0 + dt.timedelta(seconds=5)
    (run, watermark), _ = run_at(store, later, resume_run, run_id)
    assert run.state == "RUNNING" and watermark > 0
    subs = [
        StepSubmission(key=k, spec=spec(), inputs_json='{"args": [1], "kwargs": {}}')
        for k in ("done#1", "failed#1")
    ]
    answers, _ = run_at(store, later, submit_steps, run_id, subs)
    by_key = {a.key: a for a in answers}
    assert by_key["done#1"].state == "COMPLETED" and by_key["done#1"].result_json == '{"ok": 1}'
    assert by_key["failed#1"].state == "PENDING"
    assert [a.state for a in attempts(store, failed)] == ["FAILED", "QUEUED"]
    assert len(attempts(store, done)) == 1


def test_retry_is_a_new_run_that_reuses_nothing(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)
    new, _ = run_at(store, T0, retry_run, run_id)
    assert new.id != run_id and new.retry_of == run_id and new.trigger == "retry"
    steps = store.run_sync(
        lambda s: s.scalars(select(StepRunRow).where(StepRunRow.flow_run_id == new.id)).all()
    )
    assert steps == []


def test_reconnecting_agent_is_told_again_to_stop_work_of_a_cancelled_run(store: Store) -> None:
    run_id = new_run(store)
    running = submit(store, run_id, key="running#1")
    queued_for_agent = submit(store, run_id, key="assigned#1")
    schedule(store)
    held = attempts(store, running)[0]
    apply(store, holder(held), [report(held, 1, "running")], T0)
    # The Cancel frames of this cancel are lost: the agent's stream is gone.
    run_at(store, T0, cancel_run, run_id, "operator")
    hello = HelloIn("0.1", {"cloud": "aws"}, ("process",), 2, {held.id: held.fencing_token},
                    "host", False)  # fmt: skip
    _, effects = run_at(store, T0, agent_connected, held.agent_id, "", hello)
    assert [(c.attempt_id, c.reason) for c in effects.cancels] == [(held.id, "run is CANCELLING")]
    assert not effects.decisions and not effects.assigns
    # The assignment it never received is not sent again: it ends as cancelled.
    assert attempts(store, queued_for_agent)[0].state == "CANCELLED"
