"""Agent presence: connect (with re-attach of held attempts), heartbeat, disconnect, lost.

The agents table keeps what operators see in ``meridian agents list``; attempts held by an
agent are reconciled against what the agent says it still runs every time it connects.
"""

from __future__ import annotations

import datetime as dt
import logging
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
from meridian.core.reconnect import RESTART_RECONNECT_ALLOWANCE
from meridian.core.selectors import ENVIRONMENT_LABEL
from meridian.core.states import LIVE_RUN, SLOT_HOLDING, AttemptState

log = logging.getLogger(__name__)


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
    # The labels its join token fixed (it cannot claim others in their place): what a
    # residency rule with ``pinned_labels_only`` counts.
    pinned_labels: Mapping[str, str] = field(default_factory=dict)


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
    claimed = dict(hello.labels)
    if claimed.pop(ENVIRONMENT_LABEL, None) is not None:
        # Reserved (the enrollment sets it); refusing it would keep an agent an older CLI
        # started with it from ever connecting, so it is dropped and said once per connect.
        log.warning(
            "agent %s claims the reserved label %r; it is ignored (its environment is %s)",
            agent.name,
            ENVIRONMENT_LABEL,
            agent.environment,
        )
    labels = {**claimed, **(agent.pinned_labels or {})}
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
        pinned_labels={str(k): str(v) for k, v in (agent.pinned_labels or {}).items()},
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
    """Store a connected agent's status when it changed (draining or not).

    Plain heartbeats are not written: the registry keeps when each connected agent was last
    heard from, and the lease sweep stores it now and then (``expire_agent_leases``).
    """
    agent = tx.session.get(AgentRow, agent_id)
    if agent is not None and agent.revoked_at is None:
        agent.last_heartbeat_at = tx.now
        agent.status = _connected_status(agent, draining)


def _connected_status(agent: AgentRow, draining: bool) -> str:
    return "draining" if draining or agent.drain_requested_at is not None else "connected"


def agent_disconnected(tx: Tx, agent_id: str, last_seen: dt.datetime | None = None) -> None:
    """The agent's stream ended; ``last_seen`` (from the registry) is when it was last heard
    from, stored so that its attempts' leases count from there."""
    agent = tx.session.get(AgentRow, agent_id)
    if agent is None:
        return
    if last_seen is not None and (
        agent.last_heartbeat_at is None or agent.last_heartbeat_at < last_seen
    ):
        agent.last_heartbeat_at = last_seen
    if agent.status in ("connected", "draining"):
        agent.status = "disconnected"
        agent.disconnected_at = tx.now


@dataclass(frozen=True)
class LiveAgent:
    """A connected agent as the registry knows it: when it was last heard from (any frame)."""

    last_seen: dt.datetime
    draining: bool


# How stale the stored ``last_heartbeat_at`` of a connected agent may grow before the sweep
# rewrites it: it only serves readers after a restart or on another replica, and leases of a
# connected agent are judged from the registry. Kept well under the lease (``lost_after``) so
# another replica never judges a live agent lost from it.
MAX_STORED_HEARTBEAT_AGE_S = 60.0


def expire_agent_leases(
    tx: Tx,
    default_lost_after_s: float,
    started_at: dt.datetime,
    live: Mapping[str, LiveAgent] | None = None,
) -> None:
    """Attempts whose agent stopped heartbeating become LOST and follow their step's policy.

    An agent's heartbeats renew the leases of every attempt it holds. Each step says how long
    to wait (``lost_after_s``) and what then happens (``on_agent_lost``: retry, fail, wait).
    Heartbeats could not arrive while this control plane was down, so leases count from
    ``started_at`` at the earliest. ``live``: the agents connected here, with when they were
    last heard from (heartbeats are kept in memory, not stored one by one).
    """
    session, now, live = tx.session, tx.now, live or {}
    rows = session.execute(
        select(AttemptRow, AgentRow)
        .join(AgentRow, AgentRow.id == AttemptRow.agent_id)
        .where(AttemptRow.state.in_(list(SLOT_HOLDING)))
    ).all()
    steps = _steps_by_id(session, {attempt.step_run_id for attempt, _ in rows})
    for attempt, agent in rows:
        step = steps[attempt.step_run_id]
        lost_after = lost_after_s(step.spec, default_lost_after_s)
        if lost_after is None:
            continue
        silent = (now - _last_sign_of_life(agent, started_at, live)).total_seconds()
        if silent < lost_after:
            continue
        error = ErrorInfo(
            ErrorClass.LOST_AGENT,
            "meridian.AgentLost",
            f"agent {agent.name} in {agent.environment} sent no heartbeat for {silent:.0f}s "
            f"(lost_after {lost_after:g}s)",
        )
        finish_attempt(tx, attempt, step, AttemptState.LOST, error=error)
    _update_fleet(session, now, default_lost_after_s, started_at, live)


def _steps_by_id(session: Session, ids: set[str]) -> dict[str, StepRunRow]:
    if not ids:
        return {}
    rows = session.scalars(select(StepRunRow).where(StepRunRow.id.in_(list(ids))))
    return {row.id: row for row in rows}


def _last_sign_of_life(
    agent: AgentRow, started_at: dt.datetime, live: Mapping[str, LiveAgent]
) -> dt.datetime:
    stored = agent.last_heartbeat_at or agent.enrolled_at
    here = live.get(agent.id)
    if here is not None and here.last_seen > stored:
        stored = here.last_seen
    if stored >= started_at:
        return stored
    # Not heard from since this control plane started: it may still be in the reconnect
    # backoff the restart itself caused (``meridian.core.reconnect``).
    return started_at + RESTART_RECONNECT_ALLOWANCE


def _update_fleet(
    session: Session,
    now: dt.datetime,
    lost_after_s: float,
    started_at: dt.datetime,
    live: Mapping[str, LiveAgent],
) -> None:
    """Store what operators see after a restart: silent agents are lost, connected ones get
    their last heartbeat (at most ``MAX_STORED_HEARTBEAT_AGE_S`` or a third of the lease old)
    and their status back if a sweep had declared them lost while they were only slow."""
    refresh_s = min(MAX_STORED_HEARTBEAT_AGE_S, lost_after_s / 3)
    for agent in session.scalars(
        select(AgentRow).where(
            AgentRow.revoked_at.is_(None),
            AgentRow.status.in_(["connected", "draining", "disconnected", "lost"]),
        )
    ):
        silent = (now - _last_sign_of_life(agent, started_at, live)).total_seconds()
        here = live.get(agent.id)
        if here is None:
            if silent >= lost_after_s and agent.status != "lost":
                agent.status = "lost"
            continue
        stored = agent.last_heartbeat_at
        if stored is None or (here.last_seen - stored).total_seconds() >= refresh_s:
            agent.last_heartbeat_at = here.last_seen
        status = "lost" if silent >= lost_after_s else _connected_status(agent, here.draining)
        if agent.status != status:
            agent.status = status
