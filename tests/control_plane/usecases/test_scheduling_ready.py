"""A scheduling pass over the dispatcher's in-memory ready queue (``orchestration/ready.py``):
it reads from the store only what it assigns and explains, however many attempts are queued;
a queue rebuilt from the store (a restart) assigns everything still queued; entries that went
stale (cancelled meanwhile) give their slot to the next attempt.

Rows are counted with an ORM ``load`` listener on ``AttemptRow`` (no timing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, select

from control_plane.orchestration.ready import ReadyQueue
from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow
from control_plane.usecases.runs import cancel_run
from control_plane.usecases.scheduling import load_ready, scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import SLOTS, T0, apply, new_run, report, run_at, spec

TRANSIENT = {
    "error_class": "transient",
    "type": "builtins.ValueError",
    "message": "boom",
    "traceback": "",
}
ONE_FREE_SLOT = [dataclasses.replace(SLOTS[0], in_use=1), dataclasses.replace(SLOTS[1], in_use=2)]


@contextmanager
def counted_attempt_loads() -> Iterator[list[str]]:
    loaded: list[str] = []

    def on_load(target: AttemptRow, _context: object) -> None:
        loaded.append(target.id)

    event.listen(AttemptRow, "load", on_load)
    try:
        yield loaded
    finally:
        event.remove(AttemptRow, "load", on_load)


def fan_out(store: Store, run_id: str, n: int, target: str = "cloud=aws") -> None:
    subs = [
        StepSubmission(key=f"map#{i}", spec=spec(target=target), inputs_json="{}") for i in range(n)
    ]
    run_at(store, T0, submit_steps, run_id, subs)


def states(store: Store, run_id: str) -> dict[AttemptState, int]:
    rows = store.run_sync(
        lambda s: list(s.scalars(select(AttemptRow.state).where(AttemptRow.flow_run_id == run_id)))
    )
    return {state: rows.count(state) for state in set(rows)}


def test_a_pass_over_ten_thousand_queued_attempts_reads_only_what_it_assigns(
    store: Store,
) -> None:
    run_id = new_run(store)
    fan_out(store, run_id, 10_000)
    ready = ReadyQueue(run_at(store, T0, load_ready)[0])  # the dispatcher's rebuild
    assert len(ready) == 10_000
    with counted_attempt_loads() as loaded:
        run_at(store, T0, scheduling_pass, ONE_FREE_SLOT, ready=ready)
    # One assigned, plus the oldest of the one group whose waiting reason it recorded.
    assert len(loaded) <= 2, len(loaded)
    assert states(store, run_id) == {AttemptState.ASSIGNED: 1, AttemptState.QUEUED: 9_999}
    assert len(ready) == 9_999
    with counted_attempt_loads() as loaded:
        run_at(store, T0, scheduling_pass, ONE_FREE_SLOT, ready=ready)
    assert len(loaded) == 1  # the reason is known now: only the assigned attempt
    assert states(store, run_id)[AttemptState.ASSIGNED] == 2


def test_a_rebuilt_queue_assigns_everything_still_queued(store: Store) -> None:
    run_id = new_run(store)
    fan_out(store, run_id, 30)
    first = ReadyQueue(run_at(store, T0, load_ready)[0])
    run_at(store, T0, scheduling_pass, SLOTS, ready=first)
    assert states(store, run_id) == {AttemptState.ASSIGNED: 2, AttemptState.QUEUED: 28}
    # A restarted control plane: a fresh queue from the store, and plenty of room.
    rebuilt = ReadyQueue(run_at(store, T0, load_ready)[0])
    assert len(rebuilt) == 28
    roomy = [dataclasses.replace(SLOTS[0], capacity=100)]
    run_at(store, T0, scheduling_pass, roomy, ready=rebuilt)
    assert states(store, run_id) == {AttemptState.ASSIGNED: 30}
    assert len(rebuilt) == 0


def test_stale_entries_leave_the_queue_and_their_slot_goes_to_the_next(store: Store) -> None:
    cancelled_run, live_run = new_run(store), new_run(store)
    fan_out(store, cancelled_run, 5)
    fan_out(store, live_run, 3)
    ready = ReadyQueue(run_at(store, T0, load_ready)[0])
    # Cancelled after the queue read them: their entries are stale (older than the live ones).
    run_at(store, T0, cancel_run, cancelled_run, "not needed")
    assert len(ready) == 8
    run_at(store, T0, scheduling_pass, SLOTS, ready=ready)
    assert states(store, live_run) == {AttemptState.ASSIGNED: 2, AttemptState.QUEUED: 1}
    assert AttemptState.ASSIGNED not in states(store, cancelled_run)
    assert len(ready) == 1


def test_the_queue_knows_the_next_retry_and_deadline(store: Store) -> None:
    run_id = new_run(store)
    fan_out(store, run_id, 3, target="cloud=nowhere")
    ready = ReadyQueue(run_at(store, T0, load_ready)[0])
    next_timer, _ = run_at(store, T0, scheduling_pass, SLOTS, ready=ready)
    entry = next(ready.due(T0))
    assert next_timer == entry.deadline  # the schedule deadline of the unschedulable steps
    assert entry.deadline is not None
    # At the deadline they fail, and leave the queue.
    run_at(store, entry.deadline, scheduling_pass, SLOTS, ready=ready)
    assert states(store, run_id) == {AttemptState.FAILED: 3}
    assert len(ready) == 0


def test_every_way_of_queueing_an_attempt_announces_it_to_the_ready_queue(store: Store) -> None:
    run_id = new_run(store)
    subs = [
        StepSubmission(key=f"map#{i}", spec=spec(target="cloud=aws"), inputs_json="{}")
        for i in range(3)
    ]
    _, effects = run_at(store, T0, submit_steps, run_id, subs)  # stored in bulk
    assert [e.target for e in effects.queued] == ["cloud=aws"] * 3
    assert effects.wake_scheduler
    run_at(store, T0, scheduling_pass, SLOTS)
    attempt = store.run_sync(
        lambda s: s.scalars(
            select(AttemptRow).where(
                AttemptRow.flow_run_id == run_id, AttemptRow.state == AttemptState.ASSIGNED
            )
        ).first()
    )
    assert attempt is not None
    failed = report(attempt, 1, "finished", outcome="FAILED", error=TRANSIENT)
    _, _, effects = apply(store, "a1", [failed])
    (retry,) = effects.queued  # the retry, queued after its delay
    assert retry.step_run_id == attempt.step_run_id and retry.not_before > T0
