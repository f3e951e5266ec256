"""Flow runs: create, finish, and run-level resilience — the runner's lease, crash detection,
cancel, resume and retry.

A run's steps never depend on its runner staying alive: a crashed runner only stops new
submissions; resuming replays the flow body against the stored step results.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.api_token_store import issue_runner_token
from control_plane.store.ids import new_id
from control_plane.store.models import BundleRow, EventRow, FlowRunRow
from control_plane.store.queries import resolve_run_id
from control_plane.store.tx import Tx, move_run, record_event
from control_plane.usecases import limits, outcome_triggers, run_limits
from control_plane.usecases.attempts import cancel_live_attempts, complete_cancel_if_confirmed
from control_plane.usecases.runners import (
    cancel_hosted_runner,
    hosted_copy,
    is_hosted,
    reopen_for_runner,
    runner_lost,
    runs_on_hosted_runners,
)
from meridian.core.errorinfo import ErrorInfo
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.kinds import EventKind
from meridian.core.states import TERMINAL_RUN, RunState

DEFAULT_RUNNER_LEASE_S = 60.0
MAX_RUNNER_LEASE_S = 600.0
RESUMABLE = (RunState.CRASHED, RunState.FAILED, RunState.CANCELLED)
# States in which a live runner drives the run and holds its lease.
HELD_BY_RUNNER = (RunState.RUNNING, RunState.PAUSED)


def _run(session: Session, run_id: str) -> FlowRunRow:
    run = session.get(FlowRunRow, resolve_run_id(session, run_id), with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    return run


def create_run(
    tx: Tx,
    *,
    flow_name: str,
    entrypoint: str,
    parameters_json: str,
    bundle_sha256: str,
    trigger: str,
    scope: Sequence[str] = (),
    concurrency: Sequence[str] = (),
) -> FlowRunRow:
    """A run whose runner is the caller; RUNNING at once, or PENDING while it waits for the
    named limits of ``@flow(concurrency=...)`` (``usecases.run_limits``)."""
    if tx.session.get(BundleRow, bundle_sha256) is None:
        raise NotFound(f"code bundle {bundle_sha256[:12]} has not been uploaded")
    run = FlowRunRow(
        id=new_id(),
        flow_name=flow_name,
        entrypoint=entrypoint,
        trigger=trigger,
        parameters_json=parameters_json,
        bundle_sha256=bundle_sha256,
        state=RunState.PENDING,
        created_at=tx.now,
        scope=list(scope),
    )
    tx.session.add(run)
    tx.session.flush()
    record_event(
        tx,
        kind=EventKind.RUN_PENDING,
        flow_run_id=run.id,
        to_state=RunState.PENDING,
        message=f"{trigger} run of {flow_name} ({entrypoint})",
    )
    if concurrency:
        limits.check_limits_exist(tx, concurrency, f"flow {flow_name}")
        run.trigger_detail = run_limits.with_limits(None, concurrency)
        run_limits.start_if_held(tx, run)
    else:
        run.started_at = tx.now
        run.runner_lease_expires_at = tx.now + dt.timedelta(seconds=DEFAULT_RUNNER_LEASE_S)
        move_run(tx, run, RunState.RUNNING, "flow runner started")
    audit.records.run_triggered(tx.session, run, actor=tx.actor)
    return run


def finish_run(
    tx: Tx, run_id: str, *, succeeded: bool, result_json: str, error: ErrorInfo | None
) -> RunState:
    run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    target = RunState.COMPLETED if succeeded else RunState.FAILED
    if run.state in (RunState.CANCELLING, RunState.CANCELLED):
        return run.state  # the runner ends its body after a cancel: nothing to decide
    if run.state in TERMINAL_RUN:
        if run.state == target:
            return run.state  # a retried FinishRun call
        raise ConflictError(f"flow run {run_id} already ended as {run.state}")
    cancel_live_attempts(tx, run, "the flow body finished without it")
    run.ended_at = tx.now
    run.runner_lease_expires_at = None
    run.result_json = result_json if succeeded else None
    run.error = None if succeeded else error
    message = "" if succeeded or not error else f"{error.type}: {error.message}"
    move_run(tx, run, target, message)
    if is_hosted(run):
        tx.effects.runners_wanted = True  # its runner slot is free
    outcome_triggers.fire_outcome_triggers(tx, run)
    return run.state


def renew_runner_lease(tx: Tx, run_id: str, lease_s: float) -> tuple[RunState, dt.datetime | None]:
    run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if not math.isfinite(lease_s):
        raise ValidationError("lease_s must be a finite number of seconds")
    if run.state in HELD_BY_RUNNER:
        lease = min(max(lease_s, 1.0), MAX_RUNNER_LEASE_S)
        run.runner_lease_expires_at = tx.now + dt.timedelta(seconds=lease)
    return run.state, run.runner_lease_expires_at


def crash_runs_with_lapsed_leases(tx: Tx, started_at: dt.datetime, grace_s: float) -> None:
    """RUNNING or PAUSED runs whose runner stopped renewing its lease become CRASHED; a
    hosted run's (decision 0018) is resumed on another runner or failed instead
    (``usecases.runners.runner_lost``).

    A PAUSED run's runner waits for an approval and keeps renewing; one that died while
    waiting crashes the run like any other (its pending approvals stay answerable, and a
    resumed runner asks again or finds the decision).

    For ``grace_s`` after this control plane started (``started_at``) nothing is declared
    crashed: runners could not renew while it was down, and need a moment to reconnect.
    """
    if tx.now < started_at + dt.timedelta(seconds=grace_s):
        return
    runs = tx.session.scalars(
        select(FlowRunRow).where(
            FlowRunRow.state.in_(list(HELD_BY_RUNNER)),
            FlowRunRow.runner_lease_expires_at < tx.now,
        )
    ).all()
    for run in runs:
        if is_hosted(run):
            # Decision 0018: a hosted run resumes on another agent or fails, per its policy.
            runner_lost(tx, run, lost_at=run.runner_lease_expires_at or tx.now)
            continue
        run.runner_lease_expires_at = None
        move_run(
            tx,
            run,
            RunState.CRASHED,
            "the flow runner stopped renewing its lease; its steps keep running and "
            f"`meridian runs resume {run.id}` continues from the point of failure",
        )
        outcome_triggers.fire_outcome_triggers(tx, run)


def cancel_run(tx: Tx, run_id: str, reason: str) -> tuple[FlowRunRow, int]:
    """Cancel a run; returns it and how many agents must confirm their attempts stopped."""
    run = _run(tx.session, run_id)
    if run.state in (RunState.CANCELLING, RunState.CANCELLED):
        return run, 0
    if run.state in TERMINAL_RUN and run.state != RunState.CRASHED:
        raise ConflictError(f"flow run {run.id} already ended as {run.state}")
    message = reason or "cancelled by request"
    # Recorded first, so the attempts this cancel ends follow it in the audit log.
    audit.records.run_changed(
        tx.session, "run.cancelled", run, tx.now, reason=message, previous_state=run.state
    )
    move_run(tx, run, RunState.CANCELLING, message)
    cancel_hosted_runner(tx, run, message)
    waiting = cancel_live_attempts(tx, run, message)
    complete_cancel_if_confirmed(tx, run.id)
    for child in _unfinished_children(tx.session, run.id):  # subflows: cancel cascades
        waiting += cancel_run(tx, child.id, f"its parent run {run.id} was cancelled")[1]
    return run, waiting


def _unfinished_children(session: Session, run_id: str) -> list[FlowRunRow]:
    ended = [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLING, RunState.CANCELLED]
    return list(
        session.scalars(
            select(FlowRunRow).where(
                FlowRunRow.parent_run_id == run_id, FlowRunRow.state.not_in(ended)
            )
        )
    )


def resume_run(tx: Tx, run_id: str, *, here: bool = False) -> tuple[FlowRunRow, int]:
    """Reopen a run for a new runner; returns it and the event id its watch starts after.

    A hosted run goes back to a hosted runner (PENDING until one takes it) unless ``here``:
    the caller runs the body itself. A run whose flow holds concurrency limits takes them
    again first: it is RUNNING if it holds them all, else PENDING in their lines (its runner
    waits, as at ``CreateRun``).
    """
    run = _run(tx.session, run_id)
    if run.state not in RESUMABLE:
        raise ConflictError(
            f"flow run {run.id} is {run.state}; only CRASHED, FAILED or CANCELLED runs resume"
        )
    hosted = runs_on_hosted_runners(run) and not here
    audit.records.run_changed(
        tx.session, "run.resumed", run, tx.now, previous_state=run.state, hosted=hosted
    )
    run.resumed_at = tx.now
    run.ended_at = None
    run.error = None
    tx.session.flush()
    watermark = tx.session.scalar(
        select(func.max(EventRow.id)).where(EventRow.flow_run_id == run.id)
    )
    if hosted:
        reopen_for_runner(
            tx, run, "resumed: waiting for a hosted runner; completed steps are reused"
        )
        return run, int(watermark or 0)
    run.wants_runner = False
    if run.runner_agent_id is not None:
        # A hosted run resumed --here: the caller is its runner now. Fence the last hosted
        # runner, and let a lapsed lease crash the run like a local one.
        run.runner_agent_id = None
        run.runner_epoch = int(run.runner_epoch or 0) + 1
    if not run_limits.holds_limits(tx, run):
        move_run(tx, run, RunState.PENDING, "resumed: waiting for its concurrency limits")
        return run, int(watermark or 0)
    run.runner_lease_expires_at = tx.now + dt.timedelta(seconds=DEFAULT_RUNNER_LEASE_S)
    move_run(tx, run, RunState.RUNNING, "resumed: completed steps are reused")
    return run, int(watermark or 0)


def retry_run(tx: Tx, run_id: str, *, here: bool = False) -> FlowRunRow:
    """A fresh run of the same flow version and parameters that reuses nothing: hosted like
    the original (same deployment version, runner target and policy) unless ``here``."""
    original = _run(tx.session, run_id)
    if runs_on_hosted_runners(original) and not here:
        run = hosted_copy(tx, original, trigger="retry")
    else:
        run = create_run(
            tx,
            flow_name=original.flow_name,
            entrypoint=original.entrypoint,
            parameters_json=original.parameters_json,
            bundle_sha256=original.bundle_sha256,
            trigger="retry",
            scope=original.scope,
            concurrency=run_limits.flow_limits(original),
        )
    run.retry_of = original.id
    record_event(
        tx,
        kind=EventKind.RUN_RETRIED,
        flow_run_id=original.id,
        message=f"retried as run {run.id}",
    )
    audit.records.run_changed(tx.session, "run.retried", original, tx.now, retried_as=run.id)
    return run


# ---- what a flow runner is handed: the run and a token scoped to it ------------------------


def start_run(
    tx: Tx,
    *,
    flow_name: str,
    entrypoint: str,
    parameters_json: str,
    bundle_sha256: str,
    trigger: str,
    scope: Sequence[str] = (),
    concurrency: Sequence[str] = (),
) -> tuple[str, str]:
    """Create a run and the token its runner drives it with: (run id, runner token)."""
    run = create_run(
        tx,
        flow_name=flow_name,
        entrypoint=entrypoint,
        parameters_json=parameters_json,
        bundle_sha256=bundle_sha256,
        trigger=trigger,
        scope=scope,
        concurrency=concurrency,
    )
    return run.id, issue_runner_token(tx.session, run.id, tx.now, scope)


def resume_run_for_runner(
    tx: Tx, run_id: str, *, here: bool = False
) -> tuple[FlowRunRow, int, str]:
    """``resume_run`` plus a fresh runner token for the caller: (run, event watermark, token).
    The token is "" when a hosted runner takes the run (its agent gets one of its own)."""
    run, watermark = resume_run(tx, run_id, here=here)
    if run.wants_runner:
        return run, watermark, ""
    token = issue_runner_token(tx.session, run.id, tx.now, run.scope, epoch=run.runner_epoch)
    return run, watermark, token


def retry_run_for_runner(tx: Tx, run_id: str, *, here: bool = False) -> tuple[FlowRunRow, str]:
    """``retry_run`` plus the new run's runner token ("" for a hosted run): (new run, token)."""
    run = retry_run(tx, run_id, here=here)
    if run.wants_runner:
        return run, ""
    return run, issue_runner_token(tx.session, run.id, tx.now, run.scope)
