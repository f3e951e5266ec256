"""``Dispatcher.apply``: what a committed use case's effects turn into — frames on the right
agents' streams, slot counts, watcher wake-ups — and that ``Store.transact`` hands them over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.orchestration.values import AssignOut, CancelOut, DecisionOut, Effects
from control_plane.scheduler.dispatcher import Dispatcher
from control_plane.scheduler.registry import AgentRegistry, AgentSession
from control_plane.store.db import Store, sqlite_url
from control_plane.store.tx import Tx
from control_plane.usecases.agents import ConnectedAgent
from meridian.core.spec import StepSpec


def connected(agent_id: str, in_use: int = 0) -> ConnectedAgent:
    return ConnectedAgent(
        agent_id=agent_id,
        name=agent_id,
        environment="env",
        labels={},
        providers=frozenset({"process"}),
        capacity=4,
        in_use=in_use,
        draining=False,
        last_applied_seq=0,
    )


def assign(agent_id: str, attempt_id: str) -> AssignOut:
    return AssignOut(
        agent_id=agent_id,
        attempt_id=attempt_id,
        fencing_token=1,
        flow_run_id="run",
        step_run_id="step",
        step_key="s#1",
        attempt_number=1,
        spec=StepSpec("s", "m", "f"),
        bundle_sha256="b" * 64,
        inputs_json="{}",
    )


def drain(session: AgentSession) -> list[object]:
    items = []
    while not session.outbox.empty():
        items.append(session.outbox.get_nowait())
    return items


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(sqlite_url(tmp_path / "db.sqlite"))
    yield s
    s.close()


def test_effects_reach_the_right_streams_and_slot_counts(store: Store) -> None:
    registry = AgentRegistry()
    a1, a2 = AgentSession(connected("a1", in_use=2), "s1"), AgentSession(connected("a2"), "s2")
    registry.add(a1)
    registry.add(a2)
    touched: list[set[str]] = []
    dispatcher = Dispatcher(
        store, registry, touched.append, sweep_interval_s=5.0, agent_lost_after_s=30.0
    )
    effects = Effects(touched_runs={"run"})
    effects.assigns.append(assign("a2", "att-1"))
    effects.assigns.append(assign("gone", "att-2"))  # disconnected: re-sent when it returns
    effects.cancels.append(CancelOut("a1", "att-3", 4, "run cancelled"))
    effects.decisions.append(DecisionOut("att-4", 5, True, agent_id="a1"))
    effects.release("a1")

    dispatcher.apply(effects)

    assert [type(item).__name__ for item in drain(a1)] == ["CancelOut", "list"]
    assert [item.attempt_id for item in drain(a2)] == ["att-1"]  # type: ignore[attr-defined]
    assert (a1.in_use, a2.in_use) == (1, 1)
    assert touched == [{"run"}]


def test_transact_applies_effects_only_after_the_commit(store: Store) -> None:
    store.migrate()
    applied: list[Effects] = []
    store.after_commit(applied.append)

    def usecase(tx: Tx) -> dt.datetime:
        tx.effects.touched_runs.add("run")
        assert applied == []  # nothing is applied while the transaction is open
        return tx.now

    now = asyncio.run(store.transact(usecase))
    assert now.tzinfo is not None
    assert [e.touched_runs for e in applied] == [{"run"}]
