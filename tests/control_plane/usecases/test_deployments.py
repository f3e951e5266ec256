"""Deployments in a real store (SQLite, and PostgreSQL when configured): versions, schedules
kept across versions, pause/resume/delete, triggers with validation, idempotency, skip
overflow and their audit records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from control_plane import audit
from control_plane.orchestration.deployment_specs import DeploymentSpec, ScheduleSpec
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, ScheduleRow
from control_plane.usecases.deployment_views import get_deployment, list_versions
from control_plane.usecases.deployments import (
    TriggerSource,
    create_deployment,
    delete_deployment,
    set_paused,
    trigger_deployment,
)
from meridian.core.errors import NotFound, ValidationError
from tests.control_plane.usecases.helpers import T0, run_at

SCHEMA: dict[str, Any] = {
    "version": 1,
    "accepts_any": False,
    "parameters": [
        {"name": "day", "type": {"kind": "date"}, "required": True},
        {"name": "n", "type": {"kind": "int"}, "required": False, "default": 3},
    ],
}
HOURLY = {"kind": "cron", "cron": "0 * * * *", "timezone": "Europe/Berlin"}
API = TriggerSource("api", "token:ops")


def spec(**overrides: Any) -> DeploymentSpec:
    base = DeploymentSpec(
        name="nightly",
        flow_name="etl",
        entrypoint="flows.py:etl",
        bundle_sha256="b" * 64,
        parameter_schema=SCHEMA,
        runner_target="pool=batch",
        parameters={"n": 5},
    )
    return dataclasses.replace(base, **overrides)


def hourly(**overrides: Any) -> ScheduleSpec:
    return dataclasses.replace(ScheduleSpec("", HOURLY, {"day": "2026-01-01"}), **overrides)


def deploy(store: Store, now: dt.datetime = T0, **overrides: Any) -> DeploymentSpec:
    (_, stored), _ = run_at(store, now, create_deployment, spec(**overrides))
    return stored


def schedule_rows(store: Store) -> list[ScheduleRow]:
    return store.run_sync(lambda s: list(s.query(ScheduleRow).order_by(ScheduleRow.id)))


def run_row(store: Store, run_id: str) -> FlowRunRow:
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id))


def actions(store: Store) -> list[str]:
    return [r.action for r in store.run_sync(lambda s: audit.list_records(s, limit=1000))]


def test_every_deploy_is_a_new_version_and_old_ones_stay_readable(store: Store) -> None:
    deploy(store)
    deploy(store, T0 + dt.timedelta(minutes=1), description="second", tags=("etl",))
    now = T0 + dt.timedelta(minutes=2)
    current = store.run_sync(get_deployment, "nightly", 0, now)
    first = store.run_sync(get_deployment, "nightly", 1, now)
    assert (current.version, current.spec.description, current.spec.tags) == (2, "second", ("etl",))
    assert (first.version, first.spec.description) == (1, "")
    assert [v.version for v in store.run_sync(list_versions, "nightly", now)] == [2, 1]
    assert actions(store).count("deployment.created") == 2


def test_a_schedule_deployed_again_keeps_its_id_and_cursor(store: Store) -> None:
    first = deploy(store, schedules=(hourly(),))
    schedule_id = first.schedules[0].schedule_id
    row = schedule_rows(store)[0]
    assert row.id == schedule_id and row.active
    assert row.next_fire_at is not None
    assert row.next_fire_at.replace(tzinfo=dt.UTC) == T0 + dt.timedelta(hours=1)
    # The evaluator moved the cursor on; a redeploy of the same definition keeps it.
    later = T0 + dt.timedelta(hours=5, minutes=30)

    def advance(session: Any) -> None:
        session.get(ScheduleRow, schedule_id).evaluated_through = T0 + dt.timedelta(hours=5)

    store.run_sync(advance)
    second = deploy(store, later, schedules=(hourly(), hourly(definition=_interval())))
    assert second.schedules[0].schedule_id == schedule_id
    rows = {r.id: r for r in schedule_rows(store)}
    kept = rows[schedule_id]
    assert kept.evaluated_through.replace(tzinfo=dt.UTC) == T0 + dt.timedelta(hours=5)
    new = rows[second.schedules[1].schedule_id]
    assert new.evaluated_through.replace(tzinfo=dt.UTC) == later
    # A version without the first schedule deactivates it; the row stays.
    deploy(store, later, schedules=(hourly(definition=_interval(), schedule_id=new.id),))
    rows = {r.id: r for r in schedule_rows(store)}
    assert not rows[schedule_id].active and rows[schedule_id].next_fire_at is None
    assert rows[new.id].active


def _interval() -> dict[str, Any]:
    return {"kind": "interval", "every_seconds": 300, "anchor": "2026-01-01T00:00:00+00:00"}


def test_show_lists_the_next_five_fire_times(store: Store) -> None:
    deploy(store, schedules=(hourly(),))
    view = store.run_sync(get_deployment, "nightly", 0, T0)
    (state,) = view.schedules.values()
    assert state.next_fires == tuple(T0 + dt.timedelta(hours=h) for h in range(1, 6))
    assert "Europe/Berlin" in state.description


def test_pause_and_resume_move_the_cursor_to_now(store: Store) -> None:
    stored = deploy(store, schedules=(hourly(),))
    schedule_id = stored.schedules[0].schedule_id
    run_at(store, T0, set_paused, "nightly", True)
    assert not schedule_rows(store)[0].active
    resumed_at = T0 + dt.timedelta(days=2, minutes=10)
    run_at(store, resumed_at, set_paused, "nightly", False)
    row = schedule_rows(store)[0]
    assert row.active and row.evaluated_through.replace(tzinfo=dt.UTC) == resumed_at
    assert row.next_fire_at is not None
    assert row.next_fire_at.replace(tzinfo=dt.UTC) == T0 + dt.timedelta(days=2, hours=1)
    run_at(store, resumed_at, set_paused, "nightly", True, schedule_id)
    assert schedule_rows(store)[0].paused
    with pytest.raises(NotFound, match="no schedule"):
        run_at(store, resumed_at, set_paused, "nightly", True, "sch_nope")
    assert {"deployment.paused", "deployment.resumed"} <= set(actions(store))


def test_trigger_creates_a_pending_run_that_wants_a_runner(store: Store) -> None:
    deploy(store)
    outcome, _ = run_at(store, T0, trigger_deployment, "nightly", {"day": "2026-03-01"}, source=API)
    assert outcome.state == "PENDING" and not outcome.existing
    assert outcome.flow_run_id is not None
    run = run_row(store, outcome.flow_run_id)
    assert run.wants_runner and run.runner_target == "pool=batch"
    assert (run.deployment_version, run.on_runner_lost, run.max_runner_resumes) == (1, "resume", 3)
    assert json.loads(run.parameters_json) == {"day": "2026-03-01", "n": 5}
    assert run.trigger == "api" and (run.trigger_detail or {})["deployment"] == "nightly"
    records = store.run_sync(lambda s: audit.list_records(s, limit=1000))
    fired = [r for r in records if r.action == "deployment.triggered"]
    assert fired and fired[-1].subject == run.id


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing required parameter"),
        ({"day": "March"}, "parameter 'day': expected a date"),
        ({"day": "2026-03-01", "n": "x"}, "parameter 'n': expected an integer"),
        ({"day": "2026-03-01", "colour": 1}, "unknown parameter 'colour'"),
        # Refused here, not when the run starts (it walks at most 200 levels).
        ({"day": "2026-03-01", "n": json.loads("[" * 900 + "]" * 900)}, "'n' is nested deeper"),
    ],
)
def test_trigger_parameters_are_checked_against_the_schema(
    store: Store, params: dict[str, Any], message: str
) -> None:
    deploy(store)
    with pytest.raises(ValidationError, match=message):
        run_at(store, T0, trigger_deployment, "nightly", params, source=API)


def test_a_repeated_idempotency_key_returns_the_same_run(store: Store) -> None:
    deploy(store)
    args = ("nightly", {"day": "2026-03-01"})
    first, _ = run_at(store, T0, trigger_deployment, *args, source=API, idempotency_key="k1")
    again, _ = run_at(store, T0, trigger_deployment, *args, source=API, idempotency_key="k1")
    assert again.existing and again.flow_run_id == first.flow_run_id
    other, _ = run_at(store, T0, trigger_deployment, *args, source=API, idempotency_key="k2")
    assert other.flow_run_id != first.flow_run_id


def test_a_callers_key_cannot_take_a_schedule_slots_or_an_outcomes_key(store: Store) -> None:
    deploy(store)
    args = ("nightly", {"day": "2026-03-01"})
    slot = "sch_1/2026-03-01T02:30:00.000000Z"
    hook = TriggerSource("webhook", "webhook:wh_1")
    for source, key in ((API, slot), (hook, slot), (hook, "outcome:run-1")):
        taken, _ = run_at(store, T0, trigger_deployment, *args, source=source, idempotency_key=key)
        assert taken.flow_run_id and not taken.existing
    schedule = TriggerSource("schedule", "schedule:sch_1", {"slot": slot})
    fired, _ = run_at(store, T0, trigger_deployment, *args, source=schedule, idempotency_key=slot)
    outcome = TriggerSource("outcome", "run:run-1")
    chained, _ = run_at(
        store, T0, trigger_deployment, *args, source=outcome, idempotency_key="outcome:run-1"
    )
    assert fired.flow_run_id and not fired.existing
    assert chained.flow_run_id and not chained.existing
    # Each webhook has its own keys too: the same key from another webhook is a new run.
    other = TriggerSource("webhook", "webhook:wh_2")
    mine, _ = run_at(store, T0, trigger_deployment, *args, source=other, idempotency_key=slot)
    assert mine.flow_run_id and not mine.existing


def test_skip_overflow_creates_no_run_beyond_the_limit(store: Store) -> None:
    deploy(store, concurrency=1, concurrency_overflow="skip")
    args = ("nightly", {"day": "2026-03-01"})
    first, _ = run_at(store, T0, trigger_deployment, *args, source=API)
    second, _ = run_at(store, T0, trigger_deployment, *args, source=API, idempotency_key="k")
    assert first.state == "PENDING"
    assert (second.state, second.flow_run_id) == ("SKIPPED", None)
    assert "concurrency overflow: skip" in second.message
    again, _ = run_at(store, T0, trigger_deployment, *args, source=API, idempotency_key="k")
    assert again.existing and again.state == "SKIPPED"
    assert "deployment.trigger_skipped" in actions(store)


def test_a_paused_deployment_skips_automatic_triggers_only(store: Store) -> None:
    deploy(store)
    run_at(store, T0, set_paused, "nightly", True)
    source = TriggerSource("schedule", "schedule:sch_1", {"slot": "x"})
    skipped, _ = run_at(
        store, T0, trigger_deployment, "nightly", {"day": "2026-03-01"}, source=source
    )
    assert skipped.state == "SKIPPED" and "paused" in skipped.message
    manual, _ = run_at(store, T0, trigger_deployment, "nightly", {"day": "2026-03-01"}, source=API)
    assert manual.state == "PENDING"


def test_delete_is_soft_and_the_name_can_be_deployed_again(store: Store) -> None:
    deploy(store, schedules=(hourly(),))
    run_at(store, T0, delete_deployment, "nightly")
    assert not schedule_rows(store)[0].active
    with pytest.raises(NotFound):
        run_at(store, T0, trigger_deployment, "nightly", {"day": "2026-03-01"}, source=API)
    with pytest.raises(NotFound):
        store.run_sync(get_deployment, "nightly", 0, T0)
    again = deploy(store)
    assert store.run_sync(get_deployment, "nightly", 0, T0).version == 2
    assert again.name == "nightly"
    assert "deployment.deleted" in actions(store)


def test_invalid_specs_are_refused_with_the_field_named(store: Store) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "bad name"}, "deployment name"),
        ({"runner_target": "pool in ("}, "selector"),
        ({"parameters": {"n": "five"}}, "default parameters: parameter 'n'"),
        ({"parameters": {"n": json.loads("[" * 300 + "]" * 300)}}, "'n' is nested deeper"),
        (
            {"schedules": (hourly(parameters={"day": json.loads("[" * 300 + "]" * 300)}),)},
            "'day' is nested deeper",
        ),
        ({"on_runner_lost": "retry"}, "on_runner_lost"),
        ({"max_runner_resumes": 1000}, "max_runner_resumes"),
        ({"description": "line1\nline2\x1b[31mRED"}, "description must be printable text"),
        ({"concurrency": 2**32 - 1}, "concurrency must be between 0 .unlimited. and 10000"),
        ({"concurrency_overflow": "drop"}, "overflow"),
        ({"schedules": (hourly(catch_up="some"),)}, "catch-up"),
        ({"schedules": (hourly(definition={"kind": "cron", "cron": "61 * * * *"}),)}, "cron"),
        ({"schedules": (hourly(parameters={"day": 1}),)}, "parameter 'day'"),
        ({"bundle_sha256": "c" * 64}, "has not been uploaded"),
    ]
    for overrides, message in cases:
        with pytest.raises((ValidationError, NotFound), match=message):
            deploy(store, **overrides)


def test_outcome_triggers_must_name_an_existing_other_deployment(store: Store) -> None:
    from control_plane.orchestration.deployment_specs import OutcomeTrigger

    with pytest.raises(NotFound, match="upstream deployment 'extract'"):
        deploy(store, triggers=(OutcomeTrigger("extract"),))
    with pytest.raises(ValidationError, match="own runs"):
        deploy(store, triggers=(OutcomeTrigger("nightly"),))
    deploy(store, name="extract")
    with pytest.raises(ValidationError, match="parameter 'upstream', which the flow does not"):
        deploy(store, triggers=(OutcomeTrigger("extract", ("failed",), "upstream"),))
    with pytest.raises(ValidationError, match="parameter 'n' is int, so it cannot take the up"):
        deploy(store, triggers=(OutcomeTrigger("extract", ("failed",), "n"),))
    # (A date parameter cannot take a run id: it may take the upstream result.)
    with pytest.raises(ValidationError, match="parameter 'day' is date, so it cannot"):
        deploy(store, triggers=(OutcomeTrigger("extract", ("failed",), "day"),))
    stored = deploy(store, triggers=(OutcomeTrigger("extract", ("failed",), "", "day"),))
    assert stored.triggers[0].states == ("FAILED",)


def test_a_version_out_of_range_is_not_found(store: Store) -> None:
    deploy(store)
    for version in (2, 2**31, 2**32 - 1):  # past PostgreSQL's INTEGER too: no store error
        with pytest.raises(NotFound, match=f"has no version {version}"):
            store.run_sync(get_deployment, "nightly", version, T0)
