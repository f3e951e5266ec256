"""The one place state changes: move a row, check the move is legal, write its event.

Every function here runs inside the caller's transaction, so the new current state and the
history row that documents it commit (or roll back) together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from control_plane.orchestration.states import (
    check_attempt_transition,
    check_run_transition,
    check_step_transition,
)
from control_plane.orchestration.values import Effects
from control_plane.store.models import AttemptRow, EventRow, FlowRunRow, StepRunRow

MAX_EVENT_MESSAGE = 4000


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
) -> None:
    session.add(
        EventRow(
            flow_run_id=flow_run_id,
            step_run_id=step.id if step else (attempt.step_run_id if attempt else None),
            attempt_id=attempt.id if attempt else None,
            step_key=step.key if step else None,
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
