"""One scheduling pass inside one transaction: assign due attempts, expire unschedulable ones,
and say when the next stored timer (retry delay, schedule deadline) falls due."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.orchestration.engine import assign_attempt, fail_unschedulable
from control_plane.orchestration.values import Effects
from control_plane.scheduler.matching import AgentSlot, choose_agent, explain_no_match
from control_plane.store.models import AgentRow, AttemptRow, FlowRunRow, StepRunRow
from meridian.core.selectors import Selector, parse_selector
from meridian.core.states import AttemptState


@functools.lru_cache(maxsize=4096)
def cached_selector(text: str) -> Selector:
    return parse_selector(text)


def scheduling_pass(
    session: Session,
    slots: Sequence[AgentSlot],
    now: dt.datetime,
    *,
    limit: int = 1000,
    tiebreak: int = 0,
) -> tuple[Effects, dt.datetime | None]:
    effects = Effects()
    free = list(slots)
    due = session.scalars(
        select(AttemptRow)
        .where(AttemptRow.state == AttemptState.QUEUED, AttemptRow.not_before <= now)
        .order_by(AttemptRow.queued_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if due and any(s.in_use < s.capacity and not s.draining for s in free):
        _assign(session, due, free, now, effects, tiebreak)
    _expire(session, free, now, effects)
    return effects, _next_timer(session, now)


def _assign(
    session: Session,
    due: Sequence[AttemptRow],
    free: list[AgentSlot],
    now: dt.datetime,
    effects: Effects,
    tiebreak: int,
) -> None:
    steps = _by_id(session, StepRunRow, {a.step_run_id for a in due})
    runs = _by_id(session, FlowRunRow, {a.flow_run_id for a in due})
    for i, attempt in enumerate(due):
        step = steps[attempt.step_run_id]
        slot = choose_agent(
            cached_selector(str(step.spec.get("target", ""))),
            attempt.provider,
            free,
            tiebreak=tiebreak + i,
        )
        if slot is None:
            continue
        free[free.index(slot)] = dataclasses.replace(slot, in_use=slot.in_use + 1)
        agent = session.get(AgentRow, slot.agent_id)
        assert agent is not None
        assign_attempt(session, attempt, step, runs[attempt.flow_run_id], agent, now, effects)


def _expire(
    session: Session, slots: Sequence[AgentSlot], now: dt.datetime, effects: Effects
) -> None:
    expired = session.scalars(
        select(AttemptRow).where(
            AttemptRow.state == AttemptState.QUEUED, AttemptRow.schedule_deadline <= now
        )
    ).all()
    if not expired:
        return
    known: dict[str, dict[str, str]] = {}
    for agent in session.scalars(select(AgentRow)):
        known.setdefault(agent.environment, dict(agent.labels))
    for attempt in expired:
        step = session.get(StepRunRow, attempt.step_run_id)
        assert step is not None
        target = str(step.spec.get("target", ""))
        explanation = explain_no_match(cached_selector(target), attempt.provider, slots, known)
        waited = float(step.spec.get("schedule_timeout_s") or 0)
        message = f"{explanation} (waited {waited:g}s; raise schedule_timeout to wait longer)"
        fail_unschedulable(session, attempt, step, message, now, effects)


def _next_timer(session: Session, now: dt.datetime) -> dt.datetime | None:
    queued = AttemptRow.state == AttemptState.QUEUED
    next_start = session.scalar(
        select(func.min(AttemptRow.not_before)).where(queued, AttemptRow.not_before > now)
    )
    next_deadline = session.scalar(select(func.min(AttemptRow.schedule_deadline)).where(queued))
    candidates = [t for t in (next_start, next_deadline) if t is not None]
    if not candidates:
        return None
    # func.min bypasses the column type on some backends: normalise to aware UTC.
    return min(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in candidates)


def _by_id(session: Session, model: Any, ids: set[str]) -> dict[str, Any]:
    rows = session.scalars(select(model).where(model.id.in_(list(ids))))
    return {row.id: row for row in rows}
