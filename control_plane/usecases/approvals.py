"""Human approvals inside flow bodies: ask, decide, time out — and the run's PAUSED state.

A flow body asks for an approval (``request_approval``) and waits. The run is PAUSED while
an approval its current runner asked for is pending; an operator decides it
(``decide_approval``) or its stored timer fires (``expire_approvals``, driven by the
dispatcher), and once no approval the runner waits for is left pending the run is RUNNING
again. A decision is final: a replayed body (``runs resume``) that asks for a decided key
gets the stored decision back at once. Every change writes its event, and a decision its
audit record, in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.store.ids import new_id
from control_plane.store.models import ApprovalRow, FlowRunRow
from control_plane.store.queries import resolve_run_id
from control_plane.store.tx import Tx, move_run, record_event
from meridian.core.errors import ConflictError, NotFound
from meridian.core.kinds import ApprovalState, EventKind
from meridian.core.states import LIVE_RUN, RunState

# Only a body that runs can ask. Decisions (and timeouts) are taken while a runner drives the
# run or may again (LIVE_RUN: a CRASHED run is resumed, and its body then finds the decision).
ASKING = (RunState.RUNNING, RunState.PAUSED)
EXPIRE_BATCH = 500


def request_approval(
    tx: Tx, run_id: str, key: str, message: str, timeout_s: float
) -> tuple[ApprovalRow, RunState]:
    """Ask (or ask again) for approval ``key`` of run ``run_id``: idempotent on the key.

    A new approval is stored pending, with a deadline when ``timeout_s`` > 0; a pending one
    is asked again (a resumed runner); a decided one is returned as it is. The run is PAUSED
    while the approval is pending. The message and timeout of the first request stay.
    """
    session, now, effects = tx.session, tx.now, tx.effects
    run = _locked_run(session, run_id)
    if run.state not in ASKING:
        raise ConflictError(
            f"flow run {run.id} is {run.state}; only a RUNNING run can ask for an approval"
        )
    approval = _find(session, run.id, key)
    if approval is not None and approval.state != ApprovalState.PENDING:
        return approval, run.state  # a decision is final: replays get it back
    if approval is None:
        approval = _new_approval(run, key, message, timeout_s, now)
        session.add(approval)
    elif run.state == RunState.PAUSED and _asked_by_current_runner(run, approval):
        return approval, run.state  # a retried call: nothing new happened
    approval.asked_at = now
    if approval.deadline is not None:
        # New, or asked again in a resumed run whose timer the dispatcher had set aside.
        effects.timers.append(approval.deadline)
    record_event(
        tx,
        kind=EventKind.APPROVAL_REQUESTED,
        flow_run_id=run.id,
        key=key,
        message=approval.message or "waiting for a decision",
    )
    if run.state == RunState.RUNNING:
        move_run(tx, run, RunState.PAUSED, f"waiting for approval {key}")
    effects.touched_runs.add(run.id)
    return approval, run.state


def decide_approval(
    tx: Tx, run_id: str, key: str, approve: bool, reason: str
) -> tuple[ApprovalRow, RunState]:
    """Approve or reject a pending approval, as the caller of the current request.

    Repeating the decision already taken returns it unchanged (a retried call); any other
    decision of a decided or timed-out approval is a ConflictError.
    """
    session = tx.session
    run = _locked_run(session, run_id)
    approval = _approval_to_decide(session, run.id, key)
    target = ApprovalState.APPROVED if approve else ApprovalState.REJECTED
    if approval.state == target:
        return approval, run.state
    if approval.state != ApprovalState.PENDING:
        raise ConflictError(
            f"approval {approval.key} of run {run.id} is already {approval.state} "
            f"(by {approval.decided_by or '?'}); a decision is final"
        )
    if run.state not in LIVE_RUN:
        raise ConflictError(
            f"flow run {run.id} is {run.state}; approvals are decided while the run is "
            "RUNNING, PAUSED or CRASHED (resume it to ask again)"
        )
    audit.records.run_changed(
        session,
        "run.approved" if approve else "run.rejected",
        run,
        tx.now,
        approval=approval.key,
        reason=reason,
        run_state=run.state,
    )
    _decide(tx, run, approval, target, tx.actor, reason)
    return approval, run.state


def expire_approvals(tx: Tx) -> dt.datetime | None:
    """Time out pending approvals whose deadline passed; return when the next one is due.

    Approvals of runs that ended (other than CRASHED) wait for nobody and are left alone: a
    resumed run's body asks again and finds them past their deadline.
    """
    session, now = tx.session, tx.now
    due = session.execute(
        select(ApprovalRow.id, ApprovalRow.flow_run_id)
        .join(FlowRunRow, FlowRunRow.id == ApprovalRow.flow_run_id)
        .where(
            ApprovalRow.state == ApprovalState.PENDING,
            ApprovalRow.deadline <= now,
            FlowRunRow.state.in_(list(LIVE_RUN)),
        )
        .order_by(ApprovalRow.deadline)
        .limit(EXPIRE_BATCH)
    ).all()
    for approval_id, run_id in due:
        # The run first, then the approval: the lock order of request and decide.
        run = session.get(FlowRunRow, run_id, with_for_update=True, populate_existing=True)
        approval = session.get(
            ApprovalRow, approval_id, with_for_update=True, populate_existing=True
        )
        if run is None or approval is None or run.state not in LIVE_RUN:
            continue
        if (
            approval.state != ApprovalState.PENDING
            or approval.deadline is None
            or approval.deadline > now
        ):
            continue  # decided (or replaced) by another replica meanwhile
        waited = (approval.deadline - approval.requested_at).total_seconds()
        reason = f"no decision within {waited:g}s"
        _decide(tx, run, approval, ApprovalState.TIMED_OUT, audit.SYSTEM, reason)
    return next_deadline(session)


def next_deadline(session: Session) -> dt.datetime | None:
    """The earliest deadline of a pending approval that a live run waits for."""
    session.flush()
    moment = session.scalar(
        select(func.min(ApprovalRow.deadline))
        .join(FlowRunRow, FlowRunRow.id == ApprovalRow.flow_run_id)
        .where(ApprovalRow.state == ApprovalState.PENDING, FlowRunRow.state.in_(list(LIVE_RUN)))
    )
    if moment is None:
        return None
    # func.min bypasses the column type on some backends: normalise to aware UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# ---- internals ----------------------------------------------------------------------------


def _locked_run(session: Session, run_id: str) -> FlowRunRow:
    run = session.get(FlowRunRow, resolve_run_id(session, run_id), with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    return run


def _find(session: Session, run_id: str, key: str) -> ApprovalRow | None:
    return session.scalars(
        select(ApprovalRow)
        .where(ApprovalRow.flow_run_id == run_id, ApprovalRow.key == key)
        .with_for_update()
    ).first()


def _approval_to_decide(session: Session, run_id: str, key: str) -> ApprovalRow:
    """``key`` exactly, or a name without ``#n`` when one approval of that name is pending."""
    approval = _find(session, run_id, key)
    if approval is not None:
        return approval
    pending = session.scalars(
        select(ApprovalRow)
        .where(ApprovalRow.flow_run_id == run_id, ApprovalRow.state == ApprovalState.PENDING)
        .order_by(ApprovalRow.requested_at, ApprovalRow.key)
        .with_for_update()
    ).all()
    named = [a for a in pending if a.key.rpartition("#")[0] == key]
    if "#" not in key and len(named) == 1:
        return named[0]
    shown = ", ".join(a.key[:80] for a in pending[:10]) or "none"
    raise NotFound(f"flow run {run_id} has no approval {key[:200]!r} (pending: {shown})")


def _new_approval(
    run: FlowRunRow, key: str, message: str, timeout_s: float, now: dt.datetime
) -> ApprovalRow:
    deadline = now + dt.timedelta(seconds=timeout_s) if timeout_s > 0 else None
    return ApprovalRow(
        id=new_id(),
        flow_run_id=run.id,
        key=key,
        message=message,
        state=ApprovalState.PENDING,
        requested_at=now,
        asked_at=now,
        deadline=deadline,
        decided_by="",
        reason="",
    )


def _asked_by_current_runner(run: FlowRunRow, approval: ApprovalRow) -> bool:
    """Asked since the run's last resume: the runner driving the run now waits for it."""
    return run.resumed_at is None or approval.asked_at >= run.resumed_at


def _decide(
    tx: Tx,
    run: FlowRunRow,
    approval: ApprovalRow,
    state: ApprovalState,
    actor: str,
    reason: str,
) -> None:
    approval.state = state
    approval.decided_at = tx.now
    approval.decided_by = actor
    approval.reason = reason
    if state == ApprovalState.TIMED_OUT:
        detail = f"timed out: {reason}"
    else:
        detail = f"{state} by {actor}" + (f": {reason}" if reason else "")
    record_event(
        tx, kind=EventKind.decided(state), flow_run_id=run.id, key=approval.key, message=detail
    )
    tx.effects.touched_runs.add(run.id)
    if run.state == RunState.PAUSED and not _still_waiting(tx.session, run, approval.id):
        move_run(tx, run, RunState.RUNNING, f"approval {approval.key} {detail}")


def _still_waiting(session: Session, run: FlowRunRow, decided_id: str) -> bool:
    """Whether the runner waits for another pending approval of ``run``."""
    query = select(ApprovalRow.id).where(
        ApprovalRow.flow_run_id == run.id,
        ApprovalRow.state == ApprovalState.PENDING,
        ApprovalRow.id != decided_id,
    )
    if run.resumed_at is not None:
        query = query.where(ApprovalRow.asked_at >= run.resumed_at)
    return session.scalar(query.limit(1)) is not None
