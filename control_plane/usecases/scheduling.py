"""One scheduling pass inside one transaction: assign due attempts (as ``orchestration.planning``
plans), say why the others wait (``orchestration.waiting``, an ``attempt.waiting`` event once
per run, target, provider and reason), expire unschedulable ones, and say when the next stored
timer (retry delay, schedule deadline) falls due."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.planning import ReadyAttempt, has_free_slot, plan
from control_plane.orchestration.waiting import KnownAgent, classify_busy, classify_wait
from control_plane.store.models import AgentRow, AttemptRow, EventRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx, record_event
from control_plane.usecases.attempts import assign_attempt, fail_unschedulable
from meridian.core.kinds import EventKind
from meridian.core.selectors import Selector, parse_selector
from meridian.core.states import AttemptState

# Waiting reasons explained per pass at most: a burst of thousands of queued attempts is
# explained over a few passes (the next one is scheduled at once) instead of in one commit.
MAX_WAITING_EVENTS_PER_PASS = 200
_ID_CHUNK = 500
_AGAIN = dt.timedelta(seconds=0.5)


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
    more = _explain_waiting(tx, [a for a in due if a.state == AttemptState.QUEUED], slots)
    _expire(tx, slots)
    following = _next_timer(tx)
    if more:
        soon = tx.now + _AGAIN
        following = soon if following is None else min(following, soon)
    return following


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


def _explain_waiting(tx: Tx, waiting: Sequence[AttemptRow], slots: Sequence[AgentSlot]) -> bool:
    """Record why unassigned attempts wait: one ``attempt.waiting`` event per run, target,
    provider and distinct reason (on the oldest such attempt), so a fan-out of thousands
    waiting for free slots writes one event, not thousands. Returns whether some groups were
    left for the next pass."""
    if not waiting:
        return False
    steps = _by_id(tx, StepRunRow, {a.step_run_id for a in waiting})
    groups: dict[tuple[str, str, str], list[AttemptRow]] = {}
    for attempt in waiting:
        target = steps[attempt.step_run_id].spec.target
        groups.setdefault((attempt.flow_run_id, target, attempt.provider), []).append(attempt)
    recorded = _recorded_reasons(tx, {run_id for run_id, _, _ in groups})
    known: list[KnownAgent] | None = None
    written = 0
    for (run_id, target, provider), attempts in groups.items():
        selector = cached_selector(target)
        why = classify_busy(selector, provider, slots)
        if why is None:
            known = _known_agents(tx) if known is None else known
            why = classify_wait(selector, provider, slots, known)
        if (run_id, target, provider, why.reason.value) in recorded:
            continue
        if written >= MAX_WAITING_EVENTS_PER_PASS:
            return True
        first = attempts[0]
        count = f" ({len(attempts)} queued attempts of this target)" if len(attempts) > 1 else ""
        record_event(
            tx,
            kind=EventKind.ATTEMPT_WAITING,
            flow_run_id=run_id,
            step=steps[first.step_run_id],
            attempt=first,
            message=f"{why.message}{count}",
            details={
                "reason": why.reason.value,
                "target": target,
                "provider": provider,
                "attempts": len(attempts),
            },
        )
        tx.effects.touched_runs.add(run_id)
        written += 1
    return False


def _recorded_reasons(tx: Tx, run_ids: set[str]) -> set[tuple[str, str, str, str]]:
    """(run, target, provider, reason) of the waiting events already written: a handful per
    run, so reading them all is cheap."""
    found: set[tuple[str, str, str, str]] = set()
    ids = sorted(run_ids)
    for start in range(0, len(ids), _ID_CHUNK):
        rows = tx.session.execute(
            select(EventRow.flow_run_id, EventRow.details).where(
                EventRow.flow_run_id.in_(ids[start : start + _ID_CHUNK]),
                EventRow.kind == EventKind.ATTEMPT_WAITING.value,
            )
        )
        for run_id, details in rows:
            d = details or {}
            key = (run_id or "", str(d.get("target", "")), str(d.get("provider", "")))
            found.add((*key, str(d.get("reason", ""))))
    return found


def _known_agents(tx: Tx) -> list[KnownAgent]:
    return [
        KnownAgent(
            agent_id=row.id,
            name=row.name,
            environment=row.environment,
            labels={str(k): str(v) for k, v in (row.labels or {}).items()},
            providers=frozenset(str(p) for p in row.providers or ()),
            status=row.status,
        )
        for row in tx.session.scalars(select(AgentRow).where(AgentRow.revoked_at.is_(None)))
    ]


def _expire(tx: Tx, slots: Sequence[AgentSlot]) -> None:
    expired = tx.session.scalars(
        select(AttemptRow).where(
            AttemptRow.state == AttemptState.QUEUED, AttemptRow.schedule_deadline <= tx.now
        )
    ).all()
    if not expired:
        return
    known = _known_agents(tx)
    for attempt in expired:
        step = tx.session.get(StepRunRow, attempt.step_run_id)
        assert step is not None
        selector = cached_selector(step.spec.target)
        explanation = classify_wait(selector, attempt.provider, slots, known).message
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
