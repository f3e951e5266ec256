"""The dispatcher's schedule loop against a real store (SQLite, and PostgreSQL when
configured): a schedule whose evaluation raises is held back, audited once per streak, and
retried later without losing its slots, while the schedules after it keep firing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.deployment_specs import DeploymentSpec, ScheduleSpec
from control_plane.scheduler.schedule_firing import MAX_HOLD_BACK, ScheduleFiring
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, ScheduleRow
from control_plane.store.tx import Tx
from control_plane.usecases import schedules
from control_plane.usecases.deployments import create_deployment
from tests.control_plane.usecases.helpers import T0, run_at

MINUTE = dt.timedelta(minutes=1)
SWEEP_S = 5.0


def deploy(store: Store, name: str) -> str:
    """Deploy ``name`` with one every-minute schedule; returns the schedule id."""
    every_minute = {"kind": "interval", "every_seconds": 60, "anchor": T0.isoformat()}
    spec = DeploymentSpec(
        name=name,
        flow_name="etl",
        entrypoint="flows.py:etl",
        bundle_sha256="b" * 64,
        parameter_schema={"version": 1, "accepts_any": True, "parameters": []},
        schedules=(ScheduleSpec("", every_minute, {}),),
    )
    (_, stored), _ = run_at(store, T0, create_deployment, spec)
    return stored.schedules[0].schedule_id


def slots_fired(store: Store, schedule_id: str) -> list[str]:
    found = store.run_sync(lambda s: list(s.scalars(select(FlowRunRow))))
    details = [(r.trigger_detail or {}).get("detail", {}) for r in found]
    return sorted(d["nominal"] for d in details if d.get("schedule_id") == schedule_id)


def failures_audited(store: Store) -> list[dict[str, Any]]:
    records = store.run_sync(lambda s: audit.list_records(s, limit=1000))
    return [json.loads(r.details) for r in records if r.action == "schedule.evaluation_failed"]


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Schedule ids whose evaluation raises, as a bug or an unreadable row would."""
    ids: set[str] = set()
    evaluate = schedules.evaluate_schedule

    def evaluate_or_raise(tx: Tx, row: ScheduleRow) -> schedules.Evaluation:
        if row.id in ids:
            raise RuntimeError(f"cannot evaluate {row.id}")
        return evaluate(tx, row)

    monkeypatch.setattr(schedules, "evaluate_schedule", evaluate_or_raise)
    return ids


def test_a_failing_schedule_is_held_back_and_the_others_still_fire(
    store: Store, broken: set[str]
) -> None:
    first = deploy(store, "a-first")
    second = deploy(store, "b-second")
    broken.add(min(first, second))  # the one the store hands out first when both are due
    failing, healthy = min(first, second), max(first, second)
    firing = ScheduleFiring(store, SWEEP_S)

    async def at(now: dt.datetime) -> dt.datetime | None:
        store.clock = lambda: now
        return await firing.fire_due(now)

    due = T0 + MINUTE
    next_due = asyncio.run(at(due))
    assert slots_fired(store, healthy) == [due.isoformat()]
    assert slots_fired(store, failing) == []
    # Woken again when the held-back schedule may be retried, before the next slot.
    assert next_due == due + dt.timedelta(seconds=SWEEP_S)
    [audited] = failures_audited(store)
    assert audited["schedule_id"] == failing and "RuntimeError" in audited["reason"]

    # Still failing: held back twice as long, audited once per streak.
    retry = due + dt.timedelta(seconds=SWEEP_S)
    assert asyncio.run(at(retry)) == retry + dt.timedelta(seconds=2 * SWEEP_S)
    assert len(failures_audited(store)) == 1
    assert slots_fired(store, failing) == []

    # Fixed: the slot it missed fires, nothing is lost, and the streak ends.
    broken.clear()
    later = retry + dt.timedelta(seconds=2 * SWEEP_S)
    assert asyncio.run(at(later)) == T0 + 2 * MINUTE
    assert slots_fired(store, failing) == [due.isoformat()]
    assert slots_fired(store, healthy) == [due.isoformat()]


def test_the_hold_back_grows_to_a_bound(store: Store, broken: set[str]) -> None:
    schedule_id = deploy(store, "always-broken")
    broken.add(schedule_id)
    firing = ScheduleFiring(store, SWEEP_S)
    now, delays = T0 + MINUTE, []
    for _ in range(12):
        store.clock = lambda: now  # noqa: B023 (called before the loop moves on)
        retry_at = asyncio.run(firing.fire_due(now))
        assert retry_at is not None
        delays.append((retry_at - now).total_seconds())
        now = retry_at
    assert delays[:4] == [SWEEP_S, 2 * SWEEP_S, 4 * SWEEP_S, 8 * SWEEP_S]
    assert delays[-1] == MAX_HOLD_BACK.total_seconds() == max(delays)
    assert len(failures_audited(store)) == 1


def test_a_schedule_another_replica_holds_is_passed_over_for_the_next_due_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = deploy(store, "a-first")
    second = deploy(store, "b-second")
    held, free = min(first, second), max(first, second)  # the store hands out `held` first
    fire = schedules.fire_schedule

    def locked_elsewhere(tx: Tx, schedule_id: str) -> schedules.Evaluation | None:
        # What FOR UPDATE SKIP LOCKED answers for a row another replica is evaluating.
        return None if schedule_id == held else fire(tx, schedule_id)

    monkeypatch.setattr("control_plane.scheduler.schedule_firing.fire_schedule", locked_elsewhere)
    firing = ScheduleFiring(store, SWEEP_S)
    due = T0 + MINUTE
    store.clock = lambda: due
    next_due = asyncio.run(firing.fire_due(due))
    assert slots_fired(store, free) == [due.isoformat()]
    assert slots_fired(store, held) == []
    # Looked at again shortly, in case the other replica stopped half-way.
    assert next_due == due + dt.timedelta(seconds=1)
