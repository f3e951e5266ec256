"""``queue_and_assign``: a submission assigns its own attempts in the transaction that queues
them, within the slots reserved for it; what does not fit stays queued (in the effects' ready
entries) for the scheduling pass."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow
from control_plane.usecases.scheduling import queue_and_assign, scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import SLOTS, T0, new_run, run_at, spec

# One slot of a1 (cloud=aws) held for the transaction: room 1, as the registry hands it out.
ONE_AWS = [dataclasses.replace(SLOTS[0], capacity=1, in_use=0)]


def calls(n: int, target: str = "cloud=aws") -> list[StepSubmission]:
    return [
        StepSubmission(key=f"s#{i}", spec=spec(target=target), inputs_json="{}") for i in range(n)
    ]


def attempt_rows(store: Store, run_id: str) -> list[AttemptRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow)
                .where(AttemptRow.flow_run_id == run_id)
                .order_by(AttemptRow.queued_at, AttemptRow.id)
            )
        )
    )


def test_the_submission_is_assigned_in_its_own_transaction(store: Store) -> None:
    run_id = new_run(store)
    submitted, effects = run_at(
        store, T0, queue_and_assign, ONE_AWS, submit_steps, run_id, calls(1)
    )

    (attempt,) = attempt_rows(store, run_id)
    assert attempt.state == AttemptState.ASSIGNED and attempt.agent_id == "a1"
    assert [a.attempt_id for a in effects.assigns] == [attempt.id]
    assert effects.queued == []  # the ready queue never hears of it
    assert submitted[0].step_run_id == attempt.step_run_id
    kinds = store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow.kind).where(EventRow.attempt_id == attempt.id).order_by(EventRow.id)
            )
        )
    )
    assert kinds == ["attempt.queued", "attempt.assigned"]


def test_only_the_reserved_room_is_used_and_the_rest_stays_queued(store: Store) -> None:
    run_id = new_run(store)
    _, effects = run_at(store, T0, queue_and_assign, ONE_AWS, submit_steps, run_id, calls(3))

    rows = attempt_rows(store, run_id)
    assert [r.state for r in rows].count(AttemptState.ASSIGNED) == 1
    assert len(effects.assigns) == 1
    queued = {r.id for r in rows if r.state == AttemptState.QUEUED}
    assert {e.attempt_id for e in effects.queued} == queued and len(queued) == 2
    # The pass assigns the rest into the agent's other slot (a1 has two; one is now taken).
    taken = [dataclasses.replace(SLOTS[0], in_use=1), SLOTS[1]]
    _, later = run_at(store, T0, scheduling_pass, taken)
    assert len(later.assigns) == 1 and later.assigns[0].attempt_id in queued


def test_a_reserved_slot_that_cannot_run_the_step_assigns_nothing(store: Store) -> None:
    run_id = new_run(store)
    _, effects = run_at(
        store, T0, queue_and_assign, ONE_AWS, submit_steps, run_id, calls(2, "cloud=gcp")
    )
    assert effects.assigns == [] and len(effects.queued) == 2
    assert {r.state for r in attempt_rows(store, run_id)} == {AttemptState.QUEUED}


def test_without_reserved_slots_it_is_the_plain_submission(store: Store) -> None:
    run_id = new_run(store)
    _, effects = run_at(store, T0, queue_and_assign, [], submit_steps, run_id, calls(2))
    assert effects.assigns == [] and len(effects.queued) == 2


def test_a_failing_use_case_assigns_nothing(store: Store) -> None:
    run_id = new_run(store)

    def submit_then_fail(tx: object, *args: object) -> None:
        submit_steps(tx, *args)  # type: ignore[arg-type]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_at(store, T0, queue_and_assign, ONE_AWS, submit_then_fail, run_id, calls(1))
    assert attempt_rows(store, run_id) == []
