"""Run-level resilience in the store: runner leases, cancel, resume and retry."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from control_plane.orchestration import engine
from control_plane.orchestration.values import Effects, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, StepRunRow
from control_plane.usecases.runs import (
    cancel_run,
    crash_runs_with_lapsed_leases,
    renew_runner_lease,
    resume_run,
    retry_run,
)
from control_plane.usecases.scheduling import scheduling_pass
from tests.control_plane.engine_helpers import (
    SLOTS,
    T0,
    attempts,
    new_run,
    report,
    spec,
    submit,
)


def run_state(store: Store, run_id: str) -> str:
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id)).state


def finish(store: Store, step_id: str, seq: int, outcome: str, **kw: object) -> None:
    attempt = attempts(store, step_id)[-1]
    reports = [
        report(attempt, seq, "running"),
        report(attempt, seq + 1, "finished", outcome=outcome, **kw),
    ]
    store.run_sync(engine.apply_reports, attempt.agent_id, reports, T0)


def test_lapsed_runner_lease_crashes_the_run_but_not_its_steps(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    store.run_sync(renew_runner_lease, run_id, 30.0, T0)
    # Within the grace after a control-plane start nothing crashes.
    later = T0 + dt.timedelta(seconds=31)
    store.run_sync(crash_runs_with_lapsed_leases, later, T0, 60.0)
    assert run_state(store, run_id) == "RUNNING"
    much_later = T0 + dt.timedelta(seconds=90)
    store.run_sync(crash_runs_with_lapsed_leases, much_later, T0, 60.0)
    assert run_state(store, run_id) == "CRASHED"
    finish(store, step_id, 1, "SUCCEEDED", result_json="5")
    assert store.run_sync(lambda s: s.get(StepRunRow, step_id)).state == "COMPLETED"


def test_cancel_waits_for_every_agent_to_confirm(store: Store) -> None:
    run_id = new_run(store)
    held = submit(store, run_id, key="held#1")
    store.run_sync(scheduling_pass, SLOTS, T0)
    queued = submit(store, run_id, key="queued#1", target="cloud=azure")
    run, waiting, effects = store.run_sync(cancel_run, run_id, "operator said so", T0)
    assert run.state == "CANCELLING" and waiting == 1
    assert [c.attempt_id for c in effects.cancels] == [attempts(store, held)[0].id]
    assert attempts(store, queued)[0].state == "CANCELLED"
    attempt = attempts(store, held)[0]
    confirm = report(attempt, 1, "finished", outcome="CANCELLED")
    store.run_sync(engine.apply_reports, "a1", [confirm], T0)
    assert run_state(store, run_id) == "CANCELLED"
    states = store.run_sync(lambda s: {r.key: r.state for r in s.scalars(select(StepRunRow))})
    assert states == {"held#1": "CANCELLED", "queued#1": "CANCELLED"}


def test_cancel_of_a_run_with_nothing_running_is_immediate(store: Store) -> None:
    run_id = new_run(store)
    run, waiting, _ = store.run_sync(cancel_run, run_id, "", T0)
    assert run.state == "CANCELLED" and waiting == 0


def test_resume_reuses_completed_steps_and_reruns_failed_ones(store: Store) -> None:
    run_id = new_run(store)
    done = submit(store, run_id, key="done#1")
    failed = submit(store, run_id, key="failed#1", retries=0)
    store.run_sync(scheduling_pass, SLOTS, T0)
    finish(store, done, 1, "SUCCEEDED", result_json='{"ok": 1}')
    error = {
        "error_class": "permanent",
        "type": "x.E",
        "message": "bad",
        "traceback": "",
        "type_mro": [],
    }
    finish(store, failed, 3, "FAILED", error=error)
    effects = Effects()
    store.run_sync(
        lambda s: engine.finish_run(
            s, run_id, succeeded=False, result_json="", error=error, now=T0, effects=effects
        )
    )
    later = T0 + dt.timedelta(seconds=5)
    run, watermark, _ = store.run_sync(resume_run, run_id, later)
    assert run.state == "RUNNING" and watermark > 0
    subs = [
        StepSubmission(key=k, spec=spec(), inputs_json='{"args": [1], "kwargs": {}}')
        for k in ("done#1", "failed#1")
    ]
    answers = store.run_sync(engine.submit_steps, run_id, subs, later, Effects())
    by_key = {a.key: a for a in answers}
    assert by_key["done#1"].state == "COMPLETED" and by_key["done#1"].result_json == '{"ok": 1}'
    assert by_key["failed#1"].state == "PENDING"
    assert [a.state for a in attempts(store, failed)] == ["FAILED", "QUEUED"]
    assert len(attempts(store, done)) == 1


def test_retry_is_a_new_run_that_reuses_nothing(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)
    new, _ = store.run_sync(retry_run, run_id, T0)
    assert new.id != run_id and new.retry_of == run_id and new.trigger == "retry"
    steps = store.run_sync(
        lambda s: s.scalars(select(StepRunRow).where(StepRunRow.flow_run_id == new.id)).all()
    )
    assert steps == []


def test_reconnecting_agent_is_told_again_to_stop_work_of_a_cancelled_run(store: Store) -> None:
    from control_plane.usecases.agents import HelloIn, agent_connected

    run_id = new_run(store)
    running = submit(store, run_id, key="running#1")
    queued_for_agent = submit(store, run_id, key="assigned#1")
    store.run_sync(scheduling_pass, SLOTS, T0)
    held = attempts(store, running)[0]
    store.run_sync(engine.apply_reports, held.agent_id, [report(held, 1, "running")], T0)
    # The Cancel frames of this cancel are lost: the agent's stream is gone.
    store.run_sync(cancel_run, run_id, "operator", T0)
    hello = HelloIn("0.1", {"cloud": "aws"}, ("process",), 2, {held.id: held.fencing_token},
                    "host", False)  # fmt: skip
    _, effects = store.run_sync(agent_connected, held.agent_id, "", hello, T0)
    assert [(c.attempt_id, c.reason) for c in effects.cancels] == [(held.id, "run is CANCELLING")]
    assert not effects.decisions and not effects.assigns
    # The assignment it never received is not sent again: it ends as cancelled.
    assert attempts(store, queued_for_agent)[0].state == "CANCELLED"
