"""An agent's status as ``meridian agents list`` shows it: a pure decision from the stored row,
the live stream (if any) and how long ago the agent was last heard from.

An open stream alone does not make an agent connected: a stopped process or a black-holed
network keeps a TCP stream open long after the heartbeats stopped. So an agent whose heartbeats
are late by more than :data:`STALE_AFTER_HEARTBEATS` intervals is ``stale`` while its lease
lasts, and ``lost`` once it is silent for longer than the lease, whatever the stream says.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

STALE_AFTER_HEARTBEATS = 2.0


class FleetStatus(StrEnum):
    CONNECTED = "connected"
    DRAINING = "draining"
    STALE = "stale"
    DISCONNECTED = "disconnected"
    LOST = "lost"
    REVOKED = "revoked"


@dataclass(frozen=True)
class AgentFacts:
    """What the control plane knows about one agent right now.

    ``silent_s``: seconds since the agent was last heard from (its last heartbeat, or any frame
    on a live stream), ``None`` if never; ``stored_status``: the row's status (``lost`` once the
    lease sweep declared it).
    """

    stored_status: str
    revoked: bool
    drain_requested: bool
    live: bool
    live_draining: bool
    silent_s: float | None


@dataclass(frozen=True)
class HeartbeatPolicy:
    interval_s: float
    lost_after_s: float

    @property
    def stale_after_s(self) -> float:
        return STALE_AFTER_HEARTBEATS * self.interval_s


def fleet_status(facts: AgentFacts, policy: HeartbeatPolicy) -> FleetStatus:
    if facts.revoked:
        return FleetStatus.REVOKED
    silent = facts.silent_s
    if silent is not None and silent >= policy.lost_after_s:
        return FleetStatus.LOST
    if facts.live:
        if silent is not None and silent > policy.stale_after_s:
            return FleetStatus.STALE
        # An operator's drain holds until the agent is re-enrolled.
        if facts.drain_requested or facts.live_draining:
            return FleetStatus.DRAINING
        return FleetStatus.CONNECTED
    if facts.stored_status == FleetStatus.LOST:
        return FleetStatus.LOST
    if facts.drain_requested:
        return FleetStatus.DRAINING
    return FleetStatus.DISCONNECTED
