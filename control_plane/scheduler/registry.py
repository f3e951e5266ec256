"""Connected agents held in memory: their advertised slots and an outbox per stream.

The database is the truth for which attempts an agent holds; ``in_use`` here is a cache kept in
step by the same code paths (set on connect, +1 per assignment sent, -1 per slot released).

A *reservation* holds free slots for a transaction in flight that may assign into them (a
submission assigning its own attempts, see ``Dispatcher.queue_and_assign``): until it is
released every planner counts reserved slots as in use, so two transactions planned on the
loop never hand out the same slot. Reservations are kept per agent id, not per stream, so a
reconnect in the meantime does not free them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from control_plane.auth.rotation import Renewal
from control_plane.orchestration.housekeeping import DeleteResultsOut, SweepResultsOut
from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.runner_plan import RunnerHost
from control_plane.orchestration.values import (
    AssignOut,
    AssignRunnerOut,
    CancelOut,
    CancelRunnerOut,
    DecisionOut,
)
from control_plane.usecases.agents import ConnectedAgent, LiveAgent


@dataclasses.dataclass(frozen=True)
class AckOut:
    up_to_seq: int


@dataclasses.dataclass(frozen=True)
class DrainOut:
    reason: str


@dataclasses.dataclass(frozen=True)
class CloseOut:
    """Ends the stream from the server side, with the reason as its status message.

    ``refused``: the agent may not come back (revoked); otherwise it should reconnect
    (a newer connection won, its certificate expired, the server is shutting down).
    """

    reason: str
    refused: bool = False


@dataclasses.dataclass(frozen=True)
class ServeResultOut:
    """Ask the agent to push a stored result's bytes for a transfer (``PushResult``)."""

    transfer_id: str
    ref_json: str
    offset: int


Outgoing = (
    AssignOut
    | CancelOut
    | AckOut
    | DrainOut
    | CloseOut
    | Renewal
    | list[DecisionOut]
    | SweepResultsOut
    | DeleteResultsOut
    | ServeResultOut
    # Hosted flow runners (decision 0018); defined beside Effects, which carries them.
    | AssignRunnerOut
    | CancelRunnerOut
)


class AgentSession:
    def __init__(self, agent: ConnectedAgent, session_id: str) -> None:
        self.agent = agent
        self.session_id = session_id
        self.in_use = agent.in_use
        self.draining = agent.draining
        # Whether the stored row says draining: heartbeats are kept here, and only a change
        # of this is written at once (usecases.agents.agent_heartbeat).
        self.stored_draining = agent.draining
        self.drain_requested = agent.drain_requested
        # Why the agent takes no new work (a local fault it reported, e.g. "disk_full"): like
        # draining, a degraded agent gets no new assignments until it reports it cleared.
        self.degraded = agent.degraded
        # The longest event-loop stall the agent reported and when (monotonic): shown to
        # operators for a while, so a blocked agent is visible centrally.
        self.loop_stall_ms = 0
        self.loop_stall_seen = 0.0
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        # The result stores the agent advertised in its Hello (names only): a transfer asks
        # an agent of the producing environment that has the result's store.
        self.result_stores: tuple[str, ...] = ()
        # Which of them the environment's results go to by default ("" = none advertised).
        self.default_result_store = ""
        # Monotonic time of the last frame from the agent. A stream can look open long after
        # its peer went silent (a black-holed network): such an agent gets no new work.
        self.last_seen = time.monotonic()
        # Hosted flow runners (decision 0018): how many bodies the agent runs at once, and
        # the runs (id -> epoch) whose runners it last said are alive there.
        self.runner_slots = 0
        self.held_runners: dict[str, int] = {}

    def runner_host(self) -> RunnerHost:
        """What the runner planner sees (``held`` is counted from the store there)."""
        a = self.agent
        return RunnerHost(
            a.agent_id,
            a.name,
            a.environment,
            a.labels,
            self.runner_slots,
            0,
            self.draining,
            bool(self.degraded),
        )

    def seen(self) -> None:
        self.last_seen = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen

    def slot(self, reserved: int = 0) -> AgentSlot:
        """What planners see: ``reserved`` slots (held for a transaction in flight) count as
        in use."""
        a = self.agent
        return AgentSlot(
            agent_id=a.agent_id,
            name=a.name,
            environment=a.environment,
            labels=a.labels,
            providers=a.providers,
            capacity=a.capacity,
            in_use=self.in_use + reserved,
            draining=self.draining,
            degraded=bool(self.degraded),
            pinned_labels=a.pinned_labels,
            result_stores=frozenset(self.result_stores),
        )

    def send(self, item: Outgoing) -> None:
        self.outbox.put_nowait(item)


class Reservation:
    """Free slots held for one transaction: ``slots`` are the held room only (``capacity`` is
    the number held, ``in_use`` 0), what that transaction may plan on. ``release`` gives them
    back; call it once the transaction's effects were applied (an assignment then counts in
    ``in_use``) or it failed. Releasing twice is harmless."""

    def __init__(self, registry: AgentRegistry, slots: tuple[AgentSlot, ...]) -> None:
        self._registry = registry
        self.slots = slots
        self._released = not slots

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry.unreserve(self.slots)


class AgentRegistry:
    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._reserved: dict[str, int] = {}  # agent id -> slots held by transactions in flight

    def add(self, session: AgentSession) -> AgentSession | None:
        """Register a stream; returns the session it replaces (to be closed)."""
        previous = self._sessions.get(session.agent.agent_id)
        self._sessions[session.agent.agent_id] = session
        return previous

    def remove(self, session: AgentSession) -> bool:
        """Unregister unless a newer stream of the same agent already replaced it."""
        if self._sessions.get(session.agent.agent_id) is session:
            del self._sessions[session.agent.agent_id]
            return True
        return False

    def get(self, agent_id: str) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def slots(self, max_silence_s: float = float("inf")) -> list[AgentSlot]:
        """Slots of connected agents heard from within ``max_silence_s``."""
        return [
            s.slot(self._reserved.get(agent_id, 0))
            for agent_id, s in self._sessions.items()
            if s.silent_for() <= max_silence_s
        ]

    def runner_hosts(self, max_silence_s: float = float("inf")) -> list[RunnerHost]:
        """Connected agents offering runner slots, heard from within ``max_silence_s``."""
        return [
            s.runner_host()
            for s in self._sessions.values()
            if s.runner_slots > 0 and s.silent_for() <= max_silence_s
        ]

    def reserve(self, counts: Mapping[str, int]) -> Reservation:
        """Hold ``counts[agent_id]`` slots of each connected agent (the caller planned them on
        ``slots()`` just before, on this same thread, so they are free)."""
        held = []
        for agent_id, count in counts.items():
            session = self._sessions.get(agent_id)
            if session is None or count <= 0:
                continue
            self._reserved[agent_id] = self._reserved.get(agent_id, 0) + count
            held.append(dataclasses.replace(session.slot(), capacity=count, in_use=0))
        return Reservation(self, tuple(held))

    def reserved(self, agent_id: str) -> int:
        return self._reserved.get(agent_id, 0)

    def unreserve(self, slots: tuple[AgentSlot, ...]) -> None:
        for slot in slots:
            left = self._reserved.get(slot.agent_id, 0) - slot.capacity
            if left > 0:
                self._reserved[slot.agent_id] = left
            else:
                self._reserved.pop(slot.agent_id, None)

    def live_agents(self, now: dt.datetime) -> dict[str, LiveAgent]:
        """When each connected agent was last heard from, on the wall clock of ``now``."""
        return {
            agent_id: LiveAgent(now - dt.timedelta(seconds=session.silent_for()), session.draining)
            for agent_id, session in self._sessions.items()
        }

    def advertised_stores(self) -> dict[str, tuple[str, ...]]:
        """The result stores each connected agent advertised, by agent id."""
        return {agent_id: s.result_stores for agent_id, s in self._sessions.items()}

    def sessions(self) -> list[AgentSession]:
        return list(self._sessions.values())

    def option_schema(self, provider: str) -> Mapping[str, Any] | None:
        """The per-step option schema a connected agent advertised for ``provider``."""
        for session in self._sessions.values():
            schema = session.agent.provider_schemas.get(provider)
            if schema is not None:
                return schema
        return None
