"""Run-level resilience: the runner's lease, crash detection, cancel, resume and retry.

A run's steps never depend on its runner staying alive: a crashed runner only stops new
submissions; resuming replays the flow body against the stored step results.
"""

from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.orchestration.engine import (
    cancel_live_attempts,
    complete_cancel_if_confirmed,
    create_run,
)
from control_plane.orchestration.transitions import move_run, record_event
from control_plane.orchestration.values import Effects
from control_plane.store.models import EventRow, FlowRunRow
from control_plane.store.queries import resolve_run_id
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.states import TERMINAL_RUN, RunState

MAX_RUNNER_LEASE_S = 600.0
RESUMABLE = (RunState.CRASHED, RunState.FAILED, RunState.CANCELLED)
# States in which a live runner drives the run and holds its lease.
HELD_BY_RUNNER = (RunState.RUNNING, RunState.PAUSED)


def _run(session: Session, run_id: str) -> FlowRunRow:
    run = session.get(FlowRunRow, resolve_run_id(session, run_id), with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    return run


def renew_runner_lease(
    session: Session, run_id: str, lease_s: float, now: dt.datetime
) -> tuple[str, dt.datetime | None]:
    run = session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if not math.isfinite(lease_s):
        raise ValidationError("lease_s must be a finite number of seconds")
    if run.state in HELD_BY_RUNNER:
        lease = min(max(lease_s, 1.0), MAX_RUNNER_LEASE_S)
        run.runner_lease_expires_at = now + dt.timedelta(seconds=lease)
    return run.state, run.runner_lease_expires_at


def crash_runs_with_lapsed_leases(
    session: Session, now: dt.datetime, started_at: dt.datetime, grace_s: float
) -> Effects:
    """RUNNING or PAUSED runs whose runner stopped renewing its lease become CRASHED.

    A PAUSED run's runner waits for an approval and keeps renewing; one that died while
    waiting crashes the run like any other (its pending approvals stay answerable, and a
    resumed runner asks again or finds the decision).

    For ``grace_s`` after this control plane started (``started_at``) nothing is declared
    crashed: runners could not renew while it was down, and need a moment to reconnect.
    """
    effects = Effects()
    if now < started_at + dt.timedelta(seconds=grace_s):
        return effects
    runs = session.scalars(
        select(FlowRunRow).where(
            FlowRunRow.state.in_(list(HELD_BY_RUNNER)),
            FlowRunRow.runner_lease_expires_at < now,
        )
    ).all()
    for run in runs:
        run.runner_lease_expires_at = None
        move_run(
            session,
            run,
            RunState.CRASHED,
            now,
            effects,
            "the flow runner stopped renewing its lease; its steps keep running and "
            f"`meridian runs resume {run.id}` continues from the point of failure",
        )
    return effects


def cancel_run(
    session: Session, run_id: str, reason: str, now: dt.datetime
) -> tuple[FlowRunRow, int, Effects]:
    effects = Effects()
    run = _run(session, run_id)
    if run.state in (RunState.CANCELLING, RunState.CANCELLED):
        return run, 0, effects
    if run.state in TERMINAL_RUN and run.state != RunState.CRASHED:
        raise ConflictError(f"flow run {run.id} already ended as {run.state}")
    message = reason or "cancelled by request"
    # Recorded first, so the attempts this cancel ends follow it in the audit log.
    audit.records.run_changed(
        session, "run.cancelled", run, now, reason=message, previous_state=run.state
    )
    move_run(session, run, RunState.CANCELLING, now, effects, message)
    waiting = cancel_live_attempts(session, run, now, effects, message)
    complete_cancel_if_confirmed(session, run.id, now, effects)
    return run, waiting, effects


def resume_run(session: Session, run_id: str, now: dt.datetime) -> tuple[FlowRunRow, int, Effects]:
    """Reopen a run for a new runner; returns the event id its watch should start after."""
    effects = Effects()
    run = _run(session, run_id)
    if run.state not in RESUMABLE:
        raise ConflictError(
            f"flow run {run.id} is {run.state}; only CRASHED, FAILED or CANCELLED runs resume"
        )
    audit.records.run_changed(session, "run.resumed", run, now, previous_state=run.state)
    run.resumed_at = now
    run.ended_at = None
    run.error = None
    run.runner_lease_expires_at = now + dt.timedelta(seconds=60)
    session.flush()
    watermark = session.scalar(select(func.max(EventRow.id)).where(EventRow.flow_run_id == run.id))
    move_run(session, run, RunState.RUNNING, now, effects, "resumed: completed steps are reused")
    return run, int(watermark or 0), effects


def retry_run(session: Session, run_id: str, now: dt.datetime) -> tuple[FlowRunRow, Effects]:
    """A fresh run of the same flow version and parameters that reuses nothing."""
    effects = Effects()
    original = _run(session, run_id)
    run = create_run(
        session,
        flow_name=original.flow_name,
        entrypoint=original.entrypoint,
        parameters_json=original.parameters_json,
        bundle_sha256=original.bundle_sha256,
        trigger="retry",
        now=now,
        effects=effects,
        scope=original.scope,
    )
    run.retry_of = original.id
    record_event(
        session,
        kind="run.retried",
        now=now,
        flow_run_id=original.id,
        message=f"retried as run {run.id}",
    )
    audit.records.run_changed(session, "run.retried", original, now, retried_as=run.id)
    return run, effects
