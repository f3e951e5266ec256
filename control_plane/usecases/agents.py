"""Agent presence: connect (with re-attach of held attempts), heartbeat, disconnect, lost.

The agents table keeps what operators see in ``meridian agents list``; attempts held by an
agent are reconciled against what the agent says it still runs every time it connects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.auth.enrollment import pinned_labels_problem
from control_plane.auth.rotation import accepts_certificate
from control_plane.orchestration.decisions import lost_after_s
from control_plane.orchestration.values import CancelOut, DecisionOut
from control_plane.store.models import AgentRow, AttemptRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx
from control_plane.usecases.attempts import assign_frame, finish_attempt
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.errors import PermissionDenied
from meridian.core.states import LIVE_RUN, SLOT_HOLDING, AttemptState


@dataclass(frozen=True)
class HelloIn:
    version: str
    labels: Mapping[str, str]
    providers: tuple[str, ...]
    capacity: int
    held: Mapping[str, int]  # attempt id -> fencing token the agent still runs
    hostname: str
    draining: bool
    # why the agent takes no new work although connected (e.g. "disk_full"); "" if healthy
    degraded: str = ""
    # provider type -> JSON schema of its per-step options, as the agent advertised it
    provider_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectedAgent:
    agent_id: str
    name: str
    environment: str
    labels: dict[str, str]
    providers: frozenset[str]
    capacity: int
    in_use: int
    draining: bool
    last_applied_seq: int
    provider_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drain_requested: bool = False  # by an operator: survives the agent's own heartbeats
    degraded: str = ""  # as the agent said in its Hello


def agent_connected(tx: Tx, agent_id: str, fingerprint: str, hello: HelloIn) -> ConnectedAgent:
    now = tx.now
    agent = tx.session.get(AgentRow, agent_id, with_for_update=True)
    if agent is None:
        raise PermissionDenied(f"agent {agent_id} is not enrolled here; enroll it again")
    if not accepts_certificate(agent, fingerprint, now):
        raise PermissionDenied(
            "this certificate is not the one issued to the agent (it was superseded by a "
            "rotation); enroll again with a new join token"
        )
    if agent.revoked_at is not None:
        raise PermissionDenied(
            f"agent {agent.name} was revoked at {agent.revoked_at:%Y-%m-%d %H:%M:%S} UTC; "
            "enroll a new identity with a new join token"
        )
    problem = pinned_labels_problem(agent.pinned_labels or {}, hello.labels)
    if problem:
        raise PermissionDenied(problem)
    labels = {**hello.labels, **(agent.pinned_labels or {})}
    # An operator's drain outlasts reconnects: the agent gets no new work until re-enrolled.
    draining = hello.draining or agent.drain_requested_at is not None
    agent.labels = labels
    agent.providers = list(hello.providers)
    agent.capacity = hello.capacity
    agent.version = hello.version
    agent.hostname = hello.hostname
    agent.status = "draining" if draining else "connected"
    agent.connected_at = now
    agent.last_heartbeat_at = now
    in_use = _reconcile_held(tx, agent, hello.held)
    tx.effects.wake_scheduler = True
    connected = ConnectedAgent(
        agent_id=agent.id,
        name=agent.name,
        environment=agent.environment,
        labels=dict(labels),
        providers=frozenset(hello.providers),
        capacity=hello.capacity,
        in_use=in_use,
        draining=draining,
        last_applied_seq=agent.last_applied_seq,
        provider_schemas=hello.provider_schemas,
        drain_requested=agent.drain_requested_at is not None,
        degraded=hello.degraded,
    )
    return connected


def _reconcile_held(tx: Tx, agent: AgentRow, reported: Mapping[str, int]) -> int:
    """Match what the agent runs with what we think it holds; returns slots in use."""
    session, effects = tx.session, tx.effects
    held = session.scalars(
        select(AttemptRow).where(
            AttemptRow.agent_id == agent.id, AttemptRow.state.in_(list(SLOT_HOLDING))
        )
    ).all()
    ours = {a.id: a for a in held}
    for attempt_id, token in reported.items():
        attempt = ours.get(attempt_id)
        if attempt is None or attempt.fencing_token != token:
            # Reassigned or finished while the agent was away: its copy must stop.
            effects.cancels.append(
                CancelOut(agent.id, attempt_id, token, "attempt is no longer held by this agent")
            )
    in_use = 0
    for attempt in held:
        step = session.get(StepRunRow, attempt.step_run_id)
        run = session.get(FlowRunRow, attempt.flow_run_id)
        assert step is not None and run is not None
        # A Cancel sent while the agent was away went down with its old stream: say it again.
        unwanted = run.state not in LIVE_RUN
        if attempt.id in reported:
            in_use += 1
            if unwanted:
                effects.cancels.append(
                    CancelOut(agent.id, attempt.id, attempt.fencing_token, f"run is {run.state}")
                )
            elif attempt.state == AttemptState.RUNNING:
                # Its ACCEPT may have been lost with the old stream after the proposal was
                # acked; saying it again is harmless (runners ignore repeated decisions).
                effects.decisions.append(
                    DecisionOut(attempt.id, attempt.fencing_token, True, agent_id=agent.id)
                )
        elif attempt.state == AttemptState.ASSIGNED and unwanted:
            error = ErrorInfo(ErrorClass.CANCELLED, "meridian.StepCancelled", f"run is {run.state}")
            finish_attempt(tx, attempt, step, AttemptState.CANCELLED, error=error)
        elif attempt.state == AttemptState.ASSIGNED:
            # The Assign frame may have been lost with the old stream: send it again.
            # Not counted here: sending it through the registry takes the slot.
            effects.assigns.append(assign_frame(attempt, step, run))
        else:
            error = ErrorInfo(
                ErrorClass.LOST_AGENT,
                "meridian.AgentLost",
                f"agent {agent.name} reconnected without attempt {attempt.number} of {step.key}",
            )
            finish_attempt(tx, attempt, step, AttemptState.LOST, error=error)
    return in_use


def agent_heartbeat(tx: Tx, agent_id: str, draining: bool) -> None:
    agent = tx.session.get(AgentRow, agent_id)
    if agent is not None and agent.revoked_at is None:
        agent.last_heartbeat_at = tx.now
        drained = draining or agent.drain_requested_at is not None
        agent.status = "draining" if drained else "connected"


def agent_disconnected(tx: Tx, agent_id: str) -> None:
    agent = tx.session.get(AgentRow, agent_id)
    if agent is not None and agent.status in ("connected", "draining"):
        agent.status = "disconnected"
        agent.disconnected_at = tx.now


def expire_agent_leases(tx: Tx, default_lost_after_s: float, started_at: dt.datetime) -> None:
    """Attempts whose agent stopped heartbeating become LOST and follow their step's policy.

    An agent's heartbeats renew the leases of every attempt it holds. Each step says how long
    to wait (``lost_after_s``) and what then happens (``on_agent_lost``: retry, fail, wait).
    Heartbeats could not arrive while this control plane was down, so leases count from
    ``started_at`` at the earliest.
    """
    session, now = tx.session, tx.now
    rows = session.execute(
        select(AttemptRow, AgentRow)
        .join(AgentRow, AgentRow.id == AttemptRow.agent_id)
        .where(AttemptRow.state.in_(list(SLOT_HOLDING)))
    ).all()
    for attempt, agent in rows:
        step = session.get(StepRunRow, attempt.step_run_id)
        assert step is not None
        lost_after = lost_after_s(step.spec, default_lost_after_s)
        if lost_after is None:
            continue
        silent = (now - _last_sign_of_life(agent, started_at)).total_seconds()
        if silent < lost_after:
            continue
        error = ErrorInfo(
            ErrorClass.LOST_AGENT,
            "meridian.AgentLost",
            f"agent {agent.name} in {agent.environment} sent no heartbeat for {silent:.0f}s "
            f"(lost_after {lost_after:g}s)",
        )
        finish_attempt(tx, attempt, step, AttemptState.LOST, error=error)
    _mark_silent_agents_lost(session, now, default_lost_after_s, started_at)


def _last_sign_of_life(agent: AgentRow, started_at: dt.datetime) -> dt.datetime:
    return max(agent.last_heartbeat_at or agent.enrolled_at, started_at)


def _mark_silent_agents_lost(
    session: Session, now: dt.datetime, lost_after_s: float, started_at: dt.datetime
) -> None:
    for agent in session.scalars(
        select(AgentRow).where(AgentRow.status.in_(["connected", "draining", "disconnected"]))
    ):
        if (now - _last_sign_of_life(agent, started_at)).total_seconds() >= lost_after_s:
            agent.status = "lost"
