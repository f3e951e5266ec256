"""The transaction context (``store/tx.py``) and ``Store.transact``, on a real store (SQLite,
and PostgreSQL when configured).

A state move writes its event in the same transaction, named by ``EventKind`` (never built
from strings); effects gather in ``tx.effects``; ``Store.transact`` applies them only after the
commit, and never for a transaction that rolled back.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from control_plane.orchestration.machines import IllegalTransition
from control_plane.orchestration.values import Effects
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow, FlowRunRow, StepRunRow
from control_plane.store.tx import (
    CLI_ACTOR,
    MAX_EVENT_MESSAGE,
    Tx,
    acting_as,
    move_attempt,
    move_run,
    move_step,
    record_event,
)
from meridian.core.kinds import EventKind
from meridian.core.states import AttemptState, RunState, StepState
from tests.control_plane.usecases.helpers import (
    T0,
    attempts,
    new_run,
    run_at,
    schedule,
    submit,
)

T1 = T0 + dt.timedelta(seconds=7)


def events(store: Store, run_id: str) -> list[EventRow]:
    """The run's events, oldest first."""
    return store.run_sync(
        lambda s: list(
            s.scalars(select(EventRow).where(EventRow.flow_run_id == run_id).order_by(EventRow.id))
        )
    )


def run_row(store: Store, run_id: str) -> FlowRunRow:
    run = store.run_sync(lambda s: s.get(FlowRunRow, run_id))
    assert run is not None
    return run


def assigned_step(store: Store) -> tuple[str, str, str]:
    """A run with one step whose first attempt is ASSIGNED: (run, step, attempt) ids."""
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    (attempt,) = attempts(store, step_id)
    assert attempt.state == AttemptState.ASSIGNED
    return run_id, step_id, attempt.id


# ---- move_* and record_event --------------------------------------------------------------


def test_an_attempt_that_times_out_writes_attempt_timed_out(store: Store) -> None:
    run_id, step_id, attempt_id = assigned_step(store)
    before = len(events(store, run_id))

    def start_then_time_out(tx: Tx) -> None:
        attempt = tx.session.get(AttemptRow, attempt_id)
        step = tx.session.get(StepRunRow, step_id)
        assert attempt is not None and step is not None
        move_attempt(tx, attempt, step, AttemptState.RUNNING, "started")
        move_attempt(tx, attempt, step, AttemptState.TIMED_OUT, "ran past 5s", {"limit_s": 5})

    _, effects = run_at(store, T1, start_then_time_out)
    running, timed_out = events(store, run_id)[before:]
    assert running.kind == EventKind.ATTEMPT_RUNNING == "attempt.running"
    assert timed_out.kind == EventKind.ATTEMPT_TIMED_OUT == "attempt.timed_out"
    assert (timed_out.from_state, timed_out.to_state) == ("RUNNING", "TIMED_OUT")
    assert (timed_out.attempt_id, timed_out.step_run_id, timed_out.step_key) == (
        attempt_id,
        step_id,
        "extract#1",
    )
    assert timed_out.message == "ran past 5s" and timed_out.details == {"limit_s": 5}
    assert timed_out.created_at == T1  # the transaction's time, not the wall clock
    assert effects.touched_runs == {run_id}
    assert attempts(store, step_id)[0].state == AttemptState.TIMED_OUT


def test_every_state_move_is_named_by_its_event_kind(store: Store) -> None:
    """Run, step and attempt share state names (RUNNING): the kind says which one moved."""
    run_id, step_id, attempt_id = assigned_step(store)
    before = len(events(store, run_id))

    def move_all(tx: Tx) -> None:
        run = tx.session.get(FlowRunRow, run_id)
        step = tx.session.get(StepRunRow, step_id)
        attempt = tx.session.get(AttemptRow, attempt_id)
        assert run is not None and step is not None and attempt is not None
        move_attempt(tx, attempt, step, AttemptState.RUNNING)
        move_step(tx, step, StepState.RUNNING)
        move_step(tx, step, StepState.PENDING, "retry", {"delay_s": 1.0})
        move_run(tx, run, RunState.CANCELLING, "stop")

    run_at(store, T1, move_all)
    moved = [(e.kind, e.from_state, e.to_state) for e in events(store, run_id)[before:]]
    assert moved == [
        ("attempt.running", "ASSIGNED", "RUNNING"),
        ("step.running", "PENDING", "RUNNING"),
        ("step.pending", "RUNNING", "PENDING"),
        ("run.cancelling", "RUNNING", "CANCELLING"),
    ]
    assert all(kind in set(EventKind) for kind, _, _ in moved)
    assert run_row(store, run_id).state == RunState.CANCELLING


def test_effects_collect_every_run_a_transaction_touched(store: Store) -> None:
    first, second = new_run(store), new_run(store)

    def pause_both(tx: Tx) -> None:
        for run_id in (first, second):
            run = tx.session.get(FlowRunRow, run_id)
            assert run is not None
            move_run(tx, run, RunState.PAUSED)

    _, effects = run_at(store, T1, pause_both)
    assert effects.touched_runs == {first, second}


def test_record_event_bounds_the_message_and_names_an_approval_by_its_key(store: Store) -> None:
    run_id = new_run(store)

    def record(tx: Tx) -> None:
        record_event(
            tx,
            kind=EventKind.APPROVAL_REQUESTED,
            flow_run_id=run_id,
            key="deploy#1",
            message="x" * (MAX_EVENT_MESSAGE + 10),
        )

    run_at(store, T1, record)
    last = events(store, run_id)[-1]
    assert last.kind == "approval.requested" and last.step_key == "deploy#1"
    assert last.step_run_id is None and len(last.message) == MAX_EVENT_MESSAGE


def test_an_illegal_move_raises_and_writes_nothing(store: Store) -> None:
    run_id = new_run(store)
    before = len(events(store, run_id))

    def complete_then_pause(tx: Tx) -> None:
        run = tx.session.get(FlowRunRow, run_id)
        assert run is not None
        move_run(tx, run, RunState.COMPLETED)
        move_run(tx, run, RunState.PAUSED)  # COMPLETED is final

    with pytest.raises(IllegalTransition, match="cannot move from COMPLETED to PAUSED"):
        store.transact_sync(complete_then_pause)
    assert run_row(store, run_id).state == RunState.RUNNING
    assert len(events(store, run_id)) == before


# ---- Store.transact_sync / Store.transact --------------------------------------------------


def test_transact_sync_commits_with_the_store_clock_and_applies_no_effects(store: Store) -> None:
    """A synchronous caller (an offline admin command) has nobody to send effects to."""
    run_id = new_run(store)
    applied: list[Effects] = []
    store.after_commit(applied.append)
    store.clock = lambda: T1

    def pause(tx: Tx) -> tuple[dt.datetime, str]:
        run = tx.session.get(FlowRunRow, run_id)
        assert run is not None
        move_run(tx, run, RunState.PAUSED)
        return tx.now, tx.actor

    assert store.transact_sync(pause) == (T1, CLI_ACTOR)
    assert run_row(store, run_id).state == RunState.PAUSED
    assert events(store, run_id)[-1].created_at == T1
    assert applied == []


def test_transact_applies_effects_only_after_the_commit(store: Store) -> None:
    run_id = new_run(store)
    seen: list[tuple[set[str], RunState]] = []

    def after_commit(effects: Effects) -> None:
        # What the dispatcher would send must already be durable: read it from another
        # session, which sees only committed data.
        with store.session() as other:
            run = other.get(FlowRunRow, run_id)
            assert run is not None
            seen.append((set(effects.touched_runs), run.state))

    store.after_commit(after_commit)

    def pause(tx: Tx) -> str:
        run = tx.session.get(FlowRunRow, run_id)
        assert run is not None
        move_run(tx, run, RunState.PAUSED)
        assert seen == []  # nothing is applied while the transaction is open
        return run.id

    assert asyncio.run(store.transact(pause)) == run_id
    assert seen == [({run_id}, RunState.PAUSED)]


def test_transact_applies_nothing_when_the_use_case_raises(store: Store) -> None:
    run_id = new_run(store)
    before = len(events(store, run_id))
    applied: list[Effects] = []
    store.after_commit(applied.append)

    def pause_then_fail(tx: Tx) -> None:
        run = tx.session.get(FlowRunRow, run_id)
        assert run is not None
        move_run(tx, run, RunState.PAUSED)
        tx.effects.wake_scheduler = True
        raise RuntimeError("the commit never happens")

    with pytest.raises(RuntimeError, match="never happens"):
        asyncio.run(store.transact(pause_then_fail))
    assert applied == []
    assert run_row(store, run_id).state == RunState.RUNNING  # rolled back...
    assert len(events(store, run_id)) == before  # ...with its event


def test_transact_runs_as_the_callers_actor(store: Store) -> None:
    """The API edge names the caller once per request; the worker thread sees it."""

    async def as_operator() -> str:
        acting_as("token:op1")
        return await store.transact(lambda tx: tx.actor)

    assert asyncio.run(as_operator()) == "token:op1"
    assert asyncio.run(store.transact(lambda tx: tx.actor)) == CLI_ACTOR
