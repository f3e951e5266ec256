"""The one place state changes: move a row, check the move is legal, write its event.

Every function here runs inside the caller's transaction, so the new current state and the
history row that documents it commit (or roll back) together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from control_plane.orchestration.machines import (
    check_attempt_transition,
    check_run_transition,
    check_step_transition,
)
from control_plane.orchestration.values import Effects
from control_plane.store.models import AttemptRow, EventRow, FlowRunRow, StepRunRow

MAX_EVENT_MESSAGE = 4000
_PENDING_EVENTS = "meridian.pending_events"
# pg_advisory_xact_lock key for "events are inserted in commit order"; "MRDNEVTS" as an int.
_EVENTS_LOCK_KEY = int.from_bytes(b"MRDNEVTS", "big") >> 1


def _insert_events_in_commit_order(session: Session) -> None:
    """Insert the transaction's events last, under a lock held until commit.

    Watchers read a run's events by increasing id. On PostgreSQL several transactions run at
    once and ids are taken at insert time, so without this an event could commit after a
    higher id had already been streamed and never be delivered. Taking the lock as the last
    thing before commit (after the change's own row locks) keeps the lock order the same
    everywhere, so it cannot deadlock. SQLite has one writer: no lock needed.
    """
    rows: list[EventRow] | None = session.info.pop(_PENDING_EVENTS, None)
    if not rows:
        return
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENTS_LOCK_KEY})
    session.add_all(rows)
    session.flush()


def _discard_events(session: Session) -> None:
    session.info.pop(_PENDING_EVENTS, None)


if not event.contains(Session, "before_commit", _insert_events_in_commit_order):
    event.listen(Session, "before_commit", _insert_events_in_commit_order)
    event.listen(Session, "after_rollback", _discard_events)


def record_event(
    session: Session,
    *,
    kind: str,
    now: dt.datetime,
    flow_run_id: str | None,
    step: StepRunRow | None = None,
    attempt: AttemptRow | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    key: str | None = None,
) -> None:
    """Queue an event; ``key`` names what it is about when that is not a step run (an
    approval's key), and is shown where a step's key would be."""
    session.info.setdefault(_PENDING_EVENTS, []).append(
        EventRow(
            flow_run_id=flow_run_id,
            step_run_id=step.id if step else (attempt.step_run_id if attempt else None),
            attempt_id=attempt.id if attempt else None,
            step_key=step.key if step else key,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            message=message[:MAX_EVENT_MESSAGE],
            details=details,
            created_at=now,
        )
    )


def move_run(
    session: Session,
    run: FlowRunRow,
    target: str,
    now: dt.datetime,
    effects: Effects,
    message: str = "",
) -> None:
    check_run_transition(run.state, target)
    previous, run.state = run.state, target
    record_event(
        session,
        kind=f"run.{target.lower()}",
        now=now,
        flow_run_id=run.id,
        from_state=previous,
        to_state=target,
        message=message,
    )
    effects.touched_runs.add(run.id)


def move_step(
    session: Session,
    step: StepRunRow,
    target: str,
    now: dt.datetime,
    effects: Effects,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    check_step_transition(step.state, target)
    previous, step.state = step.state, target
    record_event(
        session,
        kind=f"step.{target.lower()}",
        now=now,
        flow_run_id=step.flow_run_id,
        step=step,
        from_state=previous,
        to_state=target,
        message=message,
        details=details,
    )
    effects.touched_runs.add(step.flow_run_id)


def move_attempt(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    target: str,
    now: dt.datetime,
    effects: Effects,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    check_attempt_transition(attempt.state, target)
    previous, attempt.state = attempt.state, target
    record_event(
        session,
        kind=f"attempt.{target.lower()}",
        now=now,
        flow_run_id=attempt.flow_run_id,
        step=step,
        attempt=attempt,
        from_state=previous,
        to_state=target,
        message=message,
        details=details,
    )
    effects.touched_runs.add(attempt.flow_run_id)
