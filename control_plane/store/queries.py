"""Read-side repository functions (session first; no state changes here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from control_plane.orchestration.scopes import Scope, covers
from control_plane.store.models import (
    AgentRow,
    ApprovalRow,
    AttemptRow,
    EventRow,
    FlowRunRow,
    LogRow,
    StepRunRow,
    TransferRow,
)
from meridian.core.errors import NotFound, ValidationError
from meridian.core.states import RunState, StepState

FULL_ID_LENGTH = 36


@dataclass(frozen=True)
class RunView:
    run: FlowRunRow
    steps: list[StepRunRow]
    attempts: dict[str, list[AttemptRow]]  # step_run_id -> attempts by number
    agent_names: dict[str, str]
    events: list[EventRow]
    approvals: list[ApprovalRow] = field(default_factory=list)
    # Stored results that crossed environments for this run's steps (decision 0020).
    transfers: list[TransferRow] = field(default_factory=list)
    # Subflows started from this run's body (child runs), oldest first.
    children: list[FlowRunRow] = field(default_factory=list)


@dataclass(frozen=True)
class EventView:
    """One event for a watcher, with the step run it ended or the approval it changed."""

    event: EventRow
    step: StepRunRow | None = None
    approval: ApprovalRow | None = None


def covered_by(session: Session, caller: Sequence[str]) -> ColumnElement[bool]:
    """SQL for ``scopes.covers(caller, run.scope)``: the run's scope is not empty and has no
    environment outside ``caller`` (which must not be empty)."""
    if session.get_bind().dialect.name == "postgresql":
        elements = func.json_array_elements_text(FlowRunRow.scope).table_valued("value")
    else:
        elements = func.json_each(FlowRunRow.scope).table_valued("value")
    outside = select(elements.c.value).where(elements.c.value.not_in(list(caller))).exists()
    return and_(func.json_array_length(FlowRunRow.scope) > 0, ~outside)


def run_scope(session: Session, run_id: str, caller: Sequence[str] = ()) -> Scope:
    """The scope of run ``run_id`` (a full id); NOT_FOUND, exactly as for a missing run, when
    a caller scoped to ``caller`` may not see it."""
    run = session.get(FlowRunRow, run_id)
    if run is None or not covers(caller, run.scope):
        raise NotFound(f"flow run {run_id} does not exist")
    return tuple(run.scope)


def resolve_run_id(session: Session, run_id: str, caller: Sequence[str] = ()) -> str:
    """Accept a full id or a unique prefix (at least 4 characters) of a run ``caller`` (an
    environment scope; empty = all) may see; other runs are as good as absent."""
    if len(run_id) >= FULL_ID_LENGTH:
        run_scope(session, run_id, caller)
        return run_id
    if len(run_id) < 4:
        raise ValidationError("give at least 4 characters of the run id")
    query = select(FlowRunRow.id).where(FlowRunRow.id.startswith(run_id, autoescape=True))
    if caller:
        query = query.where(covered_by(session, caller))
    matches = session.scalars(query.limit(2)).all()
    if not matches:
        raise NotFound(f"no flow run id starts with {run_id!r}")
    if len(matches) > 1:
        raise ValidationError(f"run id prefix {run_id!r} is ambiguous; give more characters")
    return matches[0]


MAX_CHILDREN = 1000  # children listed in a run's detail


def run_view(session: Session, run_id: str, *, max_events: int = 10_000) -> RunView:
    run_id = resolve_run_id(session, run_id)
    run = session.get(FlowRunRow, run_id)
    assert run is not None
    steps = list(
        session.scalars(
            select(StepRunRow)
            .where(StepRunRow.flow_run_id == run_id)
            .order_by(StepRunRow.created_at, StepRunRow.key)
        )
    )
    attempts: dict[str, list[AttemptRow]] = {}
    for attempt in session.scalars(
        select(AttemptRow).where(AttemptRow.flow_run_id == run_id).order_by(AttemptRow.number)
    ):
        attempts.setdefault(attempt.step_run_id, []).append(attempt)
    agent_ids = {a.agent_id for group in attempts.values() for a in group if a.agent_id}
    names = dict(
        session.execute(select(AgentRow.id, AgentRow.name).where(AgentRow.id.in_(agent_ids))).all()
    )
    events = list(
        session.scalars(
            select(EventRow)
            .where(EventRow.flow_run_id == run_id)
            .order_by(EventRow.id)
            .limit(max_events)
        )
    )
    approvals = list(
        session.scalars(
            select(ApprovalRow)
            .where(ApprovalRow.flow_run_id == run_id)
            .order_by(ApprovalRow.requested_at, ApprovalRow.key)
        )
    )
    transfers = list(
        session.scalars(
            select(TransferRow)
            .where(TransferRow.flow_run_id == run_id)
            .order_by(TransferRow.started_at, TransferRow.id)
            .limit(max_events)
        )
    )
    names_by_id = {str(k): str(v) for k, v in names.items()}
    children = list(  # subflows, in creation order
        session.scalars(
            select(FlowRunRow)
            .where(FlowRunRow.parent_run_id == run_id)
            .order_by(FlowRunRow.created_at, FlowRunRow.id)
            .limit(MAX_CHILDREN)
        )
    )
    return RunView(run, steps, attempts, names_by_id, events, approvals, transfers, children)


def events_after(
    session: Session, run_id: str, after_id: int, limit: int = 500
) -> tuple[str, list[EventView]]:
    """Events of a run after ``after_id``, each with its step run when it ended one, or its
    approval (as it is now) for ``approval.*`` events."""
    run = session.get(FlowRunRow, run_id)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    rows = session.scalars(
        select(EventRow)
        .where(EventRow.flow_run_id == run_id, EventRow.id > after_id)
        .order_by(EventRow.id)
        .limit(limit)
    ).all()
    ending = {"step.completed", "step.failed", "step.cancelled", "step.cached"}
    step_ids = {e.step_run_id for e in rows if e.kind in ending and e.step_run_id}
    steps = {
        s.id: s for s in session.scalars(select(StepRunRow).where(StepRunRow.id.in_(step_ids)))
    }
    approval_keys = {e.step_key for e in rows if e.kind.startswith("approval.") and e.step_key}
    approvals = {
        a.key: a
        for a in session.scalars(
            select(ApprovalRow).where(
                ApprovalRow.flow_run_id == run_id, ApprovalRow.key.in_(approval_keys)
            )
        )
    }
    out = [
        EventView(
            e,
            steps.get(e.step_run_id or "") if e.kind in ending else None,
            approvals.get(e.step_key or "") if e.kind.startswith("approval.") else None,
        )
        for e in rows
    ]
    return run.state, out


def list_runs(
    session: Session,
    limit: int,
    state: RunState | None,
    flow_name: str,
    caller: Sequence[str] = (),
    *,
    environment: str = "",
    since: dt.datetime | None = None,
) -> list[tuple[FlowRunRow, int, int]]:
    """The newest ``limit`` runs matching the filters. ``environment``: runs with at least one
    attempt there (a correlated EXISTS on the attempts' ``flow_run_id`` index); ``since``: runs
    created at or after it (the ``created_at`` index)."""
    query = select(FlowRunRow).order_by(FlowRunRow.created_at.desc()).limit(limit)
    if caller:
        query = query.where(covered_by(session, caller))
    if environment:
        query = query.where(
            select(AttemptRow.id)
            .where(
                AttemptRow.flow_run_id == FlowRunRow.id,
                AttemptRow.environment == environment,
            )
            .exists()
        )
    if since is not None:
        query = query.where(FlowRunRow.created_at >= since)
    if state:
        query = query.where(FlowRunRow.state == state)
    if flow_name:
        query = query.where(FlowRunRow.flow_name == flow_name)
    runs = session.scalars(query).all()
    counts: dict[str, tuple[int, int]] = {}
    if runs:
        rows = session.execute(
            select(
                StepRunRow.flow_run_id,
                func.count(),
                func.sum(case((StepRunRow.state == StepState.FAILED, 1), else_=0)),
            )
            .where(StepRunRow.flow_run_id.in_([r.id for r in runs]))
            .group_by(StepRunRow.flow_run_id)
        ).all()
        counts = {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}
    return [(r, *counts.get(r.id, (0, 0))) for r in runs]


def logs_page(session: Session, run_id: str, step: str, after_id: int, limit: int) -> list[LogRow]:
    run_id = resolve_run_id(session, run_id)
    query = (
        select(LogRow)
        .where(LogRow.flow_run_id == run_id, LogRow.id > after_id)
        .order_by(LogRow.id)
        .limit(limit)
    )
    if step:
        named = select(StepRunRow.id).where(
            StepRunRow.flow_run_id == run_id, StepRunRow.name == step
        )
        query = query.where(or_(LogRow.step_key == step, LogRow.step_run_id.in_(named)))
    return list(session.scalars(query))


def all_agents(session: Session) -> list[tuple[AgentRow, int]]:
    agents = session.scalars(select(AgentRow).order_by(AgentRow.environment, AgentRow.name)).all()
    held = dict(
        session.execute(
            select(AttemptRow.agent_id, func.count())
            .where(AttemptRow.state.in_(["ASSIGNED", "RUNNING"]))
            .group_by(AttemptRow.agent_id)
        ).all()
    )
    return [(a, int(held.get(a.id, 0))) for a in agents]
