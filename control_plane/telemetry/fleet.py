"""An agent's status for every reader — the gRPC API (``agents list``), the web console and
the metrics — from its stored row and its live session (if any).

The decision itself is ``control_plane.orchestration.fleet.fleet_status`` (pure); this module
only gathers the facts it needs, so the console and the CLI can never disagree about an agent.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from control_plane.orchestration.fleet import (
    AgentFacts,
    FleetStatus,
    HeartbeatPolicy,
    fleet_status,
)

STATUSES = tuple(status.value for status in FleetStatus)


class StoredAgent(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def revoked_at(self) -> dt.datetime | None: ...
    @property
    def drain_requested_at(self) -> dt.datetime | None: ...
    @property
    def last_heartbeat_at(self) -> dt.datetime | None: ...


class LiveSession(Protocol):
    draining: bool

    def silent_for(self) -> float: ...


def agent_facts(agent: StoredAgent, live: LiveSession | None, now: dt.datetime) -> AgentFacts:
    """The live stream's silence when there is one, else the stored heartbeat's age."""
    silent: float | None = None
    if live is not None:
        silent = live.silent_for()
    elif agent.last_heartbeat_at is not None:
        silent = max(0.0, (now - agent.last_heartbeat_at).total_seconds())
    return AgentFacts(
        stored_status=agent.status,
        revoked=agent.revoked_at is not None,
        drain_requested=agent.drain_requested_at is not None,
        live=live is not None,
        live_draining=live is not None and live.draining,
        silent_s=silent,
    )


def last_heard(
    agent: StoredAgent, live: LiveSession | None, now: dt.datetime
) -> dt.datetime | None:
    """When the agent was last heard from: from its live stream when connected here (the
    stored time is refreshed only now and then, decision 0017), else the stored heartbeat."""
    if live is not None:
        return now - dt.timedelta(seconds=live.silent_for())
    return agent.last_heartbeat_at


def agent_status(
    agent: StoredAgent, live: LiveSession | None, now: dt.datetime, policy: HeartbeatPolicy
) -> FleetStatus:
    return fleet_status(agent_facts(agent, live, now), policy)
