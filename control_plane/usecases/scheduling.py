"""One scheduling pass inside one transaction: assign due attempts (as ``orchestration.planning``
plans), expire unschedulable ones, and say when the next stored timer (retry delay, schedule
deadline) falls due."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from control_plane.orchestration.matching import AgentSlot, explain_no_match
from control_plane.orchestration.planning import ReadyAttempt, has_free_slot, plan
from control_plane.store.models import AgentRow, AttemptRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx
from control_plane.usecases.attempts import assign_attempt, fail_unschedulable
from meridian.core.selectors import Selector, parse_selector
from meridian.core.states import AttemptState


@functools.lru_cache(maxsize=4096)
def cached_selector(text: str) -> Selector:
    return parse_selector(text)


def scheduling_pass(
    tx: Tx, slots: Sequence[AgentSlot], *, limit: int = 1000, tiebreak: int = 0
) -> dt.datetime | None:
    """Run one pass; returns when the next stored timer falls due (None: no timer)."""
    due = tx.session.scalars(
        select(AttemptRow)
        .where(AttemptRow.state == AttemptState.QUEUED, AttemptRow.not_before <= tx.now)
        .order_by(AttemptRow.queued_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if due and has_free_slot(slots):
        _assign(tx, due, slots, tiebreak)
    _expire(tx, slots)
    return _next_timer(tx)


def _assign(tx: Tx, due: Sequence[AttemptRow], slots: Sequence[AgentSlot], tiebreak: int) -> None:
    steps = _by_id(tx, StepRunRow, {a.step_run_id for a in due})
    runs = _by_id(tx, FlowRunRow, {a.flow_run_id for a in due})
    attempts = {a.id: a for a in due}
    ready = [
        ReadyAttempt(a.id, cached_selector(steps[a.step_run_id].spec.target), a.provider)
        for a in due
    ]
    for assignment in plan(ready, slots, tiebreak=tiebreak):
        attempt = attempts[assignment.attempt_id]
        agent = tx.session.get(AgentRow, assignment.agent_id)
        assert agent is not None
        step = steps[attempt.step_run_id]
        assign_attempt(tx, attempt, step, runs[attempt.flow_run_id], agent)


def _expire(tx: Tx, slots: Sequence[AgentSlot]) -> None:
    expired = tx.session.scalars(
        select(AttemptRow).where(
            AttemptRow.state == AttemptState.QUEUED, AttemptRow.schedule_deadline <= tx.now
        )
    ).all()
    if not expired:
        return
    known: dict[str, dict[str, str]] = {}
    for agent in tx.session.scalars(select(AgentRow)):
        known.setdefault(agent.environment, dict(agent.labels))
    for attempt in expired:
        step = tx.session.get(StepRunRow, attempt.step_run_id)
        assert step is not None
        selector = cached_selector(step.spec.target)
        explanation = explain_no_match(selector, attempt.provider, slots, known)
        waited = step.spec.schedule_timeout_s
        message = f"{explanation} (waited {waited:g}s; raise schedule_timeout to wait longer)"
        fail_unschedulable(tx, attempt, step, message)


def _next_timer(tx: Tx) -> dt.datetime | None:
    queued = AttemptRow.state == AttemptState.QUEUED
    next_start = tx.session.scalar(
        select(func.min(AttemptRow.not_before)).where(queued, AttemptRow.not_before > tx.now)
    )
    next_deadline = tx.session.scalar(select(func.min(AttemptRow.schedule_deadline)).where(queued))
    candidates = [t for t in (next_start, next_deadline) if t is not None]
    if not candidates:
        return None
    # func.min bypasses the column type on some backends: normalise to aware UTC.
    return min(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in candidates)


def _by_id(tx: Tx, model: Any, ids: set[str]) -> dict[str, Any]:
    rows = tx.session.scalars(select(model).where(model.id.in_(list(ids))))
    return {row.id: row for row in rows}
