"""Leases with heartbeats kept in memory: the lease sweep (``expire_agent_leases``) judges a
connected agent by when the registry last heard from it, stores that time now and then (for
``agents list`` after a restart and for other replicas), and after a restart counts leases
from the restart, not from the stale stored heartbeat."""

from __future__ import annotations

import datetime as dt

from agent.agent import AgentConfig
from control_plane.store.db import Store
from control_plane.store.models import AgentRow
from control_plane.usecases.agents import (
    HelloIn,
    LiveAgent,
    agent_connected,
    agent_disconnected,
    expire_agent_leases,
)
from meridian.core.reconnect import AGENT_MAX_RECONNECT_DELAY_S, RESTART_RECONNECT_ALLOWANCE
from tests.control_plane.usecases.helpers import T0, attempts, new_run, run_at, schedule, submit


def agent(store: Store, agent_id: str = "a1") -> AgentRow:
    row = store.run_sync(lambda s: s.get(AgentRow, agent_id))
    assert row is not None
    return row


def sweep(
    store: Store, at_s: float, live: dict[str, LiveAgent], started_at: dt.datetime = T0
) -> None:
    run_at(store, T0 + dt.timedelta(seconds=at_s), expire_agent_leases, 30.0, started_at, live)


def heard(at_s: float, draining: bool = False) -> LiveAgent:
    return LiveAgent(T0 + dt.timedelta(seconds=at_s), draining)


def test_a_connected_agent_heard_from_keeps_its_attempts_without_stored_heartbeats(
    store: Store,
) -> None:
    step_id = submit(store, new_run(store))
    schedule(store)
    # The stored heartbeat is from T0; the registry heard from a1 a second ago.
    sweep(store, 100.0, {"a1": heard(99.0)})
    assert [a.state for a in attempts(store, step_id)] == ["ASSIGNED"]
    assert agent(store).status == "connected"
    # The sweep stored the time heard from, for readers after a restart.
    assert agent(store).last_heartbeat_at == T0 + dt.timedelta(seconds=99)


def test_the_stored_heartbeat_is_rewritten_only_when_it_grew_old(store: Store) -> None:
    submit(store, new_run(store))
    schedule(store)
    sweep(store, 20.0, {"a1": heard(20.0)})
    stored = agent(store).last_heartbeat_at
    sweep(store, 25.0, {"a1": heard(25.0)})  # a third of the lease (10 s) has not passed
    assert agent(store).last_heartbeat_at == stored
    sweep(store, 31.0, {"a1": heard(31.0)})
    assert agent(store).last_heartbeat_at == T0 + dt.timedelta(seconds=31)


def test_a_connected_agent_that_went_silent_loses_its_attempts(store: Store) -> None:
    step_id = submit(store, new_run(store))
    schedule(store)
    sweep(store, 100.0, {"a1": heard(60.0)})  # its stream is open, but silent for 40 s
    first, retry = attempts(store, step_id)
    assert first.state == "LOST" and retry.state == "QUEUED"
    assert agent(store).status == "lost"
    # It speaks again on the same stream: the next sweep says so.
    sweep(store, 101.0, {"a1": heard(101.0)})
    assert agent(store).status == "connected"


def test_after_a_restart_leases_count_from_the_restart(store: Store) -> None:
    step_id = submit(store, new_run(store))
    schedule(store)
    restarted = T0 + dt.timedelta(seconds=500)
    # Nobody connected yet, the stored heartbeat is 500 s old: the lease runs from the restart
    # plus the longest reconnect backoff the restart put every agent in.
    allowance = RESTART_RECONNECT_ALLOWANCE.total_seconds()
    sweep(store, 529.0 + allowance, {}, started_at=restarted)
    assert [a.state for a in attempts(store, step_id)] == ["ASSIGNED"]
    sweep(store, 531.0 + allowance, {}, started_at=restarted)
    assert attempts(store, step_id)[0].state == "LOST"


def test_an_agent_heard_from_since_the_restart_gets_no_allowance(store: Store) -> None:
    step_id = submit(store, new_run(store))
    schedule(store)
    restarted = T0 + dt.timedelta(seconds=500)
    # It reconnected 1 s after the restart, then went silent: 30 s from then, it is lost.
    sweep(store, 531.0, {"a1": heard(501.0)}, started_at=restarted)
    assert attempts(store, step_id)[0].state == "LOST"


def test_the_agents_reconnect_backoff_fits_the_restart_allowance() -> None:
    # The allowance is derived from the agents' default cap; both must move together.
    assert AgentConfig.__dataclass_fields__["reconnect_max_backoff_s"].default == (
        AGENT_MAX_RECONNECT_DELAY_S
    )
    assert RESTART_RECONNECT_ALLOWANCE.total_seconds() >= AGENT_MAX_RECONNECT_DELAY_S


def test_a_disconnect_stores_when_the_agent_was_last_heard_from(store: Store) -> None:
    step_id = submit(store, new_run(store))
    schedule(store)
    at_50 = T0 + dt.timedelta(seconds=50)
    run_at(store, at_50, agent_disconnected, "a1", at_50)
    assert agent(store).status == "disconnected"
    # Its lease counts from that moment, not from the older stored heartbeat.
    sweep(store, 70.0, {})
    assert [a.state for a in attempts(store, step_id)] == ["ASSIGNED"]
    sweep(store, 81.0, {})
    assert attempts(store, step_id)[0].state == "LOST"


def test_a_claimed_environment_label_is_dropped_not_refused(store: Store) -> None:
    # An agent started by an older CLI with --label environment=...: it still connects (a
    # refusal would keep it away for good), and the label it claims is not kept.
    hello = HelloIn("0.1", {"environment": "prod", "site": "x"}, ("process",), 2, {}, "h", False)
    connected, _ = run_at(store, T0, agent_connected, "a1", "", hello)
    assert connected.labels == {"site": "x"}
    assert agent(store).labels == {"site": "x"}
