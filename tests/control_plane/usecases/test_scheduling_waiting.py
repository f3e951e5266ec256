"""A scheduling pass says why a queued attempt waits: an attempt.waiting event within the pass,
once per run, target, provider and distinct reason (a fan-out waiting for free slots writes one
event, not one per attempt), and the schedule timeout still applies."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import select

from control_plane.store.db import Store
from control_plane.store.models import EventRow
from control_plane.usecases.scheduling import scheduling_pass
from meridian.core.kinds import EventKind
from tests.control_plane.usecases.helpers import SLOTS, T0, attempts, new_run, run_at, submit


def waiting_events(store: Store, run_id: str) -> list[EventRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow)
                .where(
                    EventRow.flow_run_id == run_id,
                    EventRow.kind == EventKind.ATTEMPT_WAITING.value,
                )
                .order_by(EventRow.id)
            )
        )
    )


def test_a_typo_is_explained_in_the_first_pass_and_only_once(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=AWS", schedule_timeout_s=600.0)
    _, effects = run_at(store, T0, scheduling_pass, SLOTS)
    assert run_id in effects.touched_runs  # watchers (meridian run's progress) hear it
    for _ in range(3):
        run_at(store, T0 + dt.timedelta(seconds=1), scheduling_pass, SLOTS)
    events = waiting_events(store, run_id)
    assert len(events) == 1
    assert events[0].details == {
        "reason": "no_match",
        "target": "cloud=AWS",
        "provider": "process",
        "attempts": 1,
    }
    assert "did you mean cloud=aws?" in events[0].message
    assert events[0].attempt_id == attempts(store, step_id)[0].id
    assert events[0].step_key == "extract#1"


def test_a_new_reason_is_recorded_and_assigned_attempts_get_none(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id, target="cloud=aws", schedule_timeout_s=600.0)
    draining = [dataclasses.replace(s, draining=True) for s in SLOTS]
    run_at(store, T0, scheduling_pass, draining)
    run_at(store, T0, scheduling_pass, draining)
    full = [dataclasses.replace(s, in_use=s.capacity) for s in SLOTS]
    run_at(store, T0, scheduling_pass, full)
    run_at(store, T0, scheduling_pass, [])  # the agent's stream went silent
    run_at(store, T0, scheduling_pass, SLOTS)  # assigned now
    run_at(store, T0, scheduling_pass, SLOTS)
    reasons = [e.details["reason"] for e in waiting_events(store, run_id) if e.details]
    assert reasons == ["draining", "full", "disconnected"]


def test_the_schedule_timeout_still_fails_the_step_with_the_reason(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=aws", provider="slurm", schedule_timeout_s=5.0)
    run_at(store, T0, scheduling_pass, SLOTS)
    run_at(store, T0 + dt.timedelta(seconds=6), scheduling_pass, SLOTS)
    [attempt] = attempts(store, step_id)
    assert attempt.state == "FAILED"
    assert attempt.error is not None and '"slurm"' in attempt.error.message
    assert [e.details["reason"] for e in waiting_events(store, run_id) if e.details] == [
        "no_provider"
    ]


def test_a_fan_out_waiting_for_slots_is_explained_by_one_event(store: Store) -> None:
    run_id = new_run(store)
    for n in range(1, 31):
        submit(store, run_id, key=f"extract#{n}", target="cloud=aws", schedule_timeout_s=600.0)
    full = [dataclasses.replace(s, in_use=s.capacity) for s in SLOTS]
    for _ in range(3):
        run_at(store, T0, scheduling_pass, full)
    [event] = waiting_events(store, run_id)
    assert event.details is not None
    assert (event.details["reason"], event.details["attempts"]) == ("full", 30)
    assert "30 queued attempts of this target" in event.message
