"""Submitting step calls: new step runs with their first attempt, or the stored result of a
call the run made before (resume replays the body; completed steps are not run again)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from sqlalchemy import func, select

from control_plane.orchestration.values import StepSubmission, SubmittedStep
from control_plane.store.ids import new_id
from control_plane.store.models import AttemptRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx, move_step, record_event
from meridian.core.errors import ConflictError, NotFound
from meridian.core.kinds import EventKind
from meridian.core.spec import DEFAULT_SCHEDULE_TIMEOUT_S
from meridian.core.states import TERMINAL_STEP, AttemptState, RunState, StepState


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def submit_steps(tx: Tx, run_id: str, submissions: Sequence[StepSubmission]) -> list[SubmittedStep]:
    run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if run.state != RunState.RUNNING:
        raise ConflictError(f"flow run {run_id} is {run.state}; only RUNNING runs take new steps")
    keys = [s.key for s in submissions]
    known = {
        row.key: row
        for row in tx.session.scalars(
            select(StepRunRow).where(StepRunRow.flow_run_id == run_id, StepRunRow.key.in_(keys))
        )
    }
    result = []
    created: list[StepRunRow] = []
    for sub in submissions:
        inputs_digest = digest(sub.inputs_json)
        step = known.get(sub.key)
        if step is not None:
            if step.inputs_digest != inputs_digest:
                raise ConflictError(
                    f"step key {sub.key!r} was already submitted in run {run_id} with different "
                    "inputs (a changed input digest is never silently reused); give calls with "
                    "different inputs different keys"
                )
            _reopen_after_resume(tx, run, step)
            ended = step.state in TERMINAL_STEP
            result.append(
                SubmittedStep(
                    sub.key,
                    step.id,
                    step.state,
                    existing=True,
                    result_json=(step.result_json or "") if ended else "",
                    error=step.error if ended else None,
                )
            )
            continue
        step = _new_step(tx, run, sub, inputs_digest)
        known[sub.key] = step
        created.append(step)
        result.append(SubmittedStep(sub.key, step.id, step.state, existing=False))
    tx.session.flush()  # step rows first: attempts reference them
    for step in created:
        queue_attempt(tx, step, 1, tx.now)
    return result


def _reopen_after_resume(tx: Tx, run: FlowRunRow, step: StepRunRow) -> None:
    """A step that failed before the run was resumed runs again when the body reaches it;
    completed steps keep their stored result (that is what makes resume cheap and safe)."""
    if step.state not in (StepState.FAILED, StepState.CANCELLED) or run.resumed_at is None:
        return
    if step.ended_at is not None and step.ended_at > run.resumed_at:
        return
    attempts = tx.session.scalar(
        select(func.max(AttemptRow.number)).where(AttemptRow.step_run_id == step.id)
    )
    step.ended_at = None
    step.error = None
    move_step(tx, step, StepState.PENDING, "run resumed: running it again")
    queue_attempt(tx, step, int(attempts or 0) + 1, tx.now)


def _new_step(tx: Tx, run: FlowRunRow, sub: StepSubmission, inputs_digest: str) -> StepRunRow:
    step = StepRunRow(
        id=new_id(),
        flow_run_id=run.id,
        key=sub.key,
        name=sub.spec.name or sub.key,
        spec=sub.spec,
        inputs_json=sub.inputs_json,
        inputs_digest=inputs_digest,
        state=StepState.PENDING,
        created_at=tx.now,
    )
    tx.session.add(step)
    record_event(
        tx,
        kind=EventKind.STEP_PENDING,
        flow_run_id=run.id,
        step=step,
        to_state=StepState.PENDING,
        message=f"target {sub.spec.target or '(any)'!r}, provider {sub.spec.provider!r}",
    )
    return step


def queue_attempt(tx: Tx, step: StepRunRow, number: int, not_before: dt.datetime) -> AttemptRow:
    """Queue attempt ``number`` of ``step``, to start no earlier than ``not_before``."""
    schedule_timeout = step.spec.schedule_timeout_s or DEFAULT_SCHEDULE_TIMEOUT_S
    attempt = AttemptRow(
        id=new_id(),
        step_run_id=step.id,
        flow_run_id=step.flow_run_id,
        number=number,
        state=AttemptState.QUEUED,
        provider=step.spec.provider,
        queued_at=tx.now,
        not_before=not_before,
        schedule_deadline=not_before + dt.timedelta(seconds=schedule_timeout),
        fencing_token=0,
    )
    tx.session.add(attempt)
    delay = (not_before - tx.now).total_seconds()
    record_event(
        tx,
        kind=EventKind.ATTEMPT_QUEUED,
        flow_run_id=step.flow_run_id,
        step=step,
        attempt=attempt,
        to_state=AttemptState.QUEUED,
        message=f"attempt {number} queued" + (f", starts in {delay:.2f}s" if delay > 0 else ""),
    )
    tx.effects.touched_runs.add(step.flow_run_id)
    tx.effects.wake_scheduler = True
    return attempt
