"""Firing schedules in a real store (SQLite, and PostgreSQL when configured), with the clock
passed in: each slot once, whatever repeats or rolls back, catch-up per policy, pause and
resume without a burst, jitter, and slots a deployment refuses (decision 0019)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.deployment_specs import DeploymentSpec, ScheduleSpec
from control_plane.orchestration.schedules import jitter, slot_key
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, ScheduleFireRow, ScheduleRow
from control_plane.store.tx import Tx
from control_plane.usecases.deployments import create_deployment, set_paused
from control_plane.usecases.schedules import (
    Evaluation,
    catch_up_policy,
    fire_due_schedule,
    next_schedule_due,
)
from meridian.core.errors import ValidationError
from tests.control_plane.usecases.helpers import T0, run_at

MINUTE = dt.timedelta(minutes=1)
SCHEMA: dict[str, Any] = {
    "version": 1,
    "accepts_any": False,
    "parameters": [{"name": "n", "type": {"kind": "int"}, "required": True}],
}
EVERY_MINUTE = {"kind": "interval", "every_seconds": 60, "anchor": T0.isoformat()}


def deploy(store: Store, now: dt.datetime = T0, every_s: int = 60, **schedule: Any) -> str:
    """Deploy "every-minute" with one interval schedule (options in ``schedule``); returns
    the schedule id."""
    definition = {**EVERY_MINUTE, "every_seconds": every_s}
    overrides = {k: v for k, v in schedule.items() if k in {"concurrency", "overflow"}}
    options = {k: v for k, v in schedule.items() if k not in overrides}
    spec = DeploymentSpec(
        name="every-minute",
        flow_name="etl",
        entrypoint="flows.py:etl",
        bundle_sha256="b" * 64,
        parameter_schema=SCHEMA,
        schedules=(ScheduleSpec("", definition, {"n": 1}, **options),),
        concurrency=overrides.get("concurrency", 0),
        concurrency_overflow=overrides.get("overflow", "queue"),
    )
    (_, stored), _ = run_at(store, now, create_deployment, spec)
    return stored.schedules[0].schedule_id


def fire_all(store: Store, now: dt.datetime) -> list[Evaluation]:
    """What the dispatcher does when woken at ``now``: evaluate due schedules until none."""
    done = []
    while (evaluation := run_at(store, now, fire_due_schedule)[0]) is not None:
        done.append(evaluation)
        assert len(done) < 100
    return done


def runs(store: Store) -> list[FlowRunRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(FlowRunRow).order_by(FlowRunRow.created_at)))
    )


def fires(store: Store) -> list[ScheduleFireRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(ScheduleFireRow).order_by(ScheduleFireRow.nominal_at)))
    )


def slots_of_runs(store: Store) -> list[str]:
    return sorted((r.trigger_detail or {})["detail"]["slot"] for r in runs(store))


def schedule_row(store: Store, schedule_id: str) -> ScheduleRow:
    return store.run_sync(lambda s: s.get(ScheduleRow, schedule_id))


def audit_actions(store: Store) -> list[str]:
    return [r.action for r in store.run_sync(lambda s: audit.list_records(s, limit=1000))]


def test_each_slot_fires_once_with_its_key_in_the_run_and_the_fire_row(store: Store) -> None:
    sid = deploy(store)
    assert store.run_sync(next_schedule_due) == T0 + MINUTE
    assert fire_all(store, T0 + MINUTE - dt.timedelta(seconds=1)) == []
    fire_all(store, T0 + MINUTE)
    fire_all(store, T0 + MINUTE)  # woken again at the same instant: nothing new
    fire_all(store, T0 + 2 * MINUTE + dt.timedelta(seconds=5))
    keys = [slot_key(sid, T0 + MINUTE), slot_key(sid, T0 + 2 * MINUTE)]
    assert slots_of_runs(store) == keys
    assert [(f.slot_key, f.reason) for f in fires(store)] == [(k, "") for k in keys]
    run = runs(store)[0]
    assert run.state == "PENDING" and run.wants_runner and run.trigger == "schedule"
    assert (run.trigger_detail or {})["actor"] == f"schedule:{sid}"
    assert run.start_after == T0 + MINUTE  # no jitter: the nominal time
    assert store.run_sync(next_schedule_due) == T0 + 3 * MINUTE
    assert audit_actions(store).count("deployment.triggered") == 2


def test_an_evaluation_from_an_older_cursor_creates_no_second_run(store: Store) -> None:
    sid = deploy(store)
    fire_all(store, T0 + MINUTE)

    def rewind(session: Any) -> None:  # as if the cursor's update had been lost
        row = session.get(ScheduleRow, sid)
        row.evaluated_through, row.next_fire_at = T0, T0 + MINUTE

    store.run_sync(rewind)
    (evaluation,) = fire_all(store, T0 + MINUTE)
    assert evaluation.fired[0].flow_run_id == runs(store)[0].id  # the first run, not a new one
    assert len(runs(store)) == 1 and len(fires(store)) == 1


def test_a_rolled_back_evaluation_leaves_no_trace_and_the_slot_fires_later(store: Store) -> None:
    sid = deploy(store)

    def crash_before_commit(session: Any) -> None:
        evaluation = fire_due_schedule(Tx(session, now=T0 + MINUTE))
        assert evaluation is not None and evaluation.fired[0].flow_run_id
        raise RuntimeError("the control plane died before the commit")

    with pytest.raises(RuntimeError):
        store.run_sync(crash_before_commit)
    assert runs(store) == [] and fires(store) == []
    assert schedule_row(store, sid).evaluated_through == T0
    fire_all(store, T0 + MINUTE + dt.timedelta(seconds=2))
    assert slots_of_runs(store) == [slot_key(sid, T0 + MINUTE)]


def test_catch_up_skip_fires_only_an_on_time_slot_and_records_the_gap(store: Store) -> None:
    sid = deploy(store, every_s=300)
    # Down for 50 minutes; woken 10 s after a slot (within the default grace of 1 min).
    fire_all(store, T0 + 50 * MINUTE + dt.timedelta(seconds=10))
    assert slots_of_runs(store) == [slot_key(sid, T0 + 50 * MINUTE)]
    assert "schedule.slots_skipped" in audit_actions(store)
    # Down again, woken 90 s after the last slot: late, so skip fires nothing.
    fire_all(store, T0 + 100 * MINUTE + dt.timedelta(seconds=90))
    assert len(runs(store)) == 1
    assert schedule_row(store, sid).next_fire_at == T0 + 105 * MINUTE


def test_catch_up_latest_fires_the_most_recent_missed_slot(store: Store) -> None:
    sid = deploy(store, every_s=300, catch_up="latest")
    fire_all(store, T0 + 50 * MINUTE + dt.timedelta(seconds=90))
    assert slots_of_runs(store) == [slot_key(sid, T0 + 50 * MINUTE)]


def test_catch_up_all_is_bounded_by_window_and_max_runs_and_loses_nothing(store: Store) -> None:
    sid = deploy(store, catch_up="all", catch_up_window_s=300, max_catch_up_runs=3)
    now = T0 + 10 * MINUTE + dt.timedelta(seconds=30)
    evaluations = fire_all(store, now)
    # The window holds the slots of minutes 6..10; three per evaluation, oldest first.
    assert [len(e.fired) for e in evaluations] == [3, 2]
    assert slots_of_runs(store) == [slot_key(sid, T0 + m * MINUTE) for m in range(6, 11)]
    assert evaluations[0].skipped == (T0, now - 5 * MINUTE)


def test_pause_and_resume_fire_nothing_for_the_paused_time(store: Store) -> None:
    sid = deploy(store)
    fire_all(store, T0 + MINUTE)
    run_at(store, T0 + MINUTE + dt.timedelta(seconds=1), set_paused, "every-minute", True)
    assert fire_all(store, T0 + 5 * MINUTE) == []
    resumed = T0 + 10 * MINUTE + dt.timedelta(seconds=10)  # 10 s after a slot: no catch-up
    run_at(store, resumed, set_paused, "every-minute", False)
    fire_all(store, resumed)
    assert len(runs(store)) == 1
    fire_all(store, T0 + 11 * MINUTE)
    assert slots_of_runs(store) == [slot_key(sid, T0 + m * MINUTE) for m in (1, 11)]


def test_jitter_delays_the_start_by_the_slots_own_amount(store: Store) -> None:
    sid = deploy(store, jitter_s=30.0)
    fire_all(store, T0 + MINUTE)
    key = slot_key(sid, T0 + MINUTE)
    delay = jitter(key, dt.timedelta(seconds=30), MINUTE)
    (run,) = runs(store)
    assert run.start_after == T0 + MINUTE + delay
    assert dt.timedelta(0) <= delay < dt.timedelta(seconds=30)


def test_a_slot_refused_by_the_concurrency_limit_keeps_a_fire_row_with_the_reason(
    store: Store,
) -> None:
    sid = deploy(store, concurrency=1, overflow="skip")
    fire_all(store, T0 + MINUTE)
    fire_all(store, T0 + 2 * MINUTE)  # the first run is still PENDING
    first, second = fires(store)
    assert first.flow_run_id is not None and first.reason == ""
    assert second.flow_run_id is None and "concurrency" in second.reason
    assert second.slot_key == slot_key(sid, T0 + 2 * MINUTE)
    assert len(runs(store)) == 1
    fire_all(store, T0 + 2 * MINUTE)  # handled: never retried
    assert len(fires(store)) == 2


def test_catch_up_settings_are_checked() -> None:
    assert catch_up_policy({}).mode.value == "skip"
    policy = catch_up_policy({"mode": "all", "window_s": 600, "max_runs": 4})
    assert policy.window == dt.timedelta(minutes=10) and policy.max_runs == 4
    for bad in ({"mode": "some"}, {"window_s": -1}, {"window_s": 1e30}, {"max_runs": 1.5}):
        with pytest.raises(ValidationError):
            catch_up_policy(bad)


def test_a_schedule_that_no_longer_decodes_is_disabled_and_audited(store: Store) -> None:
    sid = deploy(store)

    def corrupt(session: Any) -> None:
        row = session.get(ScheduleRow, sid)
        row.definition = {**dataclasses.asdict(ScheduleSpec("", {}, {})), "kind": "sometimes"}

    store.run_sync(corrupt)
    (evaluation,) = fire_all(store, T0 + MINUTE)
    assert evaluation.problem and not schedule_row(store, sid).active
    assert "schedule.disabled" in audit_actions(store)
    assert store.run_sync(next_schedule_due) is None
