"""Attempts: assign them to agents, apply agents' reports, finish them and decide the step.

Reports are judged by the ordered rules in ``orchestration/rules.py``; what a finished attempt
means for its step is decided by ``orchestration/decisions.py``. Everything here runs in the
caller's ``Tx`` and changes state only through ``store.tx``, so every change has its event.

An attempt's ``started_at`` and ``ended_at`` are the agent's observations (``ReportIn.at``, the
time the agent journaled the report), not the moment the report arrived: a report replayed
after an outage keeps its time. Agents' clocks are not trusted blindly (``reported_time``): a
time more than ``MAX_CLOCK_SKEW`` ahead of the control plane's, or before the attempt was
assigned, is clamped, and the event of the change says so.

A successful attempt's result may have stayed in its site's result store: the report then
carries a reference (``ResultRef``) instead of JSON. It is applied only if it is a valid
reference of the reporting agent's own environment and of a store that agent advertised;
otherwise the report is rejected (an event says why) and the attempt fails, as for any report
the control plane cannot accept. The step run keeps the reference, never the bytes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.decisions import (
    MAX_REFUSALS,
    decide_after_failure,
    error_for_outcome,
    reported_time,
    requeue_after_refusal,
)
from control_plane.orchestration.reported_refs import checked_result_ref
from control_plane.orchestration.rules import AttemptFacts, judge_report
from control_plane.orchestration.values import AssignOut, CancelOut, DecisionOut, ReportIn
from control_plane.store.models import AgentRow, AttemptRow, EventRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx, move_attempt, move_run, move_step, record_event
from control_plane.usecases.environments import residency_for_steps, stored_refs
from control_plane.usecases.input_refs import constrain_queued
from control_plane.usecases.logs import store_log_lines
from control_plane.usecases.outcome_triggers import fire_outcome_triggers
from control_plane.usecases.steps import queue_attempt
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.errors import NotFound, ValidationError
from meridian.core.kinds import ASSIGNMENT_REFUSED, EventKind, ReportKind, Verdict
from meridian.core.resultref import ResultRef
from meridian.core.states import (
    LIVE_ATTEMPT,
    LIVE_RUN,
    SLOT_HOLDING,
    TERMINAL_STEP,
    AttemptState,
    RunState,
    StepState,
)

# How far ahead of the control plane's clock an agent's report time may be.
# The error type of an attempt the agent ended because it quarantined one of its reports.
REPORT_QUARANTINED = "meridian.ReportQuarantined"
# The error type of an attempt whose agent reported a result reference it may not report.
INVALID_RESULT_REFERENCE = "meridian.InvalidResultReference"
_ID_CHUNK = 500


# ---- cancel -------------------------------------------------------------------------------


def cancel_live_attempts(tx: Tx, run: FlowRunRow, reason: str) -> int:
    """Cancel every unfinished attempt of ``run``; returns how many agents must confirm.

    Queued attempts end at once. Attempts an agent holds stay held until it confirms (its
    provider has stopped the infrastructure) or the agent is declared lost.
    """
    steps = tx.session.scalars(
        select(StepRunRow).where(
            StepRunRow.flow_run_id == run.id, StepRunRow.state.not_in(list(TERMINAL_STEP))
        )
    ).all()
    waiting = 0
    for step in steps:
        for attempt in _live_attempts(tx, step.id):
            if attempt.state == AttemptState.QUEUED:
                error = ErrorInfo(ErrorClass.CANCELLED, "meridian.StepCancelled", reason)
                finish_attempt(tx, attempt, step, AttemptState.CANCELLED, error=error)
            elif attempt.agent_id:
                waiting += 1
                tx.effects.cancels.append(
                    CancelOut(attempt.agent_id, attempt.id, attempt.fencing_token, reason)
                )
    return waiting


def _live_attempts(tx: Tx, step_run_id: str) -> list[AttemptRow]:
    query = select(AttemptRow).where(
        AttemptRow.step_run_id == step_run_id, AttemptRow.state.in_(list(LIVE_ATTEMPT))
    )
    return list(tx.session.scalars(query))


def complete_cancel_if_confirmed(tx: Tx, run_id: str) -> None:
    """CANCELLING -> CANCELLED once no attempt of the run is live any more."""
    run = tx.session.get(FlowRunRow, run_id)
    if run is None or run.state != RunState.CANCELLING:
        return
    tx.session.flush()
    live = tx.session.scalar(
        select(AttemptRow.id)
        .where(AttemptRow.flow_run_id == run_id, AttemptRow.state.in_(list(LIVE_ATTEMPT)))
        .limit(1)
    )
    if live is not None:
        return
    for step in tx.session.scalars(
        select(StepRunRow).where(
            StepRunRow.flow_run_id == run_id, StepRunRow.state.not_in(list(TERMINAL_STEP))
        )
    ):
        step.ended_at = tx.now
        move_step(tx, step, StepState.CANCELLED, "run cancelled")
    run.ended_at = tx.now
    run.runner_lease_expires_at = None
    move_run(tx, run, RunState.CANCELLED, "every attempt confirmed")
    fire_outcome_triggers(tx, run)


# ---- assignment -------------------------------------------------------------------------


def assign_attempt(
    tx: Tx, attempt: AttemptRow, step: StepRunRow, run: FlowRunRow, agent: AgentRow
) -> AssignOut:
    step.last_fencing_token += 1
    attempt.fencing_token = step.last_fencing_token
    attempt.agent_id = agent.id
    attempt.environment = agent.environment
    attempt.assigned_at = tx.now
    move_attempt(
        tx,
        attempt,
        step,
        AttemptState.ASSIGNED,
        f"assigned to agent {agent.name} in {agent.environment}",
        {"agent_id": agent.id, "environment": agent.environment, "token": attempt.fencing_token},
    )
    out = assign_frame(attempt, step, run)
    tx.effects.assigns.append(out)
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
        input_refs_json=tuple(ref.to_json() for ref in stored_refs(step.input_refs_json)),
    )


def fail_unschedulable(tx: Tx, attempt: AttemptRow, step: StepRunRow, explanation: str) -> None:
    error = ErrorInfo(ErrorClass.SCHEDULING, "meridian.NoMatchingAgent", explanation)
    finish_attempt(tx, attempt, step, AttemptState.FAILED, error=error)


# ---- reports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reporter:
    """The reporting agent as far as its result references are concerned."""

    agent_id: str
    environment: str
    result_stores: Collection[str]


def apply_reports(
    tx: Tx,
    agent_id: str,
    reports: Sequence[ReportIn],
    *,
    result_stores: Collection[str] = frozenset(),
) -> tuple[int, list[DecisionOut]]:
    """Apply each report once, in seq order; return the new watermark to ack and the answers
    to RUNNING proposals. ``result_stores``: the stores the agent advertised in its Hello (a
    result reference must name one of them)."""
    agent = tx.session.get(AgentRow, agent_id, with_for_update=True)
    if agent is None:
        raise NotFound(f"agent {agent_id} is not enrolled")
    reporter = _Reporter(agent_id, agent.environment, frozenset(result_stores))
    watermark = agent.last_applied_seq
    decisions: list[DecisionOut] = []
    held, _keep = _load_batch(tx, reports)  # _keep: the session holds rows only weakly
    for report in sorted(reports, key=lambda r: r.seq):
        if report.seq <= watermark:
            # Applied before, but the agent never saw the ack: answer proposals again.
            if report.kind == ReportKind.RUNNING:
                decisions.append(_redecide_running(tx, agent_id, report))
            continue
        decision = _apply_one(tx, reporter, report, held.get(report.attempt_id))
        if decision is not None:
            decisions.append(decision)
        watermark = report.seq
    agent.last_applied_seq = watermark
    return watermark, decisions


def _load_batch(tx: Tx, reports: Sequence[ReportIn]) -> tuple[dict[str, AttemptRow], list[object]]:
    """The batch's attempts (locked), with their steps and runs, in one query each: applying
    the reports then finds them in the session instead of asking once per report. Returns
    the attempts by id, and every row read (to keep them in the session's identity map)."""
    ids = sorted({r.attempt_id for r in reports})
    attempts: dict[str, AttemptRow] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        query = (
            select(AttemptRow)
            .where(AttemptRow.id.in_(ids[start : start + _ID_CHUNK]))
            .with_for_update()
        )
        attempts.update((a.id, a) for a in tx.session.scalars(query))
    rows: list[object] = list(attempts.values())
    for model, key in ((StepRunRow, "step_run_id"), (FlowRunRow, "flow_run_id")):
        wanted = sorted({getattr(a, key) for a in attempts.values()})
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[start : start + _ID_CHUNK]
            rows.extend(tx.session.scalars(select(model).where(model.id.in_(chunk))))
    return attempts, rows


def _redecide_running(tx: Tx, agent_id: str, report: ReportIn) -> DecisionOut:
    attempt = tx.session.get(AttemptRow, report.attempt_id)
    accept = (
        attempt is not None
        and attempt.agent_id == agent_id
        and attempt.fencing_token == report.fencing_token
        and attempt.state == AttemptState.RUNNING
    )
    reason = "" if accept else "attempt is no longer held by this agent"
    return DecisionOut(report.attempt_id, report.fencing_token, accept, reason)


def _facts(attempt: AttemptRow | None) -> AttemptFacts | None:
    if attempt is None:
        return None
    return AttemptFacts(attempt.state, attempt.agent_id, attempt.fencing_token)


def _apply_one(
    tx: Tx, reporter: _Reporter, report: ReportIn, attempt: AttemptRow | None
) -> DecisionOut | None:
    agent_id = reporter.agent_id
    judgement = judge_report(agent_id, _facts(attempt), report)
    if judgement is not None:
        # A late outcome (e.g. the copy of a lost attempt finishing) is not applied, but the
        # history says it arrived: at-least-once execution made visible.
        if judgement.verdict == Verdict.REJECT or report.kind == ReportKind.FINISHED:
            record_event(
                tx,
                kind=EventKind.verdict(judgement.verdict),
                flow_run_id=attempt.flow_run_id if attempt else None,
                attempt=attempt,
                message=f"{report.kind} report from agent {agent_id} "
                f"{judgement.verdict.past_tense}: {judgement.reason}",
                details={"agent_id": agent_id, "token": report.fencing_token, "seq": report.seq},
            )
        if report.kind == ReportKind.RUNNING:
            return DecisionOut(report.attempt_id, report.fencing_token, False, judgement.reason)
        return None
    assert attempt is not None
    step = tx.session.get(StepRunRow, attempt.step_run_id)
    assert step is not None
    if report.kind == ReportKind.RUNNING:
        return _accept_running(tx, attempt, step, report.at)
    if report.kind == ReportKind.HANDLE:
        attempt.handle_json = report.handle_json
        attempt.resource_id = report.resource_id[:512]
        record_event(
            tx,
            kind=EventKind.ATTEMPT_RESOURCE,
            flow_run_id=attempt.flow_run_id,
            step=step,
            attempt=attempt,
            message=f"running as {report.resource_id}",
        )
    elif report.kind == ReportKind.LOGS:
        store_log_lines(tx, attempt, step, report.lines)
    elif report.kind == ReportKind.FINISHED:
        assert report.outcome is not None  # the API layer refuses a finish without one
        if _refused_before_start(attempt, report) and _queue_refused(tx, attempt, step, report):
            return None
        if report.error is not None and report.error.type == REPORT_QUARANTINED:
            _audit_quarantine(tx, agent_id, attempt, report)
        if report.result_ref_json:
            _finish_with_reference(tx, reporter, attempt, step, report)
            return None
        finish_attempt(
            tx,
            attempt,
            step,
            report.outcome,
            result_json=report.result_json,
            error=report.error,
            exit_code=report.exit_code,
            actor=audit.agent_actor(agent_id),
            at=report.at,
        )
    return None


def _refused_before_start(attempt: AttemptRow, report: ReportIn) -> bool:
    return (
        attempt.state == AttemptState.ASSIGNED
        and report.outcome == AttemptState.FAILED
        and report.error is not None
        and report.error.error_class == ErrorClass.INFRASTRUCTURE
        and report.error.type == ASSIGNMENT_REFUSED
    )


def _queue_refused(tx: Tx, attempt: AttemptRow, step: StepRunRow, report: ReportIn) -> bool:
    """Queue an attempt its agent refused before starting anything again, for any matching
    agent, without counting it against the step's retries; False once it was refused too
    often (it then fails like any infrastructure failure)."""
    assert report.error is not None
    refusals = _refusals(tx, attempt)
    delay_s = requeue_after_refusal(refusals)
    if delay_s is None:
        return False
    agent = tx.session.get(AgentRow, attempt.agent_id) if attempt.agent_id else None
    who = f"agent {agent.name}" if agent is not None else "its agent"
    tx.effects.release(attempt.agent_id)
    attempt.agent_id = attempt.environment = attempt.assigned_at = None
    attempt.not_before = tx.now + dt.timedelta(seconds=delay_s)
    wait = f" in {delay_s:.1f}s" if delay_s else ""
    move_attempt(
        tx,
        attempt,
        step,
        AttemptState.QUEUED,
        f"{who} refused it before starting: {report.error.message[:500]}; "
        f"queued again{wait} (refusal {refusals + 1} of {MAX_REFUSALS}, no retry used)",
        {"refused_by": agent.id if agent is not None else None, "refusal": refusals + 1},
    )
    if step.input_refs_json:
        # The ready queue learns a step's residency rules from here, as for a new attempt.
        constrain_queued(tx, residency_for_steps(tx.session, [step.id]))
    return True


def _refusals(tx: Tx, attempt: AttemptRow) -> int:
    """How often agents refused ``attempt`` before: its ASSIGNED -> QUEUED events that say
    so (an attempt queued again for another reason does not use up its refusals)."""
    details = tx.session.scalars(
        select(EventRow.details).where(
            EventRow.flow_run_id == attempt.flow_run_id,
            EventRow.attempt_id == attempt.id,
            EventRow.kind == EventKind.ATTEMPT_QUEUED.value,
            EventRow.from_state == AttemptState.ASSIGNED.value,
        )
    )
    return sum(1 for d in details if isinstance(d, dict) and "refusal" in d)


def _finish_with_reference(
    tx: Tx, reporter: _Reporter, attempt: AttemptRow, step: StepRunRow, report: ReportIn
) -> None:
    """Apply a finish whose result stayed at the site, or reject the report and fail the
    attempt when its reference is not one this agent may report."""
    assert report.outcome is not None
    actor = audit.agent_actor(reporter.agent_id)
    try:
        ref = checked_result_ref(report, reporter.environment, reporter.result_stores)
    except ValidationError as exc:
        problem = str(exc)[:1000]
        record_event(
            tx,
            kind=EventKind.verdict(Verdict.REJECT),
            flow_run_id=attempt.flow_run_id,
            step=step,
            attempt=attempt,
            message=f"{report.kind} report from agent {reporter.agent_id} rejected: {problem}",
            details={
                "agent_id": reporter.agent_id,
                "token": report.fencing_token,
                "seq": report.seq,
            },
        )
        error = ErrorInfo(ErrorClass.INFRASTRUCTURE, INVALID_RESULT_REFERENCE, problem)
        finish_attempt(
            tx, attempt, step, AttemptState.FAILED, error=error, actor=actor, at=report.at
        )
        return
    finish_attempt(
        tx,
        attempt,
        step,
        report.outcome,
        result_ref=ref,
        exit_code=report.exit_code,
        actor=actor,
        at=report.at,
    )


def _audit_quarantine(tx: Tx, agent_id: str, attempt: AttemptRow, report: ReportIn) -> None:
    assert report.error is not None
    audit.append(
        tx.session,
        actor=audit.agent_actor(agent_id),
        action="agent.report_quarantined",
        subject=attempt.id,
        details={
            "flow_run_id": attempt.flow_run_id,
            "agent_id": agent_id,
            "token": report.fencing_token,
            "seq": report.seq,
            "reason": report.error.message[:1000],
        },
        now=tx.now,
    )


def _accept_running(
    tx: Tx, attempt: AttemptRow, step: StepRunRow, at: dt.datetime | None = None
) -> DecisionOut:
    if attempt.state == AttemptState.ASSIGNED:
        attempt.started_at, note = reported_time(at, tx.now, attempt.assigned_at)
        move_attempt(tx, attempt, step, AttemptState.RUNNING, "started" + note)
        if step.state == StepState.PENDING:
            move_step(tx, step, StepState.RUNNING)
    return DecisionOut(attempt.id, attempt.fencing_token, True)


# ---- the end of an attempt -----------------------------------------------------------------


def finish_attempt(
    tx: Tx,
    attempt: AttemptRow,
    step: StepRunRow,
    outcome: AttemptState,
    *,
    result_json: str = "",
    result_ref: ResultRef | None = None,
    error: ErrorInfo | None = None,
    exit_code: int | None = None,
    actor: str = audit.SYSTEM,
    at: dt.datetime | None = None,
) -> None:
    """End an attempt and decide its step's next move: complete, retry later, or fail.

    ``result_ref``: instead of ``result_json``, the reference of a result kept at its site
    (already checked); the audit record's result digest is then that of its JSON form.
    ``actor`` is who ended it for the audit log: the reporting agent, or the control plane.
    ``at`` is when the agent saw it end (default: now), bounded by ``reported_time``.
    """
    ref_json = result_ref.to_json() if result_ref is not None else None
    held = attempt.state in SLOT_HOLDING
    error = error_for_outcome(outcome, error)
    attempt.ended_at, note = reported_time(at, tx.now, attempt.started_at or attempt.assigned_at)
    attempt.exit_code = exit_code
    attempt.error = error
    message = (error.describe()[:1000] if error else outcome.lower()) + note
    move_attempt(tx, attempt, step, outcome, message, error.to_json() if error else None)
    audit.records.attempt_finished(
        tx.session, attempt, step, result_json=ref_json or result_json, actor=actor
    )
    if held:
        tx.effects.release(attempt.agent_id)
    try:
        if step.state in TERMINAL_STEP:
            return  # e.g. a cancel confirmation after the run already ended
        if outcome == AttemptState.SUCCEEDED:
            if result_ref is not None:
                step.result_json = None
                step.result_ref_json, step.result_ref_sha256 = ref_json, result_ref.sha256
            else:
                step.result_json = result_json or "null"
            step.ended_at = tx.now
            move_step(tx, step, StepState.COMPLETED, f"attempt {attempt.number}")
            return
        assert error is not None
        _after_failure(tx, attempt, step, outcome, error)
    finally:
        complete_cancel_if_confirmed(tx, attempt.flow_run_id)


def _after_failure(
    tx: Tx, attempt: AttemptRow, step: StepRunRow, outcome: AttemptState, error: ErrorInfo
) -> None:
    run = tx.session.get(FlowRunRow, attempt.flow_run_id)
    assert run is not None
    decision = decide_after_failure(
        outcome=outcome,
        error=error,
        spec=step.spec,
        attempt_number=attempt.number,
        run_is_live=run.state in LIVE_RUN,
        rand=random.random(),
    )
    if decision.retry_delay_s is None:
        assert decision.final_state is not None
        step.ended_at = tx.now
        step.error = error
        move_step(tx, step, decision.final_state, decision.reason)
        return
    if step.state == StepState.RUNNING:
        move_step(tx, step, StepState.PENDING, decision.reason)
    else:
        record_event(
            tx,
            kind=EventKind.STEP_RETRYING,
            flow_run_id=step.flow_run_id,
            step=step,
            message=decision.reason,
        )
    not_before = tx.now + dt.timedelta(seconds=decision.retry_delay_s)
    queue_attempt(tx, step, attempt.number + 1, not_before)
