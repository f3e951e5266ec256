"""Deployments: named, versioned definitions of how a flow runs unattended.

* **Create** (``meridian deploy``): every deploy of a name is a new version, immutable and
  kept; the deployment points at its newest. The spec is validated
  (``orchestration/deployment_specs.py``), its bundle must be uploaded, and it is stored as
  our own JSON object (``DeploymentSpec.to_json``, documented there), never as protobuf JSON.
* **Schedules across versions** (decision 0019): a schedule deployed again — the same
  ``schedule_id``, or without an id the same definition — keeps its id and its cursor
  (``evaluated_through``), so a slot already fired is not fired again and no catch-up burst
  follows a redeploy. New schedules start evaluating at the deploy time. Schedules of an
  older version that the new one does not list become inactive (their rows stay, so their
  fired slots keep their keys).
* **Outcome triggers** must name deployments that exist when the version is created (a typo
  would otherwise never fire, silently), and not close a cycle through the current versions
  (the deployment itself, or ping → pong → ping).
* **Pause/resume** the whole deployment or one schedule. Resuming sets the cursor of the
  schedules it re-activates to now: a pause never turns into a burst of catch-up runs.
* **Delete** is soft: ``deleted_at`` is set, schedules become inactive, triggers are
  refused and its webhooks are revoked (audited; a redeploy of the name does not revive
  them); versions, runs and fired slots stay readable in the audit trail. Deploying the same
  name again restores it as the same deployment with the next version number, so its history
  stays in one place.

Reads are in ``deployment_views.py``; triggers in ``deployment_triggers.py`` (re-exported).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration import schedules
from control_plane.orchestration.deployment_specs import (
    DeploymentSpec,
    ScheduleSpec,
    spec_from_json,
    trigger_cycle,
    validate_name,
    validate_spec,
)
from control_plane.store.ids import new_id
from control_plane.store.models import (
    BundleRow,
    DeploymentRow,
    DeploymentVersionRow,
    ScheduleRow,
)
from control_plane.store.tx import Tx
from control_plane.usecases import outcome_triggers, webhooks
from control_plane.usecases.deployment_triggers import (
    TriggerOutcome,
    TriggerSource,
    trigger_deployment,
)
from meridian.core.errors import NotFound, ValidationError

__all__ = [
    "TriggerOutcome",
    "TriggerSource",
    "create_deployment",
    "delete_deployment",
    "find_deployment",
    "next_fire_at",
    "set_paused",
    "trigger_deployment",
]

MAX_DEPLOYMENTS = 10_000


def create_deployment(tx: Tx, spec: DeploymentSpec) -> tuple[DeploymentRow, DeploymentSpec]:
    """Store ``spec`` as the next version of its deployment; return the row and the stored
    spec (schedule ids filled in)."""
    spec = validate_spec(spec)
    if tx.session.get(BundleRow, spec.bundle_sha256) is None:
        raise NotFound(f"code bundle {spec.bundle_sha256[:12]} has not been uploaded")
    _check_upstreams(tx, spec)
    deployment = tx.session.scalars(
        select(DeploymentRow).where(DeploymentRow.name == spec.name).with_for_update()
    ).first()
    if deployment is None:
        deployment = _new_deployment(tx, spec.name)
    else:
        deployment.current_version += 1
        deployment.updated_at = tx.now
        deployment.deleted_at = None  # deploying a deleted name restores it (module docs)
    spec = _sync_schedules(tx, deployment, spec)
    tx.session.add(
        DeploymentVersionRow(
            deployment_id=deployment.id,
            version=deployment.current_version,
            spec=spec.to_json(),
            bundle_sha256=spec.bundle_sha256,
            created_at=tx.now,
            created_by=tx.actor[:128],
        )
    )
    tx.session.flush()
    audit.append(
        tx.session,
        actor=tx.actor,
        action="deployment.created",
        subject=deployment.id,
        details={
            "deployment": spec.name,
            "version": deployment.current_version,
            "flow": spec.flow_name,
            "entrypoint": spec.entrypoint,
            "bundle_sha256": spec.bundle_sha256,
            "runner_target": spec.runner_target,
            "schedules": [s.schedule_id for s in spec.schedules],
            "triggers": [t.upstream_deployment for t in spec.triggers],
        },
        now=tx.now,
    )
    _announce_timers(tx, deployment.id)
    return deployment, spec


def _new_deployment(tx: Tx, name: str) -> DeploymentRow:
    count = len(tx.session.scalars(select(DeploymentRow.id).limit(MAX_DEPLOYMENTS)).all())
    if count >= MAX_DEPLOYMENTS:
        raise ValidationError(f"at most {MAX_DEPLOYMENTS} deployments")
    row = DeploymentRow(
        id=new_id(),
        name=name,
        current_version=1,
        paused=False,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(row)
    tx.session.flush()
    return row


def _check_upstreams(tx: Tx, spec: DeploymentSpec) -> None:
    for trigger in spec.triggers:
        if trigger.upstream_deployment == spec.name:
            raise ValidationError(
                f"deployment {spec.name} cannot be triggered by its own runs' outcome"
            )
        find_deployment(tx, trigger.upstream_deployment, what="upstream deployment")
    if spec.triggers:
        _check_cycle(tx, spec)


def _check_cycle(tx: Tx, spec: DeploymentSpec) -> None:
    """Refuse a version whose triggers would close a cycle through the current versions: its
    runs would trigger one another for ever."""
    upstreams = {
        name: [t.upstream_deployment for t in triggers]
        for name, triggers in outcome_triggers.live_triggers(tx).items()
    }
    upstreams[spec.name] = [t.upstream_deployment for t in spec.triggers]
    cycle = trigger_cycle(spec.name, upstreams)
    if cycle is not None:
        raise ValidationError(
            f"outcome triggers would form a cycle: {' → '.join(cycle)} "
            "(each run would trigger the next for ever)"
        )


def find_deployment(tx: Tx, name: str, *, what: str = "deployment") -> DeploymentRow:
    """The live (not deleted) deployment named ``name``, locked for the change."""
    validate_name(name, what)
    row = tx.session.scalars(
        select(DeploymentRow).where(DeploymentRow.name == name).with_for_update()
    ).first()
    if row is None or row.deleted_at is not None:
        raise NotFound(f"{what} {name!r} does not exist")
    return row


# ---- schedules ------------------------------------------------------------------------------


def _sync_schedules(tx: Tx, deployment: DeploymentRow, spec: DeploymentSpec) -> DeploymentSpec:
    existing = list(
        tx.session.scalars(
            select(ScheduleRow)
            .where(ScheduleRow.deployment_id == deployment.id)
            .order_by(ScheduleRow.id)
            .with_for_update()
        )
    )
    by_id = {row.id: row for row in existing}
    used: set[str] = set()
    kept: list[ScheduleSpec] = []
    for wanted in spec.schedules:
        row = by_id.get(wanted.schedule_id) if wanted.schedule_id else None
        if row is None and not wanted.schedule_id:
            row = next(
                (r for r in existing if r.id not in used and r.definition == wanted.definition),
                None,
            )
        if row is None:
            row = _new_schedule_row(tx, deployment, wanted.schedule_id or _schedule_id(by_id))
            by_id[row.id] = row
        used.add(row.id)
        _apply(tx, deployment, row, wanted)
        kept.append(ScheduleSpec(**{**wanted.__dict__, "schedule_id": row.id}))
    for row in existing:
        if row.id not in used:
            row.active = False
            row.next_fire_at = None
    return DeploymentSpec(**{**spec.__dict__, "schedules": tuple(kept)})


def _schedule_id(taken: dict[str, ScheduleRow]) -> str:
    while True:
        candidate = f"sch_{secrets.token_hex(4)}"
        if candidate not in taken:
            return candidate


def _new_schedule_row(tx: Tx, deployment: DeploymentRow, schedule_id: str) -> ScheduleRow:
    other = tx.session.get(ScheduleRow, schedule_id)
    if other is not None:
        raise ValidationError(f"schedule id {schedule_id} is used by another deployment")
    row = ScheduleRow(
        id=schedule_id,
        deployment_id=deployment.id,
        definition={},
        parameters={},
        catch_up={},
        evaluated_through=tx.now,
    )
    tx.session.add(row)
    return row


def _apply(tx: Tx, deployment: DeploymentRow, row: ScheduleRow, wanted: ScheduleSpec) -> None:
    was_evaluating = row.active and not row.paused and bool(row.definition)
    row.definition = wanted.definition
    row.parameters = wanted.parameters
    row.catch_up = {
        "mode": wanted.catch_up,
        "window_s": wanted.catch_up_window_s,
        "max_runs": wanted.max_catch_up_runs,
    }
    row.jitter_s = wanted.jitter_s
    row.paused = wanted.paused
    row.active = not wanted.paused and not deployment.paused
    if row.active and not was_evaluating:
        # Re-activated (or new): evaluate from now on, no catch-up of the inactive time.
        row.evaluated_through = tx.now
    row.next_fire_at = next_fire_at(row) if row.active else None


def next_fire_at(row: ScheduleRow) -> dt.datetime | None:
    """The schedule's next nominal slot after its cursor (None: it has no more)."""
    schedule = ScheduleSpec(row.id, row.definition, {}).schedule()
    found = schedules.next_fire_times(schedule, _aware(row.evaluated_through), 1)
    return found[0] if found else None


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back naive; they are stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _announce_timers(tx: Tx, deployment_id: str) -> None:
    """The schedule evaluator's stored timer: the dispatcher wakes at the next slot."""
    rows = tx.session.scalars(
        select(ScheduleRow).where(
            ScheduleRow.deployment_id == deployment_id, ScheduleRow.active.is_(True)
        )
    )
    tx.effects.timers.extend(_aware(r.next_fire_at) for r in rows if r.next_fire_at is not None)


# ---- pause, resume, delete --------------------------------------------------------------


def set_paused(tx: Tx, name: str, paused: bool, schedule_id: str = "") -> DeploymentRow:
    """Pause or resume the deployment (all its schedules and automatic triggers) or one of
    its schedules. Resuming evaluates from now: slots during the pause never fire."""
    deployment = find_deployment(tx, name)
    rows = _current_schedules(tx, deployment)
    if schedule_id:
        rows = [r for r in rows if r.id == schedule_id]
        if not rows:
            raise NotFound(f"deployment {name} has no schedule {schedule_id!r}")
        for row in rows:
            row.paused = paused
    else:
        deployment.paused = paused
    deployment.updated_at = tx.now
    for row in rows:
        _reactivate(tx, deployment, row)
    audit.append(
        tx.session,
        actor=tx.actor,
        action="deployment.paused" if paused else "deployment.resumed",
        subject=deployment.id,
        details={"deployment": name, **({"schedule_id": schedule_id} if schedule_id else {})},
        now=tx.now,
    )
    _announce_timers(tx, deployment.id)
    return deployment


def _current_schedules(tx: Tx, deployment: DeploymentRow) -> list[ScheduleRow]:
    version = tx.session.get(DeploymentVersionRow, (deployment.id, deployment.current_version))
    assert version is not None
    ids = [s.schedule_id for s in spec_from_json(version.spec).schedules]
    if not ids:
        return []
    return list(
        tx.session.scalars(select(ScheduleRow).where(ScheduleRow.id.in_(ids)).with_for_update())
    )


def _reactivate(tx: Tx, deployment: DeploymentRow, row: ScheduleRow) -> None:
    active = not row.paused and not deployment.paused and deployment.deleted_at is None
    if active and not row.active:
        row.evaluated_through = tx.now
    row.active = active
    row.next_fire_at = next_fire_at(row) if active else None


def delete_deployment(tx: Tx, name: str) -> DeploymentRow:
    """Soft delete (module docstring): runs already created go on."""
    deployment = find_deployment(tx, name)
    deployment.deleted_at = tx.now
    deployment.updated_at = tx.now
    for row in _all_schedules(tx, deployment.id):
        row.active = False
        row.next_fire_at = None
    revoked = webhooks.revoke_deployment_webhooks(tx, deployment, "deployment deleted")
    audit.append(
        tx.session,
        actor=tx.actor,
        action="deployment.deleted",
        subject=deployment.id,
        details={
            "deployment": name,
            "version": deployment.current_version,
            "webhooks_revoked": revoked,
        },
        now=tx.now,
    )
    return deployment


def _all_schedules(tx: Tx, deployment_id: str) -> Sequence[ScheduleRow]:
    return tx.session.scalars(
        select(ScheduleRow).where(ScheduleRow.deployment_id == deployment_id).with_for_update()
    ).all()
