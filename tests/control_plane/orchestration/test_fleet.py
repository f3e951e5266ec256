"""An agent's status in `agents list`: never "connected" when its heartbeats stopped."""

from __future__ import annotations

import dataclasses

import pytest

from control_plane.orchestration.fleet import AgentFacts, FleetStatus, HeartbeatPolicy, fleet_status

POLICY = HeartbeatPolicy(interval_s=5.0, lost_after_s=30.0)
LIVE = AgentFacts(
    stored_status="connected",
    revoked=False,
    drain_requested=False,
    live=True,
    live_draining=False,
    silent_s=1.0,
)
GONE = dataclasses.replace(LIVE, live=False, stored_status="disconnected")


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (LIVE, FleetStatus.CONNECTED),
        (dataclasses.replace(LIVE, silent_s=None), FleetStatus.CONNECTED),
        (dataclasses.replace(LIVE, silent_s=10.0), FleetStatus.CONNECTED),  # 2 intervals
        (dataclasses.replace(LIVE, silent_s=10.5), FleetStatus.STALE),
        (dataclasses.replace(LIVE, silent_s=29.9), FleetStatus.STALE),
        (dataclasses.replace(LIVE, silent_s=30.0), FleetStatus.LOST),  # its lease ended
        (dataclasses.replace(LIVE, live_draining=True), FleetStatus.DRAINING),
        (dataclasses.replace(LIVE, drain_requested=True), FleetStatus.DRAINING),
        (dataclasses.replace(LIVE, drain_requested=True, silent_s=20.0), FleetStatus.STALE),
        (dataclasses.replace(LIVE, revoked=True), FleetStatus.REVOKED),
        (GONE, FleetStatus.DISCONNECTED),
        (dataclasses.replace(GONE, stored_status="connected"), FleetStatus.DISCONNECTED),
        (dataclasses.replace(GONE, silent_s=31.0), FleetStatus.LOST),
        (dataclasses.replace(GONE, stored_status="lost"), FleetStatus.LOST),
        (dataclasses.replace(GONE, drain_requested=True), FleetStatus.DRAINING),
        (dataclasses.replace(GONE, revoked=True, silent_s=99.0), FleetStatus.REVOKED),
    ],
)
def test_status(facts: AgentFacts, expected: FleetStatus) -> None:
    assert fleet_status(facts, POLICY) is expected


def test_stale_follows_the_heartbeat_interval() -> None:
    fast = HeartbeatPolicy(interval_s=0.5, lost_after_s=3.0)
    assert fleet_status(dataclasses.replace(LIVE, silent_s=1.5), fast) is FleetStatus.STALE
    assert fleet_status(dataclasses.replace(LIVE, silent_s=3.0), fast) is FleetStatus.LOST
