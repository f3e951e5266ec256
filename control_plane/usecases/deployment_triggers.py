"""Triggering a deployment: one run of its current version, or a recorded reason for none.

Every way a deployment is fired — the API/CLI, a schedule slot, a webhook, another run's
outcome, a parent flow (subflow) — comes through :func:`trigger_deployment`, which

* validates the parameters (the version's defaults, then the trigger's own) against the
  version's stored parameter schema (``meridian/core/paramschema.py``): no user code runs;
* makes a repeat with the same idempotency key return the first run (``trigger_keys``; a
  subflow call without a key is keyed by its parent run and call key, so a parent replayed
  by resume finds its child instead of starting another);
* applies the deployment's concurrency overflow policy ``skip``: when ``concurrency`` runs are
  already unfinished, no run is created and the outcome is ``SKIPPED`` (``queue`` creates the
  run; the hosted-runner assignment holds it back until a place is free);
* refuses automatic triggers (schedule, outcome, webhook) of a paused deployment with a
  ``SKIPPED`` outcome that leaves the idempotency key unused (a webhook delivery retried
  after the resume starts its run; an overflow ``skip`` does use it: that call is dropped);
  people (API/CLI) and parent flows may still start runs of it;
* creates the run ``PENDING`` with ``wants_runner`` and the version's runner target and
  runner-lost policy copied onto it (editing the deployment later never changes it), and
* writes one audit record, ``deployment.triggered`` (or ``deployment.trigger_skipped``),
  naming who or what fired it.

It wakes nothing itself: the caller's transaction commits, then its effects apply.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from control_plane import audit
from control_plane.orchestration.deployment_specs import (
    DeploymentSpec,
    merged_parameters,
    spec_from_json,
)
from control_plane.store.ids import new_id
from control_plane.store.models import (
    DeploymentRow,
    DeploymentVersionRow,
    FlowRunRow,
    TriggerKeyRow,
)
from control_plane.store.tx import Tx, record_event
from control_plane.usecases.run_limits import with_limits
from meridian.core.errors import NotFound, ValidationError
from meridian.core.kinds import EventKind
from meridian.core.states import TERMINAL_RUN, RunState

TriggerKind = Literal["api", "schedule", "webhook", "outcome", "subflow"]
TRIGGER_KINDS = ("api", "schedule", "webhook", "outcome", "subflow")
AUTOMATIC = frozenset({"schedule", "webhook", "outcome"})
MAX_IDEMPOTENCY_KEY = 255
MAX_DETAIL_BYTES = 16 * 1024
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class TriggerSource:
    """Who or what fired a run: recorded as the run's ``trigger_detail`` and audited."""

    kind: TriggerKind
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TriggerOutcome:
    flow_run_id: str | None
    existing: bool
    state: str
    message: str


def trigger_deployment(
    tx: Tx,
    name: str,
    parameters: Mapping[str, Any],
    *,
    source: TriggerSource,
    idempotency_key: str | None = None,
    parent: tuple[str, str] | None = None,
    start_after: dt.datetime | None = None,
) -> TriggerOutcome:
    """A run of deployment ``name``'s current version (module docstring)."""
    _check_source(source)
    deployment = _live_deployment(tx, name)
    version = tx.session.get(DeploymentVersionRow, (deployment.id, deployment.current_version))
    assert version is not None  # written with the deployment
    spec = spec_from_json(version.spec)
    params = merged_parameters(spec.parameter_schema, spec.parameters, parameters)
    parent_run = _parent_run(tx, parent)
    key = _key(idempotency_key, parent, source)
    if key is not None:
        found = _existing(tx, deployment.id, key)
        if found is not None:
            return found
    if deployment.paused and source.kind in AUTOMATIC:
        why = f"deployment {name} is paused: its {source.kind} trigger started no run"
        # The key stays free: the same delivery after the resume starts its run.
        return _skip(tx, deployment, version.version, source, key, why, consume_key=False)
    if spec.concurrency and spec.concurrency_overflow == "skip":
        active = _unfinished_runs(tx, deployment.id)
        if active >= spec.concurrency:
            why = (
                f"deployment {name} already has {active} unfinished run(s) of at most "
                f"{spec.concurrency} (concurrency overflow: skip)"
            )
            return _skip(tx, deployment, version.version, source, key, why)
    run = _new_run(tx, deployment, version, spec, params, source, parent_run, parent, start_after)
    if key is not None and not _claim_key(tx, deployment.id, key, run.id):
        raise ValidationError(f"idempotency key {key!r} was used concurrently; retry the call")
    _audit(tx, "deployment.triggered", run.id, deployment, version.version, source, key, run)
    message = f"run {run.id} of {name} v{version.version} waits for a flow runner"
    return TriggerOutcome(run.id, False, run.state, message)


def _check_source(source: TriggerSource) -> None:
    if source.kind not in TRIGGER_KINDS:
        raise ValidationError(f"unknown trigger kind {source.kind!r}")
    if len(json.dumps(source.detail, default=str)) > MAX_DETAIL_BYTES:
        raise ValidationError(f"trigger detail must be at most {MAX_DETAIL_BYTES} bytes of JSON")


def _live_deployment(tx: Tx, name: str) -> DeploymentRow:
    row = tx.session.scalars(
        select(DeploymentRow).where(DeploymentRow.name == name).with_for_update()
    ).first()
    if row is None or row.deleted_at is not None:
        raise NotFound(f"deployment {name!r} does not exist")
    return row


def _parent_run(tx: Tx, parent: tuple[str, str] | None) -> FlowRunRow | None:
    if parent is None:
        return None
    run_id, call_key = parent
    if not call_key or len(call_key) > 512:
        raise ValidationError("a subflow's parent_key must be 1-512 characters")
    run = tx.session.get(FlowRunRow, run_id)
    if run is None:
        raise NotFound(f"parent run {run_id} does not exist")
    if run.state in TERMINAL_RUN:
        raise ValidationError(f"parent run {run_id} has ended ({run.state}): no new subflows")
    return run


# Sources whose keys the control plane makes itself (a schedule's slot key, "outcome:<run>").
_OWN_KEYS = frozenset({"schedule", "outcome"})


def _key(
    idempotency_key: str | None, parent: tuple[str, str] | None, source: TriggerSource
) -> str | None:
    if idempotency_key:
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
            raise ValidationError(
                f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        if source.kind in _OWN_KEYS:
            return idempotency_key
        # A caller's key lives in its own namespace (the API, or one webhook): it can never
        # take a schedule slot's or an outcome's key and so suppress that run.
        namespace = source.actor if source.kind == "webhook" else source.kind
        return f"{namespace}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
    if parent is not None:
        digest = hashlib.sha256(f"{parent[0]}/{parent[1]}".encode()).hexdigest()
        return f"subflow:{digest}"
    return None


def _existing(tx: Tx, deployment_id: str, key: str) -> TriggerOutcome | None:
    row = tx.session.get(TriggerKeyRow, (deployment_id, key))
    if row is None:
        return None
    if row.flow_run_id is None:
        return TriggerOutcome(None, True, SKIPPED, "the idempotency key was used before: no run")
    run = tx.session.get(FlowRunRow, row.flow_run_id)
    state = run.state if run is not None else "DELETED"
    return TriggerOutcome(
        row.flow_run_id, True, state, f"idempotency key {key!r} was used: run {row.flow_run_id}"
    )


def _claim_key(tx: Tx, deployment_id: str, key: str, run_id: str | None) -> bool:
    """Insert the key row in a savepoint: False when a concurrent trigger took it first."""
    try:
        with tx.session.begin_nested():
            tx.session.add(
                TriggerKeyRow(
                    deployment_id=deployment_id, key=key, flow_run_id=run_id, created_at=tx.now
                )
            )
    except IntegrityError:
        return False
    return True


def _unfinished_runs(tx: Tx, deployment_id: str) -> int:
    return int(
        tx.session.scalar(
            select(func.count())
            .select_from(FlowRunRow)
            .where(
                FlowRunRow.deployment_id == deployment_id,
                FlowRunRow.state.not_in([str(s) for s in TERMINAL_RUN]),
            )
        )
        or 0
    )


def _new_run(
    tx: Tx,
    deployment: DeploymentRow,
    version: DeploymentVersionRow,
    spec: DeploymentSpec,
    params: dict[str, Any],
    source: TriggerSource,
    parent_run: FlowRunRow | None,
    parent: tuple[str, str] | None,
    start_after: dt.datetime | None,
) -> FlowRunRow:
    detail = {
        "kind": source.kind,
        "actor": source.actor or tx.actor,
        "deployment": deployment.name,
        "version": version.version,
        **({"detail": source.detail} if source.detail else {}),
    }
    run = FlowRunRow(
        id=new_id(),
        flow_name=spec.flow_name,
        entrypoint=spec.entrypoint,
        trigger=source.kind,
        parameters_json=json.dumps(params, sort_keys=True),
        bundle_sha256=version.bundle_sha256,
        state=RunState.PENDING,
        created_at=tx.now,
        # A subflow stays inside its parent's environment scope.
        scope=list(parent_run.scope) if parent_run is not None else [],
        deployment_id=deployment.id,
        deployment_version=version.version,
        # The flow's named limits, taken before a runner is assigned (usecases.run_limits).
        trigger_detail=with_limits(detail, spec.flow_concurrency),
        parent_run_id=parent[0] if parent else None,
        parent_key=parent[1] if parent else None,
        wants_runner=True,
        runner_target=spec.runner_target or None,
        on_runner_lost=spec.on_runner_lost,
        max_runner_resumes=spec.max_runner_resumes,
        start_after=start_after,
    )
    tx.session.add(run)
    tx.session.flush()
    record_event(
        tx,
        kind=EventKind.RUN_PENDING,
        flow_run_id=run.id,
        to_state=RunState.PENDING,
        message=f"{source.kind} run of deployment {deployment.name} v{version.version} "
        f"({spec.entrypoint}); waits for a flow runner"
        + (f" matching {spec.runner_target}" if spec.runner_target else ""),
    )
    if start_after is not None:
        tx.effects.timers.append(start_after)
    else:
        tx.effects.runners_wanted = True  # a runner pass now, not at the next sweep
    return run


def _skip(
    tx: Tx,
    deployment: DeploymentRow,
    version: int,
    source: TriggerSource,
    key: str | None,
    why: str,
    *,
    consume_key: bool = True,
) -> TriggerOutcome:
    if key is not None and consume_key:
        _claim_key(tx, deployment.id, key, None)
    _audit(
        tx, "deployment.trigger_skipped", deployment.id, deployment, version, source, key, None, why
    )
    return TriggerOutcome(None, False, SKIPPED, why)


def _audit(
    tx: Tx,
    action: str,
    subject: str,
    deployment: DeploymentRow,
    version: int,
    source: TriggerSource,
    key: str | None,
    run: FlowRunRow | None,
    why: str = "",
) -> None:
    details: dict[str, Any] = {
        "deployment": deployment.name,
        "deployment_id": deployment.id,
        "version": version,
        "trigger": source.kind,
        "fired_by": source.actor or tx.actor,
        **({"detail": source.detail} if source.detail else {}),
        **({"idempotency_key": key} if key else {}),
    }
    if run is not None:
        details["parameters_digest"] = hashlib.sha256(run.parameters_json.encode()).hexdigest()
        if run.parent_run_id:
            details["parent_run_id"] = run.parent_run_id
            details["parent_key"] = run.parent_key
    if why:
        details["reason"] = why
    actor = tx.actor if source.kind in ("api", "subflow") else (source.actor or tx.actor)
    audit.append(
        tx.session,
        actor=actor,
        action=action,
        subject=subject,
        details=json.loads(json.dumps(details, default=str)),
        now=tx.now,
    )
