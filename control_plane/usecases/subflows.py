"""Subflows: a run started from another run's body (``@flow(subflow=True)`` called in a flow,
whose body runs in the parent's runner process) is a child run linked to its parent.

Only the parent's own runner (its run token) starts a child. The call's key in the parent
(``parent_key``, ``name#n`` like a step's) makes it replay-safe: a resumed parent asking for the
same key gets the same child back — its result if it completed, reopened (like ``runs
resume``) if it failed, crashed or was cancelled, with a fresh token either way. The child's
creation is an event on the parent's timeline and an audit record naming both; cancelling a
parent cancels its unfinished children (``usecases.runs.cancel_run``).

A deployment started from a body (``meridian.run_deployment``) is a child too, created by
``trigger_deployment`` with the parent's run and call key; it runs on a hosted runner, and the
parent's token may read it (``is_child_of``, checked by ``api/authz.py``). A replayed parent
asking again gets the same child; one that failed, crashed or was cancelled is reopened for a
hosted runner (``runs resume`` of a hosted run: completed steps reused). Both ways to start a
child refuse a superseded runner of the parent (``caller_epoch``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.api_token_store import issue_runner_token
from control_plane.store.models import FlowRunRow
from control_plane.store.tx import Tx, record_event
from control_plane.usecases.deployment_triggers import TriggerOutcome, trigger_deployment
from control_plane.usecases.runners import check_runner_epoch
from control_plane.usecases.runs import RESUMABLE, create_run, resume_run
from meridian.core.errors import ConflictError, NotFound, PermissionDenied
from meridian.core.kinds import EventKind
from meridian.core.states import TERMINAL_RUN, RunState

SUBFLOW_TRIGGER = "subflow"
MAX_CHILDREN_SHOWN = 1000


def start_child_run(
    tx: Tx,
    *,
    parent_run_id: str,
    parent_key: str,
    caller_run_id: str | None,
    flow_name: str,
    entrypoint: str,
    parameters_json: str,
    bundle_sha256: str = "",
    caller_epoch: int | None = None,
) -> tuple[FlowRunRow, str, bool]:
    """The child run of ``parent_key`` in ``parent_run_id`` and a token its runner drives it
    with: (run, token, existing). ``bundle_sha256`` "" = the parent's code. ``caller_epoch``:
    the runner epoch of the caller's token; a superseded runner of the parent (decision 0018)
    starts no child."""
    if caller_run_id != parent_run_id:
        raise PermissionDenied("only the parent run's own runner may start its subflows")
    check_runner_epoch(tx, parent_run_id, caller_epoch)
    parent = tx.session.get(FlowRunRow, parent_run_id, with_for_update=True)
    if parent is None:
        raise NotFound(f"flow run {parent_run_id} does not exist")
    child = tx.session.scalars(
        select(FlowRunRow).where(
            FlowRunRow.parent_run_id == parent_run_id, FlowRunRow.parent_key == parent_key
        )
    ).first()
    if child is not None:
        return _reuse(tx, child, flow_name), _token(tx, child), True
    if parent.state != RunState.RUNNING:
        raise ConflictError(
            f"flow run {parent.id} is {parent.state}; only a RUNNING run starts subflows"
        )
    child = create_run(
        tx,
        flow_name=flow_name,
        entrypoint=entrypoint,
        parameters_json=parameters_json,
        bundle_sha256=bundle_sha256 or parent.bundle_sha256,
        trigger=SUBFLOW_TRIGGER,
        scope=parent.scope,
    )
    child.parent_run_id, child.parent_key = parent.id, parent_key
    child.trigger_detail = {
        "kind": SUBFLOW_TRIGGER,
        "parent_run_id": parent.id,
        "parent_key": parent_key,
    }
    record_event(
        tx,
        kind=EventKind.RUN_SUBFLOW,
        flow_run_id=parent.id,
        key=parent_key,
        message=f"subflow {flow_name} started as run {child.id}",
        details={"child_run_id": child.id, "flow": flow_name},
    )
    audit.append(
        tx.session,
        actor=tx.actor,
        action="run.subflow",
        subject=child.id,
        details={"parent_run_id": parent.id, "parent_key": parent_key, "flow": flow_name},
        now=tx.now,
    )
    return child, _token(tx, child), False


def trigger_child_deployment(
    tx: Tx,
    name: str,
    parameters: Mapping[str, Any],
    *,
    caller_epoch: int | None,
    **options: Any,
) -> TriggerOutcome:
    """``trigger_deployment`` for a caller that may be a parent's runner: with a ``parent``,
    a superseded runner of that parent (an older epoch) triggers no child (decision 0018)."""
    parent = options.get("parent")
    if parent is not None:
        check_runner_epoch(tx, parent[0], caller_epoch)
    outcome = trigger_deployment(tx, name, parameters, **options)
    if parent is None or not outcome.existing or outcome.flow_run_id is None:
        return outcome
    child = tx.session.get(FlowRunRow, outcome.flow_run_id, with_for_update=True)
    if child is None or child.parent_run_id != parent[0] or child.state not in RESUMABLE:
        return outcome
    resume_run(tx, child.id)  # as for an in-process subflow: the replayed parent runs it again
    return dataclasses.replace(
        outcome,
        state=child.state,
        message=f"run {child.id} of {name} was {outcome.state}: resumed for a hosted runner",
    )


def _reuse(tx: Tx, child: FlowRunRow, flow_name: str) -> FlowRunRow:
    if child.flow_name != flow_name:
        raise ConflictError(
            f"subflow key {child.parent_key!r} of run {child.parent_run_id} started flow "
            f"{child.flow_name!r}, not {flow_name!r}: the parent's body is not replay-safe"
        )
    if child.state in RESUMABLE:
        resume_run(tx, child.id)  # the resumed parent runs it again; completed steps reused
    if child.state not in TERMINAL_RUN:
        # The body that drives the child moves to this runner: the previous one (a parent
        # runner that was cut off and superseded) keeps a token for the child, so fence it.
        child.runner_epoch = int(child.runner_epoch or 0) + 1
    return child


def _token(tx: Tx, child: FlowRunRow) -> str:
    return issue_runner_token(tx.session, child.id, tx.now, child.scope, epoch=child.runner_epoch)


def is_child_of(session: Session, run_id: str, parent_run_id: str) -> bool:
    """Whether ``run_id`` (a full id) is a direct child of ``parent_run_id``: a parent's runner
    token may read its children (``api/authz.py``), and nothing further down."""
    if not run_id or not parent_run_id:
        return False
    found = session.scalar(select(FlowRunRow.parent_run_id).where(FlowRunRow.id == run_id))
    return found is not None and found == parent_run_id


def live_children(tx: Tx, run_id: str) -> list[FlowRunRow]:
    """A run's children that have not ended (a crashed one counts: it can still resume)."""
    ended = [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED]
    return list(
        tx.session.scalars(
            select(FlowRunRow)
            .where(FlowRunRow.parent_run_id == run_id, FlowRunRow.state.not_in(ended))
            .order_by(FlowRunRow.created_at)
        )
    )
