"""Steps that name a result store, against a real store (SQLite, and PostgreSQL when
configured): two agents in one environment, only one advertising ``spoof-fs``. Every attempt
of a step naming it goes to that one; a step naming a store no connected matching agent has
is refused at submission, and accepted (then waits, saying why) while a matching agent is not
connected, since only connected agents' stores are known."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

import pytest
from sqlalchemy import select

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.ready import ReadyQueue
from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, EventRow, StepRunRow
from control_plane.usecases.agents import HelloIn, agent_connected
from control_plane.usecases.scheduling import load_ready, queue_and_assign, scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import ValidationError
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import T0, attempts, new_run, run_at, spec

TARGET = "environment=onprem"


def add_agent(store: Store, agent_id: str, *stores: str, capacity: int = 8) -> AgentSlot:
    """Enroll and connect an agent of environment ``onprem`` advertising ``stores``; its free
    slots as the dispatcher passes them (the registry adds the stores from its Hello)."""
    store.run_sync(
        lambda s: s.add(
            AgentRow(id=agent_id, name=agent_id, environment="onprem", labels={}, providers=[],
                     capacity=0, status="disconnected", cert_fingerprint="", enrolled_at=T0,
                     last_applied_seq=0)
        )
    )  # fmt: skip
    hello = HelloIn("0.1", {"site": "dc1"}, ("process",), capacity, {}, "host", False)
    connected, _ = run_at(store, T0, agent_connected, agent_id, "", hello)
    return AgentSlot(
        agent_id, agent_id, "onprem", connected.labels, frozenset({"process"}), capacity, 0,
        result_stores=frozenset(stores),
    )  # fmt: skip


def calls(n: int, result_store: str) -> list[StepSubmission]:
    shared = spec(target=TARGET, result_store=result_store)  # a map: one spec for all calls
    return [StepSubmission(f"load#{i}", shared, '{"args": [], "kwargs": {}}') for i in range(n)]


def advertised(*slots: AgentSlot) -> Mapping[str, Collection[str]]:
    """What the SubmitSteps servicer passes: the connected agents' stores, by id."""
    return {s.agent_id: s.result_stores for s in slots}


def waiting_events(store: Store, run_id: str) -> list[EventRow]:
    query = select(EventRow).where(
        EventRow.flow_run_id == run_id, EventRow.kind == "attempt.waiting"
    )
    return store.run_sync(lambda s: list(s.scalars(query)))


def test_every_attempt_of_a_step_naming_a_store_goes_to_the_agent_that_has_it(
    store: Store,
) -> None:
    with_store = add_agent(store, "o-with", "spoof-fs", "onprem-fs")
    without = add_agent(store, "o-without", "onprem-fs")
    run_id = new_run(store)
    known = advertised(with_store, without)
    answers, queued = run_at(
        store, T0, submit_steps, run_id, calls(6, "spoof-fs"), result_stores=known
    )
    assert {e.result_store for e in queued.queued} == {"spoof-fs"}
    # Rebuilt from the store (a control plane's start), entries keep the store they need.
    assert {e.result_store for e in run_at(store, T0, load_ready)[0]} == {"spoof-fs"}
    _, effects = run_at(store, T0, scheduling_pass, [without, with_store])
    assert [a.agent_id for a in effects.assigns] == ["o-with"] * 6
    # A step naming no store still goes to both.
    run_at(store, T0, submit_steps, run_id, _plain(4), result_stores=known)
    _, effects = run_at(store, T0, scheduling_pass, [without, with_store])
    assert {a.agent_id for a in effects.assigns} == {"o-with", "o-without"}
    assert all(a.state == "PENDING" for a in answers)


def _plain(n: int) -> list[StepSubmission]:
    shared = spec(target=TARGET)
    return [StepSubmission(f"plain#{i}", shared, '{"args": [], "kwargs": {}}') for i in range(n)]


def test_attempts_queued_and_assigned_in_one_transaction_skip_the_agent_without_it(
    store: Store,
) -> None:
    """The submission's fast path (slots reserved for its transaction) checks the store too;
    what the reserved slots cannot take stays queued for the pass."""
    with_store = add_agent(store, "o-with", "spoof-fs", capacity=2)
    without = add_agent(store, "o-without", "onprem-fs", capacity=2)
    run_id = new_run(store)
    answers, effects = run_at(
        store, T0, queue_and_assign, [without, with_store], submit_steps, run_id,
        calls(3, "spoof-fs"), result_stores=advertised(with_store, without),
    )  # fmt: skip
    assert [a.agent_id for a in effects.assigns] == ["o-with", "o-with"]
    assert [e.result_store for e in effects.queued] == ["spoof-fs"]
    states = [attempts(store, a.step_run_id)[0].state for a in answers]
    assert sorted(states) == [AttemptState.ASSIGNED, AttemptState.ASSIGNED, AttemptState.QUEUED]


def test_a_store_no_connected_matching_agent_has_is_refused_at_submission(store: Store) -> None:
    without = add_agent(store, "o-without", "onprem-fs")
    bare = add_agent(store, "o-bare")
    run_id = new_run(store)
    with pytest.raises(ValidationError) as refused:
        run_at(
            store, T0, submit_steps, run_id, calls(2, "nope"),
            result_stores=advertised(without, bare),
        )  # fmt: skip
    message = str(refused.value)
    for needle in ("'load#0'", "'nope'", "o-without", "o-bare", "onprem-fs"):
        assert needle in message
    keys = store.run_sync(
        lambda s: list(s.scalars(select(StepRunRow.key).where(StepRunRow.flow_run_id == run_id)))
    )
    assert keys == []  # the submission rolled back
    # A store one of them has, or no store at all, is accepted.
    known = advertised(without, bare)
    run_at(store, T0, submit_steps, run_id, calls(1, "onprem-fs"), result_stores=known)
    run_at(store, T0, submit_steps, run_id, _plain(1), result_stores=known)


def test_a_store_is_accepted_while_a_matching_agent_is_not_connected_and_waits_for_it(
    store: Store,
) -> None:
    with_store = add_agent(store, "o-with", "spoof-fs")
    without = add_agent(store, "o-without", "onprem-fs")
    run_id = new_run(store)
    # o-with is enrolled but not connected now: it may have the store, so the step waits.
    (answer,), _ = run_at(
        store, T0, submit_steps, run_id, calls(1, "spoof-fs"), result_stores=advertised(without)
    )
    _, effects = run_at(store, T0, scheduling_pass, [without])
    assert effects.assigns == []
    (waiting,) = waiting_events(store, run_id)
    assert waiting.details is not None
    assert waiting.details["reason"] == "result_store"
    assert waiting.details["result_store"] == "spoof-fs"
    assert waiting.message.startswith("waiting for an agent with result store 'spoof-fs'")
    assert "their stores: onprem-fs" in waiting.message
    # Said once: a pass on a queue rebuilt from the store (a restart) does not repeat it.
    rebuilt = ReadyQueue(run_at(store, T0, load_ready)[0])
    later = T0 + dt.timedelta(seconds=1)
    run_at(store, later, scheduling_pass, [without], ready=rebuilt)
    assert len(waiting_events(store, run_id)) == 1
    # Once the agent with the store is back, the attempt goes to it.
    _, effects = run_at(store, later, scheduling_pass, [without, with_store], ready=rebuilt)
    (assign,) = effects.assigns
    assert (assign.agent_id, assign.step_run_id) == ("o-with", answer.step_run_id)
