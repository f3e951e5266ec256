"""Queue-and-assign (``Dispatcher.queue_and_assign``): a submission that finds a free matching
slot is assigned in the transaction that queues it, on a real store (SQLite and PostgreSQL)
with a running dispatcher. Slots are reserved in the registry first, so no agent is ever given
more attempts than its capacity, whatever runs at the same time; a reservation is released
when the transaction fails or its caller goes away; attempts already waiting are not overtaken.
Commits are counted by the store (``Store.stats``), nothing is timed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from control_plane.orchestration.values import AssignOut, Effects, ReportIn, StepSubmission
from control_plane.scheduler.dispatcher import Dispatcher
from control_plane.scheduler.registry import AgentRegistry, AgentSession
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow
from control_plane.store.tx import Tx
from control_plane.usecases.agents import ConnectedAgent
from control_plane.usecases.attempts import apply_reports
from control_plane.usecases.steps import submit_steps
from meridian.core.kinds import ReportKind
from meridian.core.states import TERMINAL_ATTEMPT, AttemptState
from tests.control_plane.usecases.helpers import new_run, spec
from tests.support.polling import apoll_until

AWS = ("a1", "aws-demo", {"cloud": "aws"})  # the agents ``make_store`` enrolled
GCP = ("g1", "gcp-demo", {"cloud": "gcp"})


def session(agent: tuple[str, str, dict[str, str]], capacity: int, in_use: int = 0) -> AgentSession:
    agent_id, environment, labels = agent
    connected = ConnectedAgent(
        agent_id=agent_id,
        name=agent_id,
        environment=environment,
        labels=labels,
        providers=frozenset({"process"}),
        capacity=capacity,
        in_use=in_use,
        draining=False,
        last_applied_seq=0,
    )
    return AgentSession(connected, f"session-{agent_id}")


def calls(prefix: str, n: int = 1, target: str = "cloud=aws") -> list[StepSubmission]:
    return [
        StepSubmission(key=f"{prefix}#{i}", spec=spec(target=target), inputs_json="{}")
        for i in range(n)
    ]


async def submit(dispatcher: Dispatcher, run_id: str, subs: Sequence[StepSubmission]) -> Any:
    needs = [(s.spec.target, s.spec.provider) for s in subs]
    return await dispatcher.queue_and_assign(needs, submit_steps, run_id, list(subs))


def assigns(agent: AgentSession) -> list[AssignOut]:
    found = []
    while not agent.outbox.empty():
        item = agent.outbox.get_nowait()
        if isinstance(item, AssignOut):
            found.append(item)
    return found


async def next_assigns(agent: AgentSession) -> list[AssignOut]:
    """The Assign frames sent to ``agent``, waiting for at least one."""
    sent: list[AssignOut] = []

    def got() -> bool:
        sent.extend(assigns(agent))
        return bool(sent)

    await apoll_until(got, message="an assignment")
    return sent


def attempts_of(store: Store, run_id: str) -> dict[str, AttemptRow]:
    """The run's attempts by step run id (one attempt per step here)."""
    rows = store.run_sync(
        lambda s: list(s.scalars(select(AttemptRow).where(AttemptRow.flow_run_id == run_id)))
    )
    return {row.step_run_id: row for row in rows}


@contextlib.asynccontextmanager
async def running(store: Store, registry: AgentRegistry) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(
        store, registry, lambda _runs: None, sweep_interval_s=60.0, agent_lost_after_s=600.0
    )
    store.after_commit(dispatcher.apply)
    dispatcher.start()
    dispatcher.wake()
    await apoll_until(
        lambda: dispatcher.queue_loaded and not dispatcher.in_pass, message="the first pass"
    )
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


async def idle(dispatcher: Dispatcher) -> None:
    await asyncio.sleep(0)
    await apoll_until(lambda: not dispatcher.in_pass, message="the pass to end")


def test_a_free_slot_is_assigned_in_the_submitting_transaction(store: Store) -> None:
    asyncio.run(a_free_slot_is_assigned_in_the_submitting_transaction(store))


async def a_free_slot_is_assigned_in_the_submitting_transaction(store: Store) -> None:
    registry = AgentRegistry()
    a1 = session(AWS, capacity=2)
    registry.add(a1)
    run_id = new_run(store)
    async with running(store, registry) as dispatcher:
        commits, passes = store.stats.commits, store.stats.by_use_case["scheduling_pass"]
        (submitted,) = await submit(dispatcher, run_id, calls("now"))
        # One commit queued and assigned it; no pass was needed.
        assert store.stats.commits == commits + 1
        assert store.stats.by_use_case["queue_and_assign"] == 1
        (sent,) = assigns(a1)
        assert sent.step_run_id == submitted.step_run_id
        assert (a1.in_use, registry.reserved("a1")) == (1, 0)
        await idle(dispatcher)
        assert store.stats.by_use_case["scheduling_pass"] == passes
    attempt = attempts_of(store, run_id)[submitted.step_run_id]
    assert attempt.state == AttemptState.ASSIGNED and attempt.agent_id == "a1"
    events = store.run_sync(
        lambda s: list(
            s.execute(
                select(EventRow.kind, EventRow.created_at)
                .where(EventRow.attempt_id == attempt.id)
                .order_by(EventRow.id)
            )
        )
    )
    assert [kind for kind, _ in events] == ["attempt.queued", "attempt.assigned"]
    assert len({at for _, at in events}) == 1  # one transaction's clock


def test_without_a_free_slot_it_stays_queued_and_the_pass_assigns_it(store: Store) -> None:
    asyncio.run(without_a_free_slot_it_stays_queued_and_the_pass_assigns_it(store))


async def without_a_free_slot_it_stays_queued_and_the_pass_assigns_it(store: Store) -> None:
    registry = AgentRegistry()
    a1 = session(AWS, capacity=1, in_use=1)
    registry.add(a1)
    run_id = new_run(store)
    async with running(store, registry) as dispatcher:
        (submitted,) = await submit(dispatcher, run_id, calls("later"))
        assert store.stats.by_use_case["queue_and_assign"] == 0
        assert attempts_of(store, run_id)[submitted.step_run_id].state == AttemptState.QUEUED
        assert assigns(a1) == []
        freed = Effects()
        freed.release("a1")  # the agent's running step ended
        dispatcher.apply(freed)
        sent = await next_assigns(a1)
        assert [a.step_run_id for a in sent] == [submitted.step_run_id]
        assert store.stats.by_use_case["scheduling_pass"] >= 1
    assert attempts_of(store, run_id)[submitted.step_run_id].state == AttemptState.ASSIGNED


def blocking(gate: threading.Event, entered: threading.Event, fail: bool) -> Any:
    """``submit_steps`` that waits for ``gate`` inside its transaction, then maybe raises."""

    def usecase(tx: Tx, run_id: str, subs: list[StepSubmission]) -> Any:
        result = submit_steps(tx, run_id, subs)
        entered.set()
        gate.wait(30)
        if fail:
            raise RuntimeError("the use case failed")
        return result

    return usecase


def test_a_failing_transaction_releases_its_reservation(store: Store) -> None:
    asyncio.run(a_failing_transaction_releases_its_reservation(store))


async def a_failing_transaction_releases_its_reservation(store: Store) -> None:
    registry = AgentRegistry()
    a1 = session(AWS, capacity=1)
    registry.add(a1)
    run_id = new_run(store)
    gate, entered = threading.Event(), threading.Event()
    async with running(store, registry) as dispatcher:
        subs = calls("fails")
        needs = [("cloud=aws", "process")]
        usecase = blocking(gate, entered, fail=True)
        task = asyncio.ensure_future(dispatcher.queue_and_assign(needs, usecase, run_id, subs))
        await apoll_until(entered.is_set, message="the use case to run")
        # While it runs, every planner sees the slot as taken.
        (slot,) = registry.slots()
        assert (registry.reserved("a1"), slot.in_use) == (1, 1)
        gate.set()
        with pytest.raises(RuntimeError, match="the use case failed"):
            await task
        (slot,) = registry.slots()
        assert (registry.reserved("a1"), slot.in_use, a1.in_use) == (0, 0, 0)
        assert assigns(a1) == []
        # The slot is free again: the next submission gets it in its own transaction.
        await submit(dispatcher, run_id, calls("next"))
        assert len(assigns(a1)) == 1 and a1.in_use == 1


def test_a_cancelled_caller_still_delivers_and_releases(store: Store) -> None:
    asyncio.run(a_cancelled_caller_still_delivers_and_releases(store))


async def a_cancelled_caller_still_delivers_and_releases(store: Store) -> None:
    registry = AgentRegistry()
    a1 = session(AWS, capacity=1)
    registry.add(a1)
    run_id = new_run(store)
    gate, entered = threading.Event(), threading.Event()
    async with running(store, registry) as dispatcher:
        usecase = blocking(gate, entered, fail=False)
        needs = [("cloud=aws", "process")]
        task = asyncio.ensure_future(
            dispatcher.queue_and_assign(needs, usecase, run_id, calls("gone"))
        )
        await apoll_until(entered.is_set, message="the use case to run")
        task.cancel()  # the client went away while its transaction commits
        gate.set()
        await apoll_until(
            lambda: a1.in_use == 1 and registry.reserved("a1") == 0, message="the effects"
        )
        assert len(assigns(a1)) == 1
    (attempt,) = attempts_of(store, run_id).values()
    assert attempt.state == AttemptState.ASSIGNED


def test_attempts_already_waiting_are_not_overtaken(store: Store) -> None:
    asyncio.run(attempts_already_waiting_are_not_overtaken(store))


async def attempts_already_waiting_are_not_overtaken(store: Store) -> None:
    registry = AgentRegistry()
    a1 = session(AWS, capacity=1, in_use=1)
    g1 = session(GCP, capacity=1, in_use=1)
    registry.add(a1)
    registry.add(g1)
    run_id = new_run(store)
    async with running(store, registry) as dispatcher:
        (old,) = await submit(dispatcher, run_id, calls("old"))
        (old_gcp,) = await submit(dispatcher, run_id, calls("old-gcp", target="cloud=gcp"))
        waiting = attempts_of(store, run_id)
        await apoll_until(
            lambda: all(a.id in dispatcher.ready for a in waiting.values()),
            message="the queue to know the waiting attempts",
        )
        await idle(dispatcher)
        a1.in_use = 0  # a slot frees without waking the dispatcher (yet)
        (new,) = await submit(dispatcher, run_id, calls("new"))
        # The old attempt could use a1's slot: the new one does not take it.
        assert store.stats.by_use_case["queue_and_assign"] == 0
        assert assigns(a1) == []
        dispatcher.wake()
        sent = await next_assigns(a1)
        assert [a.step_run_id for a in sent] == [old.step_run_id]
        # The new one is next, through the pass too.
        freed = Effects()
        freed.release("a1")
        dispatcher.apply(freed)
        sent = await next_assigns(a1)
        assert [a.step_run_id for a in sent] == [new.step_run_id]
        await idle(dispatcher)
        # Work waiting for other agents does not hold back a submission a free slot fits.
        a1.in_use = 0
        (other,) = await submit(dispatcher, run_id, calls("other"))
        assert store.stats.by_use_case["queue_and_assign"] == 1
        assert [a.step_run_id for a in assigns(a1)] == [other.step_run_id]
    states = {step: a.state for step, a in attempts_of(store, run_id).items()}
    assert states[old_gcp.step_run_id] == AttemptState.QUEUED


class SimulatedAgent:
    """Runs what it is assigned: RUNNING then SUCCEEDED after a short random time, reported
    through ``apply_reports`` like the agent service does (one report batch at a time)."""

    def __init__(self, store: Store, agent: AgentSession, rng: random.Random) -> None:
        self.store, self.agent, self.rng = store, agent, rng
        self.seq = 0
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.overfilled = False

    async def serve(self) -> None:
        while True:
            item = await self.agent.outbox.get()
            if isinstance(item, AssignOut):
                self.overfilled |= self.agent.in_use > self.agent.agent.capacity
                task = asyncio.create_task(self._run(item))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _run(self, assign: AssignOut) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.01))
        async with self.lock:
            now = self.store.clock()
            self.seq += 2
            reports = [
                ReportIn(self.seq - 1, assign.attempt_id, assign.fencing_token, now,
                         ReportKind.RUNNING),
                ReportIn(self.seq, assign.attempt_id, assign.fencing_token, now,
                         ReportKind.FINISHED, outcome=AttemptState.SUCCEEDED,
                         result_json="1"),
            ]  # fmt: skip
            await self.store.transact(apply_reports, self.agent.agent.agent_id, reports)


def most_held(store: Store, run_id: str) -> dict[str, int]:
    """Replays the run's events in commit order: the most attempts each agent held at once
    (assigned and not yet ended)."""
    rows = store.run_sync(
        lambda s: list(
            s.execute(
                select(EventRow.kind, EventRow.attempt_id, EventRow.to_state, EventRow.details)
                .where(EventRow.flow_run_id == run_id, EventRow.attempt_id.is_not(None))
                .order_by(EventRow.id)
            )
        )
    )
    terminal = {str(state) for state in TERMINAL_ATTEMPT}
    holder: dict[str, str] = {}
    held: dict[str, int] = {}
    most: dict[str, int] = {}
    for kind, attempt_id, to_state, details in rows:
        if kind == "attempt.assigned":
            agent_id = holder[attempt_id] = details["agent_id"]
            held[agent_id] = held.get(agent_id, 0) + 1
            most[agent_id] = max(most.get(agent_id, 0), held[agent_id])
        elif to_state in terminal and attempt_id in holder:
            held[holder.pop(attempt_id)] -= 1
    return most


def test_concurrent_submissions_never_overfill_an_agent(store: Store) -> None:
    asyncio.run(concurrent_submissions_never_overfill_an_agent(store))


async def concurrent_submissions_never_overfill_an_agent(store: Store) -> None:
    rng = random.Random(10)
    registry = AgentRegistry()
    capacity = {"a1": 1, "g1": 2}
    sessions = [session(AWS, capacity["a1"]), session(GCP, capacity["g1"])]
    for s in sessions:
        registry.add(s)
    agents = [SimulatedAgent(store, s, rng) for s in sessions]
    run_id = new_run(store)
    total = 0
    async with running(store, registry) as dispatcher:
        servers = [asyncio.create_task(agent.serve()) for agent in agents]
        try:
            batches = []
            for i in range(30):
                n = rng.randint(1, 3)
                total += n
                target = rng.choice(["", "cloud=aws", "cloud=gcp"])
                batches.append(calls(f"b{i}", n, target=target))

            async def one(subs: list[StepSubmission]) -> None:
                await asyncio.sleep(rng.uniform(0, 0.05))
                await submit(dispatcher, run_id, subs)

            await asyncio.gather(*(one(b) for b in batches))

            def finished() -> bool:
                rows = attempts_of(store, run_id).values()
                return len(rows) == total and all(r.state in TERMINAL_ATTEMPT for r in rows)

            await apoll_until(finished, message="every attempt to finish")
        finally:
            for server in servers:
                server.cancel()
            for agent in agents:
                await asyncio.gather(*agent.tasks, return_exceptions=True)
    states = {a.state for a in attempts_of(store, run_id).values()}
    assert states == {AttemptState.SUCCEEDED}
    most = most_held(store, run_id)
    assert all(most[agent_id] <= capacity[agent_id] for agent_id in most), most
    assert not any(agent.overfilled for agent in agents)
    # Both paths ran: submissions assigned in their own transaction, and passes.
    assert store.stats.by_use_case["queue_and_assign"] >= 1
    assert store.stats.by_use_case["scheduling_pass"] >= 1
