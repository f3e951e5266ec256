"""What ``deployments list|show|versions`` read: plain values, no ORM rows past this module
(except the recent runs, read by the API through its ``RunLike`` protocol)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from control_plane.orchestration import schedule_codec, schedules
from control_plane.orchestration.deployment_specs import (
    DeploymentSpec,
    spec_from_json,
    validate_name,
)
from control_plane.store.models import (
    DeploymentRow,
    DeploymentVersionRow,
    FlowRunRow,
    ScheduleRow,
    StepRunRow,
)
from meridian.core.errors import NotFound
from meridian.core.states import RunState, StepState

NEXT_FIRES = 5
RECENT_RUNS = 5
MAX_LISTED = 1000
_ACTIVE = (RunState.RUNNING, RunState.PAUSED, RunState.CANCELLING)


@dataclass(frozen=True)
class ScheduleState:
    schedule_id: str
    description: str
    paused: bool
    active: bool
    next_fires: tuple[dt.datetime, ...]


@dataclass(frozen=True)
class DeploymentView:
    deployment_id: str
    name: str
    version: int
    current_version: int
    paused: bool
    deleted: bool
    spec: DeploymentSpec
    created_at: dt.datetime
    created_by: str
    active_runs: int = 0
    queued_runs: int = 0
    schedules: dict[str, ScheduleState] = field(default_factory=dict)
    recent_runs: list[tuple[Any, int, int]] = field(default_factory=list)


def list_deployments(session: Session, now: dt.datetime) -> list[DeploymentView]:
    rows = session.scalars(
        select(DeploymentRow)
        .where(DeploymentRow.deleted_at.is_(None))
        .order_by(DeploymentRow.name)
        .limit(MAX_LISTED)
    ).all()
    return [_view(session, row, row.current_version, now, recent=0) for row in rows]


def get_deployment(session: Session, name: str, version: int, now: dt.datetime) -> DeploymentView:
    """The deployment (``version`` 0: its current version) with its schedules' next fire
    times and its recent runs."""
    row = _by_name(session, name)
    return _view(session, row, version or row.current_version, now, recent=RECENT_RUNS)


def list_versions(session: Session, name: str, now: dt.datetime) -> list[DeploymentView]:
    row = _by_name(session, name)
    versions = session.scalars(
        select(DeploymentVersionRow)
        .where(DeploymentVersionRow.deployment_id == row.id)
        .order_by(DeploymentVersionRow.version.desc())
        .limit(MAX_LISTED)
    ).all()
    return [_version_view(row, v) for v in versions]


def _by_name(session: Session, name: str) -> DeploymentRow:
    validate_name(name)
    row = session.scalars(select(DeploymentRow).where(DeploymentRow.name == name)).first()
    if row is None or row.deleted_at is not None:
        raise NotFound(f"deployment {name!r} does not exist")
    return row


def _version_view(row: DeploymentRow, version: DeploymentVersionRow) -> DeploymentView:
    return DeploymentView(
        deployment_id=row.id,
        name=row.name,
        version=version.version,
        current_version=row.current_version,
        paused=row.paused,
        deleted=row.deleted_at is not None,
        spec=spec_from_json(version.spec),
        created_at=version.created_at,
        created_by=version.created_by,
    )


def _view(
    session: Session, row: DeploymentRow, version: int, now: dt.datetime, *, recent: int
) -> DeploymentView:
    # A number above the newest is no version; not asked of the store (an INTEGER column on
    # PostgreSQL would fail on a value past 2**31 - 1).
    stored = (
        session.get(DeploymentVersionRow, (row.id, version))
        if 0 < version <= row.current_version
        else None
    )
    if stored is None:
        raise NotFound(f"deployment {row.name} has no version {version}")
    base = _version_view(row, stored)
    active, queued = _run_counts(session, row.id)
    return DeploymentView(
        **{
            **base.__dict__,
            "active_runs": active,
            "queued_runs": queued,
            "schedules": _schedules(session, base.spec, now),
            "recent_runs": _recent_runs(session, row.id, recent) if recent else [],
        }
    )


def _run_counts(session: Session, deployment_id: str) -> tuple[int, int]:
    counts = dict(
        session.execute(
            select(FlowRunRow.state, func.count())
            .where(FlowRunRow.deployment_id == deployment_id)
            .where(FlowRunRow.state.in_([*_ACTIVE, RunState.PENDING]))
            .group_by(FlowRunRow.state)
        ).all()
    )
    active = sum(int(counts.get(state, 0)) for state in _ACTIVE)
    return active, int(counts.get(RunState.PENDING, 0))


def _schedules(
    session: Session, spec: DeploymentSpec, now: dt.datetime
) -> dict[str, ScheduleState]:
    ids = [s.schedule_id for s in spec.schedules]
    rows = {r.id: r for r in session.scalars(select(ScheduleRow).where(ScheduleRow.id.in_(ids)))}
    states: dict[str, ScheduleState] = {}
    for wanted in spec.schedules:
        row = rows.get(wanted.schedule_id)
        schedule = wanted.schedule()
        active = bool(row and row.active)
        after = max(now, _aware(row.evaluated_through)) if row is not None else now
        fires = schedules.next_fire_times(schedule, after, NEXT_FIRES) if active else ()
        states[wanted.schedule_id] = ScheduleState(
            schedule_id=wanted.schedule_id,
            description=schedule_codec.describe_schedule(schedule),
            paused=bool(row.paused) if row is not None else wanted.paused,
            active=active,
            next_fires=fires,
        )
    return states


def _recent_runs(session: Session, deployment_id: str, limit: int) -> list[tuple[Any, int, int]]:
    runs: Sequence[FlowRunRow] = session.scalars(
        select(FlowRunRow)
        .where(FlowRunRow.deployment_id == deployment_id)
        .order_by(FlowRunRow.created_at.desc())
        .limit(limit)
    ).all()
    if not runs:
        return []
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


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
