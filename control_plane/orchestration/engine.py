"""Use cases that change state: create runs, submit steps, assign, apply agent reports, finish.

Each function takes the session first, runs inside the caller's transaction, changes rows only
through ``transitions`` (so every change has its event) and collects what must happen after the
commit in an ``Effects`` value: frames to send, runs whose watchers to wake, slots released.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.orchestration.retry import RetryPolicy, decide_retry
from control_plane.orchestration.rules import judge_report
from control_plane.orchestration.transitions import move_attempt, move_run, move_step, record_event
from control_plane.orchestration.values import (
    AssignOut,
    CancelOut,
    DecisionOut,
    Effects,
    ReportIn,
    StepSubmission,
    SubmittedStep,
    error_dict,
)
from control_plane.store.models import (
    AgentRow,
    AttemptRow,
    BundleRow,
    FlowRunRow,
    LogRow,
    StepRunRow,
)
from meridian.core.errors import ConflictError, NotFound
from meridian.core.states import (
    LIVE_RUN,
    SLOT_HOLDING,
    TERMINAL_RUN,
    TERMINAL_STEP,
    AttemptState,
    RunState,
    StepState,
)

MAX_LOG_LINE = 16 * 1024
DEFAULT_RUNNER_LEASE_S = 60.0
OUTCOME_TO_ERROR_CLASS = {"TIMED_OUT": "timeout", "CANCELLED": "cancelled", "LOST": "lost_agent"}


def new_id() -> str:
    return str(uuid.uuid4())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- runs and steps ---------------------------------------------------------------------


def create_run(
    session: Session,
    *,
    flow_name: str,
    entrypoint: str,
    parameters_json: str,
    bundle_sha256: str,
    trigger: str,
    now: dt.datetime,
    effects: Effects,
    scope: Sequence[str] = (),
) -> FlowRunRow:
    if session.get(BundleRow, bundle_sha256) is None:
        raise NotFound(f"code bundle {bundle_sha256[:12]} has not been uploaded")
    run = FlowRunRow(
        id=new_id(),
        flow_name=flow_name,
        entrypoint=entrypoint,
        trigger=trigger,
        parameters_json=parameters_json,
        bundle_sha256=bundle_sha256,
        state=RunState.PENDING,
        created_at=now,
        scope=list(scope),
    )
    session.add(run)
    session.flush()
    record_event(
        session,
        kind="run.pending",
        now=now,
        flow_run_id=run.id,
        to_state=RunState.PENDING,
        message=f"{trigger} run of {flow_name} ({entrypoint})",
    )
    run.started_at = now
    run.runner_lease_expires_at = now + dt.timedelta(seconds=DEFAULT_RUNNER_LEASE_S)
    move_run(session, run, RunState.RUNNING, now, effects, "flow runner started")
    # No API authentication yet: every run is started through the CLI or its SDK runner.
    audit.records.run_triggered(session, run, actor=audit.CLI)
    return run


def submit_steps(
    session: Session,
    run_id: str,
    submissions: Sequence[StepSubmission],
    now: dt.datetime,
    effects: Effects,
) -> list[SubmittedStep]:
    run = session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if run.state != RunState.RUNNING:
        raise ConflictError(f"flow run {run_id} is {run.state}; only RUNNING runs take new steps")
    keys = [s.key for s in submissions]
    known = {
        row.key: row
        for row in session.scalars(
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
            _reopen_after_resume(session, run, step, now, effects)
            result.append(
                SubmittedStep(
                    sub.key,
                    step.id,
                    step.state,
                    existing=True,
                    result_json=(step.result_json or "") if step.state in TERMINAL_STEP else "",
                    error=step.error if step.state in TERMINAL_STEP else None,
                )
            )
            continue
        step = _new_step(session, run, sub, inputs_digest, now)
        known[sub.key] = step
        created.append(step)
        result.append(SubmittedStep(sub.key, step.id, step.state, existing=False))
    session.flush()  # step rows first: attempts reference them
    for step in created:
        _queue_attempt(session, step, 1, now, now, effects)
    effects.wake_scheduler = True
    return result


def _reopen_after_resume(
    session: Session, run: FlowRunRow, step: StepRunRow, now: dt.datetime, effects: Effects
) -> bool:
    """A step that failed before the run was resumed runs again when the body reaches it;
    completed steps keep their stored result (that is what makes resume cheap and safe)."""
    if step.state not in (StepState.FAILED, StepState.CANCELLED) or run.resumed_at is None:
        return False
    if step.ended_at is not None and step.ended_at > run.resumed_at:
        return False
    attempts = session.scalar(
        select(func.max(AttemptRow.number)).where(AttemptRow.step_run_id == step.id)
    )
    step.ended_at = None
    step.error = None
    move_step(session, step, StepState.PENDING, now, effects, "run resumed: running it again")
    _queue_attempt(session, step, int(attempts or 0) + 1, now, now, effects)
    return True


def _new_step(
    session: Session,
    run: FlowRunRow,
    sub: StepSubmission,
    inputs_digest: str,
    now: dt.datetime,
) -> StepRunRow:
    step = StepRunRow(
        id=new_id(),
        flow_run_id=run.id,
        key=sub.key,
        name=str(sub.spec.get("name", sub.key)),
        spec=sub.spec,
        inputs_json=sub.inputs_json,
        inputs_digest=inputs_digest,
        state=StepState.PENDING,
        created_at=now,
    )
    session.add(step)
    record_event(
        session,
        kind="step.pending",
        now=now,
        flow_run_id=run.id,
        step=step,
        to_state=StepState.PENDING,
        message=f"target {sub.spec.get('target') or '(any)'!r}, "
        f"provider {sub.spec.get('provider')!r}",
    )
    return step


def _queue_attempt(
    session: Session,
    step: StepRunRow,
    number: int,
    not_before: dt.datetime,
    now: dt.datetime,
    effects: Effects,
) -> AttemptRow:
    schedule_timeout = float(step.spec.get("schedule_timeout_s") or 600.0)
    attempt = AttemptRow(
        id=new_id(),
        step_run_id=step.id,
        flow_run_id=step.flow_run_id,
        number=number,
        state=AttemptState.QUEUED,
        provider=str(step.spec.get("provider", "")),
        queued_at=now,
        not_before=not_before,
        schedule_deadline=not_before + dt.timedelta(seconds=schedule_timeout),
        fencing_token=0,
    )
    session.add(attempt)
    delay = (not_before - now).total_seconds()
    record_event(
        session,
        kind="attempt.queued",
        now=now,
        flow_run_id=step.flow_run_id,
        step=step,
        attempt=attempt,
        to_state=AttemptState.QUEUED,
        message=f"attempt {number} queued" + (f", starts in {delay:.2f}s" if delay > 0 else ""),
    )
    effects.touched_runs.add(step.flow_run_id)
    effects.wake_scheduler = True
    return attempt


def finish_run(
    session: Session,
    run_id: str,
    *,
    succeeded: bool,
    result_json: str,
    error: dict[str, Any] | None,
    now: dt.datetime,
    effects: Effects,
) -> str:
    run = session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    target = RunState.COMPLETED if succeeded else RunState.FAILED
    if run.state in (RunState.CANCELLING, RunState.CANCELLED):
        return run.state  # the runner ends its body after a cancel: nothing to decide
    if run.state in TERMINAL_RUN:
        if run.state == target:
            return run.state  # a retried FinishRun call
        raise ConflictError(f"flow run {run_id} already ended as {run.state}")
    cancel_live_attempts(session, run, now, effects, "the flow body finished without it")
    run.ended_at = now
    run.runner_lease_expires_at = None
    run.result_json = result_json if succeeded else None
    run.error = None if succeeded else error
    message = "" if succeeded or not error else f"{error.get('type')}: {error.get('message')}"
    move_run(session, run, target, now, effects, message)
    return run.state


def cancel_live_attempts(
    session: Session, run: FlowRunRow, now: dt.datetime, effects: Effects, reason: str
) -> int:
    """Cancel every unfinished attempt of ``run``; returns how many agents must confirm.

    Queued attempts end at once. Attempts an agent holds stay held until it confirms (its
    provider has stopped the infrastructure) or the agent is declared lost.
    """
    steps = session.scalars(
        select(StepRunRow).where(
            StepRunRow.flow_run_id == run.id, StepRunRow.state.not_in(list(TERMINAL_STEP))
        )
    ).all()
    waiting = 0
    for step in steps:
        for attempt in _live_attempts(session, step.id):
            if attempt.state == AttemptState.QUEUED:
                error = error_dict("cancelled", "meridian.StepCancelled", reason)
                finish_attempt(
                    session, attempt, step, AttemptState.CANCELLED, now, effects, error=error
                )
            elif attempt.agent_id:
                waiting += 1
                effects.cancels.append(
                    CancelOut(attempt.agent_id, attempt.id, attempt.fencing_token, reason)
                )
    return waiting


def _live_attempts(session: Session, step_run_id: str) -> list[AttemptRow]:
    live = [AttemptState.QUEUED, AttemptState.ASSIGNED, AttemptState.RUNNING]
    return list(
        session.scalars(
            select(AttemptRow).where(
                AttemptRow.step_run_id == step_run_id, AttemptRow.state.in_(live)
            )
        )
    )


# ---- assignment -------------------------------------------------------------------------


def assign_attempt(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    run: FlowRunRow,
    agent: AgentRow,
    now: dt.datetime,
    effects: Effects,
) -> AssignOut:
    step.last_fencing_token += 1
    attempt.fencing_token = step.last_fencing_token
    attempt.agent_id = agent.id
    attempt.environment = agent.environment
    attempt.assigned_at = now
    move_attempt(
        session,
        attempt,
        step,
        AttemptState.ASSIGNED,
        now,
        effects,
        f"assigned to agent {agent.name} in {agent.environment}",
        {"agent_id": agent.id, "environment": agent.environment, "token": attempt.fencing_token},
    )
    out = assign_frame(attempt, step, run)
    effects.assigns.append(out)
    return out


def assign_frame(attempt: AttemptRow, step: StepRunRow, run: FlowRunRow) -> AssignOut:
    assert attempt.agent_id is not None
    return AssignOut(
        agent_id=attempt.agent_id,
        attempt_id=attempt.id,
        fencing_token=attempt.fencing_token,
        flow_run_id=run.id,
        step_run_id=step.id,
        step_key=step.key,
        attempt_number=attempt.number,
        spec=step.spec,
        bundle_sha256=run.bundle_sha256,
        inputs_json=step.inputs_json,
    )


def fail_unschedulable(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    explanation: str,
    now: dt.datetime,
    effects: Effects,
) -> None:
    error = error_dict("scheduling", "meridian.NoMatchingAgent", explanation)
    finish_attempt(session, attempt, step, AttemptState.FAILED, now, effects, error=error)


# ---- reports ----------------------------------------------------------------------------


def apply_reports(
    session: Session, agent_id: str, reports: Sequence[ReportIn], now: dt.datetime
) -> tuple[int, list[DecisionOut], Effects]:
    """Apply each report once, in seq order; return the new watermark to ack."""
    effects = Effects()
    agent = session.get(AgentRow, agent_id, with_for_update=True)
    if agent is None:
        raise NotFound(f"agent {agent_id} is not enrolled")
    watermark = agent.last_applied_seq
    decisions: list[DecisionOut] = []
    for report in sorted(reports, key=lambda r: r.seq):
        if report.seq <= watermark:
            # Applied before, but the agent never saw the ack: answer proposals again.
            if report.kind == "running":
                decisions.append(_redecide_running(session, agent_id, report))
            continue
        decision = _apply_one(session, agent_id, report, now, effects)
        if decision is not None:
            decisions.append(decision)
        watermark = report.seq
    agent.last_applied_seq = watermark
    return watermark, decisions, effects


def _redecide_running(session: Session, agent_id: str, report: ReportIn) -> DecisionOut:
    attempt = session.get(AttemptRow, report.attempt_id)
    accept = (
        attempt is not None
        and attempt.agent_id == agent_id
        and attempt.fencing_token == report.fencing_token
        and attempt.state == AttemptState.RUNNING
    )
    reason = "" if accept else "attempt is no longer held by this agent"
    return DecisionOut(report.attempt_id, report.fencing_token, accept, reason)


def _apply_one(
    session: Session, agent_id: str, report: ReportIn, now: dt.datetime, effects: Effects
) -> DecisionOut | None:
    attempt = session.get(AttemptRow, report.attempt_id, with_for_update=True)
    verdict = judge_report(agent_id, attempt, report)
    if verdict is not None:
        # A late outcome (e.g. the copy of a lost attempt finishing) is not applied, but the
        # history says it arrived: at-least-once execution made visible.
        if verdict.action == "reject" or report.kind == "finished":
            record_event(
                session,
                kind="report.rejected" if verdict.action == "reject" else "report.ignored",
                now=now,
                flow_run_id=attempt.flow_run_id if attempt else None,
                attempt=attempt,
                message=f"{report.kind} report from agent {agent_id} "
                f"{verdict.action}ed: {verdict.reason}",
                details={"agent_id": agent_id, "token": report.fencing_token, "seq": report.seq},
            )
        if report.kind == "running":
            return DecisionOut(report.attempt_id, report.fencing_token, False, verdict.reason)
        return None
    assert attempt is not None
    step = session.get(StepRunRow, attempt.step_run_id)
    assert step is not None
    if report.kind == "running":
        return _accept_running(session, attempt, step, report, now, effects)
    if report.kind == "handle":
        attempt.handle_json = report.handle_json
        attempt.resource_id = report.resource_id[:512]
        record_event(
            session,
            kind="attempt.resource",
            now=now,
            flow_run_id=attempt.flow_run_id,
            step=step,
            attempt=attempt,
            message=f"running as {report.resource_id}",
        )
    elif report.kind == "logs":
        _store_logs(session, attempt, step, report)
    elif report.kind == "finished":
        finish_attempt(
            session,
            attempt,
            step,
            report.outcome,
            now,
            effects,
            result_json=report.result_json,
            error=report.error,
            exit_code=report.exit_code,
            actor=audit.agent_actor(agent_id),
        )
    return None


def _accept_running(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    report: ReportIn,
    now: dt.datetime,
    effects: Effects,
) -> DecisionOut:
    if attempt.state == AttemptState.ASSIGNED:
        attempt.started_at = now
        move_attempt(session, attempt, step, AttemptState.RUNNING, now, effects, "started")
        if step.state == StepState.PENDING:
            move_step(session, step, StepState.RUNNING, now, effects)
    return DecisionOut(attempt.id, attempt.fencing_token, True)


def _store_logs(session: Session, attempt: AttemptRow, step: StepRunRow, report: ReportIn) -> None:
    for line in report.lines:
        session.add(
            LogRow(
                flow_run_id=attempt.flow_run_id,
                step_run_id=step.id,
                attempt_id=attempt.id,
                step_key=step.key,
                attempt_number=attempt.number,
                stream=line.stream[:16],
                text=line.text[:MAX_LOG_LINE],
                at=line.at,
            )
        )


def finish_attempt(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    outcome: str,
    now: dt.datetime,
    effects: Effects,
    *,
    result_json: str = "",
    error: dict[str, Any] | None = None,
    exit_code: int | None = None,
    actor: str = audit.SYSTEM,
) -> None:
    """End an attempt and decide its step's next move: complete, retry later, or fail.

    ``actor`` is who ended it for the audit log: the reporting agent, or the control plane.
    """
    held = attempt.state in SLOT_HOLDING
    if outcome != AttemptState.SUCCEEDED and error is None:
        error_class = OUTCOME_TO_ERROR_CLASS.get(outcome, "infrastructure")
        error = error_dict(error_class, "meridian.AttemptFailed", f"attempt ended {outcome}")
    attempt.ended_at = now
    attempt.exit_code = exit_code
    attempt.error = error
    move_attempt(session, attempt, step, outcome, now, effects, _describe(outcome, error), error)
    audit.records.attempt_finished(session, attempt, step, result_json=result_json, actor=actor)
    if held:
        effects.release(attempt.agent_id)
    try:
        if step.state in TERMINAL_STEP:
            return  # e.g. a cancel confirmation after the run already ended
        _decide_step(session, attempt, step, outcome, now, effects, result_json, error)
    finally:
        complete_cancel_if_confirmed(session, attempt.flow_run_id, now, effects)


def _decide_step(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    outcome: str,
    now: dt.datetime,
    effects: Effects,
    result_json: str,
    error: dict[str, Any] | None,
) -> None:
    if outcome == AttemptState.SUCCEEDED:
        step.result_json = result_json or "null"
        step.ended_at = now
        move_step(session, step, StepState.COMPLETED, now, effects, f"attempt {attempt.number}")
        return
    assert error is not None
    _after_failure(session, attempt, step, outcome, error, now, effects)


def complete_cancel_if_confirmed(
    session: Session, run_id: str, now: dt.datetime, effects: Effects
) -> None:
    """CANCELLING -> CANCELLED once no attempt of the run is live any more."""
    run = session.get(FlowRunRow, run_id)
    if run is None or run.state != RunState.CANCELLING:
        return
    session.flush()
    live = session.scalar(
        select(AttemptRow.id)
        .where(
            AttemptRow.flow_run_id == run_id,
            AttemptRow.state.in_(
                [AttemptState.QUEUED, AttemptState.ASSIGNED, AttemptState.RUNNING]
            ),
        )
        .limit(1)
    )
    if live is not None:
        return
    for step in session.scalars(
        select(StepRunRow).where(
            StepRunRow.flow_run_id == run_id, StepRunRow.state.not_in(list(TERMINAL_STEP))
        )
    ):
        step.ended_at = now
        move_step(session, step, StepState.CANCELLED, now, effects, "run cancelled")
    run.ended_at = now
    run.runner_lease_expires_at = None
    move_run(session, run, RunState.CANCELLED, now, effects, "every attempt confirmed")


def _after_failure(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    outcome: str,
    error: dict[str, Any],
    now: dt.datetime,
    effects: Effects,
) -> None:
    run = session.get(FlowRunRow, attempt.flow_run_id)
    assert run is not None
    if outcome == AttemptState.CANCELLED or run.state not in LIVE_RUN:
        step.ended_at = now
        step.error = error
        move_step(session, step, StepState.CANCELLED, now, effects, "cancelled")
        return
    if outcome == AttemptState.LOST and step.spec.get("on_agent_lost") == "fail":
        step.ended_at = now
        step.error = error
        move_step(session, step, StepState.FAILED, now, effects, "agent lost; on_agent_lost=fail")
        return
    decision = decide_retry(
        policy_from_spec(step.spec),
        attempt.number,
        str(error.get("error_class", "")),
        tuple(error.get("type_mro") or ()),
        random.random(),
    )
    if decision.retry:
        not_before = now + dt.timedelta(seconds=decision.delay_s)
        message = (
            f"retry {attempt.number}/{step.spec.get('retries', 0)} "
            f"in {decision.delay_s:.2f}s: {decision.reason}"
        )
        if step.state == StepState.RUNNING:
            move_step(session, step, StepState.PENDING, now, effects, message)
        else:
            record_event(
                session,
                kind="step.retrying",
                now=now,
                flow_run_id=step.flow_run_id,
                step=step,
                message=message,
            )
        _queue_attempt(session, step, attempt.number + 1, not_before, now, effects)
        return
    step.ended_at = now
    step.error = error
    move_step(session, step, StepState.FAILED, now, effects, decision.reason)


def _describe(outcome: str, error: dict[str, Any] | None) -> str:
    if not error:
        return outcome.lower()
    return f"{error.get('error_class')}: {error.get('type')}: {error.get('message', '')}"[:1000]


def policy_from_spec(spec: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        retries=int(spec.get("retries", 0)),
        delay_s=float(spec.get("retry_delay_s", 0.0)),
        backoff=float(spec.get("retry_backoff", 1.0) or 1.0),
        jitter=float(spec.get("retry_jitter", 0.0)),
        retry_on=tuple(spec.get("retry_on") or ()),
    )
