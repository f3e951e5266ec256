"""The cheap grouped reads telemetry needs (session first; plain values out, no rows).

``snapshot`` runs at every scrape: three GROUP BY counts and the queued attempts' targets.
``run_facts`` runs for the runs a commit touched: their state and the times of their attempts
and steps, from which histograms are observed and traces exported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.orchestration.scopes import reachable_environments
from control_plane.store.models import AttemptRow, EventRow, FlowRunRow, StepRunRow
from meridian.core.selectors import SelectorError, parse_selector

MAX_QUEUED_INSPECTED = 5000
MAX_REASON_CHARS = 64
WAITING_KIND = "attempt.waiting"
_ID_CHUNK = 500
NowT = dt.datetime | None
QueuedRow = tuple[str, str, dt.datetime, Any]  # run id, provider, not_before, spec


@dataclass(frozen=True)
class Snapshot:
    runs_by_state: dict[str, int]
    steps_by_state: dict[str, int]
    queued_by_environment: dict[str, int]
    # (environment label, reason) -> queued attempts: the reason of the latest
    # ``attempt.waiting`` event of the attempt's run, target and provider; ``retry_delay`` while
    # a retry's backoff runs; ``not_explained_yet`` before the scheduler's first word on it.
    waiting: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptFacts:
    id: str
    step_key: str
    number: int
    state: str
    environment: str
    agent_id: str
    provider: str
    queued_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    error_type: str


@dataclass(frozen=True)
class StepFacts:
    id: str
    key: str
    state: str
    created_at: dt.datetime
    ended_at: dt.datetime | None


@dataclass(frozen=True)
class RunFacts:
    id: str
    flow_name: str
    state: str
    created_at: dt.datetime
    ended_at: dt.datetime | None
    attempts: list[AttemptFacts] = field(default_factory=list)
    steps: list[StepFacts] = field(default_factory=list)


def _queue_label(target: str) -> str:
    """Where a queued step may run: its environment(s) when its target bounds them."""
    try:
        reachable = reachable_environments(parse_selector(target))
    except SelectorError:
        return "any"
    return ",".join(sorted(reachable)) if reachable else "any"


def snapshot(session: Session, now: dt.datetime | None = None) -> Snapshot:
    runs = session.execute(select(FlowRunRow.state, func.count()).group_by(FlowRunRow.state))
    steps = session.execute(select(StepRunRow.state, func.count()).group_by(StepRunRow.state))
    queued: dict[str, int] = {}
    rows: list[QueuedRow] = [
        (run_id, provider, not_before, spec)
        for run_id, provider, not_before, spec in session.execute(
            select(
                AttemptRow.flow_run_id, AttemptRow.provider, AttemptRow.not_before, StepRunRow.spec
            )
            .select_from(StepRunRow)
            .join(AttemptRow, AttemptRow.step_run_id == StepRunRow.id)
            .where(AttemptRow.state == "QUEUED")
            .limit(MAX_QUEUED_INSPECTED)
        )
    ]
    for _, _, _, spec in rows:
        label = _queue_label(spec.target if spec is not None else "")
        queued[label] = queued.get(label, 0) + 1
    return Snapshot(
        {str(state): int(n) for state, n in runs},
        {str(state): int(n) for state, n in steps},
        queued,
        _waiting(session, rows, now),
    )


def _waiting(
    session: Session, queued: Sequence[QueuedRow], now: NowT
) -> dict[tuple[str, str], int]:
    """Why the inspected queued attempts wait. The ``attempt.waiting`` events are read only
    for the runs that have queued attempts (at most ``MAX_QUEUED_INSPECTED``, in chunks, on
    the events' ``(flow_run_id, id)`` index); the scheduler writes a handful per run."""
    latest: dict[tuple[str, str, str], tuple[int, str]] = {}
    run_ids = sorted({run_id for run_id, _, _, _ in queued})
    for start in range(0, len(run_ids), _ID_CHUNK):
        events = session.execute(
            select(EventRow.id, EventRow.flow_run_id, EventRow.details).where(
                EventRow.flow_run_id.in_(run_ids[start : start + _ID_CHUNK]),
                EventRow.kind == WAITING_KIND,
            )
        )
        for event_id, run_id, details in events:
            d = details or {}
            key = (run_id or "", str(d.get("target", "")), str(d.get("provider", "")))
            if key not in latest or latest[key][0] < event_id:
                latest[key] = (event_id, str(d.get("reason", "")) or "unknown")
    out: dict[tuple[str, str], int] = {}
    for run_id, provider, not_before, spec in queued:
        target = spec.target if spec is not None else ""
        if now is not None and _aware(not_before) > _aware(now):
            reason = "retry_delay"
        else:
            found = latest.get((run_id, target, provider))
            reason = found[1][:MAX_REASON_CHARS] if found else "not_explained_yet"
        label = (_queue_label(target), reason)
        out[label] = out.get(label, 0) + 1
    return out


def _aware(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def run_facts(session: Session, run_ids: Sequence[str]) -> list[RunFacts]:
    runs = session.scalars(select(FlowRunRow).where(FlowRunRow.id.in_(list(run_ids)))).all()
    by_id = {
        r.id: RunFacts(r.id, r.flow_name, str(r.state), r.created_at, r.ended_at) for r in runs
    }
    keys: dict[str, str] = {}
    for step in session.scalars(select(StepRunRow).where(StepRunRow.flow_run_id.in_(by_id))):
        keys[step.id] = step.key
        by_id[step.flow_run_id].steps.append(
            StepFacts(step.id, step.key, str(step.state), step.created_at, step.ended_at)
        )
    attempts = session.scalars(
        select(AttemptRow).where(AttemptRow.flow_run_id.in_(by_id)).order_by(AttemptRow.number)
    )
    for a in attempts:
        by_id[a.flow_run_id].attempts.append(
            AttemptFacts(
                a.id,
                keys.get(a.step_run_id, ""),
                a.number,
                str(a.state),
                a.environment or "",
                a.agent_id or "",
                a.provider,
                a.queued_at,
                a.started_at,
                a.ended_at,
                a.error.type if a.error is not None else "",
            )
        )
    return list(by_id.values())
