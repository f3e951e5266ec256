"""Heartbeats are kept in memory (decision 0017): over a real agent stream (gRPC, mutual TLS),
plain heartbeats run no use case and commit nothing, while one that changes the agent's status
(draining) is stored at once and ``agents list`` shows it. Commits are counted by the store
(``Store.stats``), not timed."""

from __future__ import annotations

import time

from control_plane.store.db import Store
from protos.meridian.v1 import agent_pb2, control_pb2
from tests.control_plane.api.test_edges import (
    AgentStream,
    Edge,
    edge,  # noqa: F401 (the fixture)
    enrolled_agent,
    hello,
)
from tests.support.polling import poll_until


def heartbeat(draining: bool = False) -> agent_pb2.AgentFrame:
    return agent_pb2.AgentFrame(heartbeat=agent_pb2.Heartbeat(draining=draining))


def store_of(running: Edge) -> Store:
    store: Store = running.plane._services.store
    return store


def info(running: Edge, agent_id: str) -> control_pb2.AgentInfo:
    listed = running.control.ListAgents(control_pb2.ListAgentsRequest(), timeout=10)
    (found,) = [a for a in listed.agents if a.agent_id == agent_id]
    return found


def status(running: Edge, agent_id: str) -> str:
    return info(running, agent_id).status


def test_plain_heartbeats_commit_nothing_and_a_status_change_is_stored(
    edge: Edge,  # noqa: F811 (the imported fixture)
) -> None:
    store = store_of(edge)
    agent = enrolled_agent(edge, "edge-heartbeats")
    stream = AgentStream(agent.stub)
    edge.closers.append(stream.close)
    stream.send(hello("heartbeats"))
    stream.recv_until("welcome")
    assert status(edge, agent.agent_id) == "connected"
    written = store.stats.by_use_case["agent_heartbeat"]
    for _ in range(25):
        stream.send(heartbeat())
    stream.send(heartbeat(draining=True))
    # Frames are read in order: once the draining one was stored, the 25 before it were read.
    poll_until(
        lambda: store.stats.by_use_case["agent_heartbeat"] > written,
        message="the draining heartbeat to be stored",
    )
    assert store.stats.by_use_case["agent_heartbeat"] == written + 1
    assert status(edge, agent.agent_id) == "draining"
    # Staying draining is no change: nothing more is written.
    for _ in range(5):
        stream.send(heartbeat(draining=True))
    stream.send(heartbeat(draining=False))
    poll_until(
        lambda: store.stats.by_use_case["agent_heartbeat"] > written + 1,
        message="the end of draining to be stored",
    )
    assert store.stats.by_use_case["agent_heartbeat"] == written + 2
    assert status(edge, agent.agent_id) == "connected"


def test_agents_list_shows_the_last_heartbeat_heard_not_the_last_stored(
    edge: Edge,  # noqa: F811 (the imported fixture)
) -> None:
    agent = enrolled_agent(edge, "edge-heard")
    stream = AgentStream(agent.stub)
    edge.closers.append(stream.close)
    stream.send(hello("heard"))
    stream.recv_until("welcome")
    connected_ms = info(edge, agent.agent_id).last_heartbeat_unix_ms
    time.sleep(0.05)  # so that "later" is a different millisecond
    sent_ms = int(time.time() * 1000)
    stream.send(heartbeat())
    # Not written to the store, yet agents list tells when it was heard (read from the stream).
    poll_until(
        lambda: info(edge, agent.agent_id).last_heartbeat_unix_ms >= sent_ms,
        message="agents list to show the heartbeat just sent",
    )
    assert info(edge, agent.agent_id).last_heartbeat_unix_ms > connected_ms
