"""Firing due schedules: each slot creates its run exactly once (decision 0019).

The dispatcher wakes at the smallest ``next_fire_at`` of the active schedules
(:func:`next_schedule_due`), finds the earliest due one (:func:`due_schedule`) and fires it
(:func:`fire_schedule`) until none is due. A schedule whose evaluation raises is held back by
the dispatcher for a while (``held_back``) so the schedules after it still fire. Each firing
is one transaction about one schedule: it claims the schedule row (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so replicas share schedules instead of queueing on them), asks
``orchestration.catchup.due_slots`` which slots to fire, and for each slot inserts its
``schedule_fires`` row (primary key: deployment, slot key) and triggers the deployment with the
slot key as the idempotency key, then advances the cursor. All of it commits or none does: a
crash before the commit leaves the cursor where it was and the next evaluation fires the same
slots with the same keys; after the commit the cursor is past them, and the fire rows stop an
evaluation from an older cursor anyway.

A slot the deployment refuses (concurrency overflow ``skip``, parameters that no longer
validate, a deleted deployment) still gets its fire row, with the reason and no run, so it is
visibly handled and never retried. Slots the catch-up policy leaves unfired are recorded as
one ``schedule.slots_skipped`` audit record per evaluation.

Creating, editing, pausing and resuming schedules (and so their cursors) is
``usecases/deployments.py``'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.orchestration.catchup import (
    CatchUp,
    CatchUpPolicy,
    Due,
    due_slots,
    validate_policy,
)
from control_plane.orchestration.deployment_specs import (
    DEFAULT_MAX_CATCH_UP_RUNS,
    DEFAULT_WINDOW_S,
)
from control_plane.orchestration.schedule_codec import decode_schedule
from control_plane.orchestration.schedules import (
    MAX_WINDOW,
    Schedule,
    jitter,
    next_fire_times,
    slot_key,
)
from control_plane.store.models import DeploymentRow, ScheduleFireRow, ScheduleRow
from control_plane.store.tx import Tx
from control_plane.usecases import deployments
from control_plane.usecases.savepoints import attempt
from meridian.core.errors import MeridianError, ValidationError

MAX_JITTER_S = 3600.0


@dataclass(frozen=True)
class FiredSlot:
    """One slot handled by an evaluation: the run it created, or why none was."""

    slot_key: str
    nominal: dt.datetime
    flow_run_id: str | None
    reason: str = ""


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of one schedule did."""

    schedule_id: str
    fired: tuple[FiredSlot, ...] = ()
    skipped: tuple[dt.datetime, dt.datetime] | None = None
    next_fire_at: dt.datetime | None = None
    problem: str = ""


def next_schedule_due(session: Session, held_back: Collection[str] = ()) -> dt.datetime | None:
    """The earliest nominal fire time of any active schedule not ``held_back``: the
    dispatcher's timer (a read, ``Store.run``)."""
    query = select(func.min(ScheduleRow.next_fire_at)).where(
        ScheduleRow.active.is_(True), ScheduleRow.next_fire_at.is_not(None)
    )
    if held_back:
        query = query.where(ScheduleRow.id.not_in(sorted(held_back)))
    return session.scalar(query)


def due_schedule(session: Session, now: dt.datetime, held_back: Collection[str] = ()) -> str | None:
    """The id of the earliest schedule due at ``now`` that is not ``held_back`` (a read)."""
    query = select(ScheduleRow.id).where(
        ScheduleRow.active.is_(True),
        ScheduleRow.next_fire_at.is_not(None),
        ScheduleRow.next_fire_at <= now,
    )
    if held_back:
        query = query.where(ScheduleRow.id.not_in(sorted(held_back)))
    return session.scalar(query.order_by(ScheduleRow.next_fire_at, ScheduleRow.id).limit(1))


def fire_schedule(tx: Tx, schedule_id: str) -> Evaluation | None:
    """Evaluate schedule ``schedule_id`` if it is still due; None when it is not, or another
    replica is evaluating it (its row is locked)."""
    row = tx.session.scalars(
        select(ScheduleRow)
        .where(
            ScheduleRow.id == schedule_id,
            ScheduleRow.active.is_(True),
            ScheduleRow.next_fire_at.is_not(None),
            ScheduleRow.next_fire_at <= tx.now,
        )
        .with_for_update(skip_locked=True)
    ).first()
    return None if row is None else evaluate_schedule(tx, row)


def fire_due_schedule(tx: Tx) -> Evaluation | None:
    """Evaluate one due schedule (the earliest), or answer None when none is due now."""
    schedule_id = due_schedule(tx.session, tx.now)
    return None if schedule_id is None else fire_schedule(tx, schedule_id)


def record_evaluation_failure(tx: Tx, schedule_id: str, error: str, retry_in_s: float) -> None:
    """Audit that evaluating a schedule failed (``schedule.evaluation_failed``), in a
    transaction of its own, so ``meridian audit list`` says why its slots wait."""
    row = tx.session.get(ScheduleRow, schedule_id)
    if row is not None:
        _audit(
            tx,
            row,
            "schedule.evaluation_failed",
            reason=error[:1000],
            retry_in_s=round(retry_in_s, 1),
        )


def evaluate_schedule(tx: Tx, row: ScheduleRow) -> Evaluation:
    """Fire the slots of ``row`` due at ``tx.now`` and advance its cursor (row locked)."""
    deployment = tx.session.get(DeploymentRow, row.deployment_id)
    if deployment is None or deployment.deleted_at is not None or deployment.paused:
        # The deployments use cases keep ``active`` in step; a row that slipped through stops
        # here instead of waking the dispatcher again and again.
        row.active = False
        return Evaluation(row.id)
    try:
        schedule = decode_schedule(row.definition)
        due = due_slots(schedule, catch_up_policy(row.catch_up), row.evaluated_through, tx.now)
    except ValidationError as exc:
        # Stored before a rule tightened, or edited by hand: say so once, stop evaluating.
        row.active = False
        _audit(tx, row, "schedule.disabled", reason=str(exc))
        return Evaluation(row.id, problem=str(exc))
    fired = tuple(_fire_slot(tx, row, deployment, schedule, nominal) for nominal in due.fire)
    if due.skipped is not None:
        _record_skipped(tx, row, due)
    row.evaluated_through = due.cursor
    row.next_fire_at = _next_after(schedule, due.cursor)
    return Evaluation(row.id, fired, due.skipped, row.next_fire_at)


def _fire_slot(
    tx: Tx, row: ScheduleRow, deployment: DeploymentRow, schedule: Schedule, nominal: dt.datetime
) -> FiredSlot:
    key = slot_key(row.id, nominal)
    known = tx.session.get(ScheduleFireRow, (row.deployment_id, key))
    if known is not None:
        # Fired by an evaluation that started from this cursor before (decision 0019, 2):
        # the slot stays handled by what that one did.
        return FiredSlot(key, nominal, known.flow_run_id, known.reason or "already fired")
    fire = ScheduleFireRow(
        deployment_id=row.deployment_id,
        slot_key=key,
        schedule_id=row.id,
        nominal_at=nominal,
        flow_run_id=None,
        reason="",
        fired_at=tx.now,
    )
    tx.session.add(fire)
    tx.session.flush()  # the primary key is checked here, before any run exists
    start_after = nominal + _jitter(row, schedule, key, nominal)
    source = deployments.TriggerSource(
        "schedule",
        actor=f"schedule:{row.id}",
        detail={"schedule_id": row.id, "slot": key, "nominal": nominal.isoformat()},
    )
    outcome = attempt(
        tx,
        deployments.trigger_deployment,
        deployment.name,
        dict(row.parameters or {}),
        source=source,
        idempotency_key=key,
        start_after=start_after,
    )
    if isinstance(outcome, MeridianError):
        fire.reason = f"not fired: {outcome}"[:2000]
        _audit(tx, row, "schedule.slot_refused", slot=key, reason=str(outcome))
        return FiredSlot(key, nominal, None, fire.reason)
    fire.flow_run_id = outcome.flow_run_id
    if outcome.flow_run_id is None:
        fire.reason = outcome.message or outcome.state
    return FiredSlot(key, nominal, outcome.flow_run_id, fire.reason)


def _jitter(row: ScheduleRow, schedule: Schedule, key: str, nominal: dt.datetime) -> dt.timedelta:
    seconds = min(max(float(row.jitter_s or 0.0), 0.0), MAX_JITTER_S)
    if seconds <= 0:
        return dt.timedelta(0)
    following = _next_after(schedule, nominal)
    until_next = following - nominal if following is not None else None
    return jitter(key, dt.timedelta(seconds=seconds), until_next)


def _next_after(schedule: Schedule, after: dt.datetime) -> dt.datetime | None:
    upcoming = next_fire_times(schedule, after, 1)
    return upcoming[0] if upcoming else None


def _record_skipped(tx: Tx, row: ScheduleRow, due: Due) -> None:
    assert due.skipped is not None
    after, until = due.skipped
    policy = catch_up_policy(row.catch_up)
    _audit(
        tx,
        row,
        "schedule.slots_skipped",
        after=after.isoformat(),
        until=until.isoformat(),
        catch_up=policy.mode.value,
        message=(
            f"slots after {after.isoformat()} up to {until.isoformat()} were not fired: "
            f"catch-up policy {policy.mode.value}, window {policy.window.total_seconds():g} s"
        ),
    )


def _audit(tx: Tx, row: ScheduleRow, action: str, **details: Any) -> None:
    audit.append(
        tx.session,
        actor=f"schedule:{row.id}",
        action=action,
        subject=row.deployment_id,
        details={"schedule_id": row.id, **details},
        now=tx.now,
    )


# ---- the stored catch-up settings ---------------------------------------------------------


def catch_up_policy(data: Mapping[str, Any] | None) -> CatchUpPolicy:
    """The policy of a row's stored catch-up settings ``{"mode", "window_s", "max_runs"}``
    (written by ``usecases/deployments.py``; 0 or missing = the defaults); raises
    :class:`ValidationError` naming what is wrong."""
    data = data or {}
    mode = data.get("mode") or CatchUp.SKIP.value
    if mode not in {m.value for m in CatchUp}:
        raise ValidationError(f"catch-up policy must be skip, latest or all, got {mode!r}")
    window_s = data.get("window_s") or DEFAULT_WINDOW_S
    max_runs = data.get("max_runs") or DEFAULT_MAX_CATCH_UP_RUNS
    if isinstance(window_s, bool) or not isinstance(window_s, int | float):
        raise ValidationError("catch-up window must be a number of seconds")
    if isinstance(max_runs, bool) or not isinstance(max_runs, int):
        raise ValidationError("catch-up max runs must be a whole number")
    if not 0 < window_s <= MAX_WINDOW.total_seconds():  # before timedelta() can overflow
        raise ValidationError(
            f"catch-up window must be more than 0 and at most {MAX_WINDOW.days} days"
        )
    policy = CatchUpPolicy(CatchUp(mode), dt.timedelta(seconds=window_s), max_runs)
    validate_policy(policy)
    return policy
