"""Submitting step calls against a real store (SQLite, and PostgreSQL when configured): new
calls are stored in bulk with their attempts and events, known keys answer from the store."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import select

from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow, StepRunRow
from control_plane.usecases.runs import finish_run, resume_run
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import ConflictError
from tests.control_plane.usecases.helpers import T0, new_run, run_at, spec


def calls(keys: list[str], **overrides: object) -> list[StepSubmission]:
    shared = spec(**overrides)  # one spec object for all, as the calls of a map
    return [
        StepSubmission(k, shared, f'{{"args": [{i}], "kwargs": {{}}}}') for i, k in enumerate(keys)
    ]


def rows(store: Store, model: type, run_id: str, order: object) -> list:  # type: ignore[type-arg]
    query = select(model).where(model.flow_run_id == run_id).order_by(order)  # type: ignore[attr-defined]
    return store.run_sync(lambda s: list(s.scalars(query)))


def test_new_calls_are_stored_with_their_first_attempt_and_events(store: Store) -> None:
    run_id = new_run(store)
    subs = calls(["extract#1", "extract#2", "extract#3"], schedule_timeout_s=30.0)
    answers, effects = run_at(store, T0, submit_steps, run_id, subs)
    assert [(a.key, a.state, a.existing) for a in answers] == [
        (k, "PENDING", False) for k in ("extract#1", "extract#2", "extract#3")
    ]
    steps = {s.id: s for s in rows(store, StepRunRow, run_id, StepRunRow.key)}
    assert set(steps) == {a.step_run_id for a in answers}
    step = steps[answers[1].step_run_id]
    assert step.spec == subs[1].spec and step.inputs_json == subs[1].inputs_json
    assert step.state == "PENDING" and step.created_at == T0 and step.error is None
    attempts = rows(store, AttemptRow, run_id, AttemptRow.queued_at)
    assert {a.step_run_id for a in attempts} == set(steps)
    assert all(a.number == 1 and a.state == "QUEUED" and a.provider == "process" for a in attempts)
    assert all(a.schedule_deadline == T0 + dt.timedelta(seconds=30) for a in attempts)
    events = rows(store, EventRow, run_id, EventRow.id)
    kinds = [(e.kind, e.step_key) for e in events if e.step_key]
    # As calls submitted one by one always were: every step.pending, then every attempt.queued.
    assert kinds == [("step.pending", k) for k in ("extract#1", "extract#2", "extract#3")] + [
        ("attempt.queued", k) for k in ("extract#1", "extract#2", "extract#3")
    ]
    queued = [e for e in events if e.kind == "attempt.queued"]
    assert {e.attempt_id for e in queued} == {a.id for a in attempts}
    assert queued[0].message == "attempt 1 queued" and queued[0].to_state == "QUEUED"
    assert events[-4].message == "target 'cloud=aws', provider 'process'"
    assert effects.wake_scheduler and effects.touched_runs == {run_id}
    assert sorted(e.attempt_id for e in effects.queued) == sorted(a.id for a in attempts)


def test_a_retried_request_creates_only_what_is_missing(store: Store) -> None:
    run_id = new_run(store)
    keys = [f"extract#{i}" for i in range(1, 2001)]  # more than one lookup statement's worth
    first, _ = run_at(store, T0, submit_steps, run_id, calls(keys[:1500]))
    again, effects = run_at(store, T0, submit_steps, run_id, calls(keys))
    assert [a.step_run_id for a in again[:1500]] == [a.step_run_id for a in first]
    assert all(a.existing for a in again[:1500]) and not any(a.existing for a in again[1500:])
    assert len(rows(store, StepRunRow, run_id, StepRunRow.key)) == 2000
    assert len(rows(store, AttemptRow, run_id, AttemptRow.id)) == 2000
    assert len(effects.queued) == 500


def test_the_same_key_twice_in_one_call_is_one_step_run(store: Store) -> None:
    run_id = new_run(store)
    sub = calls(["load#1"])[0]
    answers, _ = run_at(store, T0, submit_steps, run_id, [sub, sub])
    assert answers[0].step_run_id == answers[1].step_run_id
    assert [a.existing for a in answers] == [False, True]
    assert len(rows(store, AttemptRow, run_id, AttemptRow.id)) == 1


@pytest.mark.parametrize("stored_first", [True, False])
def test_a_known_key_with_other_inputs_is_refused_and_nothing_is_stored(
    store: Store, stored_first: bool
) -> None:
    run_id = new_run(store)
    sub = calls(["load#1"])[0]
    other = dataclasses.replace(sub, inputs_json='{"args": [99], "kwargs": {}}')
    if stored_first:
        run_at(store, T0, submit_steps, run_id, [sub])
        batch = [*calls(["new#1", "new#2"]), other]
    else:
        batch = [sub, *calls(["new#1"]), other]
    with pytest.raises(ConflictError, match=r"'load#1' was already submitted .* different inputs"):
        run_at(store, T0, submit_steps, run_id, batch)
    stored = [s.key for s in rows(store, StepRunRow, run_id, StepRunRow.key)]
    assert stored == (["load#1"] if stored_first else [])


def test_a_finished_step_answers_with_its_stored_outcome(store: Store) -> None:
    run_id = new_run(store)
    (answer,), _ = run_at(store, T0, submit_steps, run_id, calls(["done#1"]))

    def complete(session: object) -> None:
        step = session.get(StepRunRow, answer.step_run_id)  # type: ignore[attr-defined]
        step.state, step.result_json = "COMPLETED", '{"n": 1}'

    store.run_sync(complete)
    (again,), effects = run_at(store, T0, submit_steps, run_id, calls(["done#1"]))
    assert (again.state, again.existing, again.result_json) == ("COMPLETED", True, '{"n": 1}')
    assert not effects.queued and not effects.wake_scheduler


def test_a_resumed_map_reuses_completed_calls_reruns_failed_ones_and_adds_new_ones(
    store: Store,
) -> None:
    run_id = new_run(store)
    first, _ = run_at(store, T0, submit_steps, run_id, calls(["m#1", "m#2", "m#3"]))

    def end(session: object) -> None:
        for answer, state in zip(first, ("COMPLETED", "FAILED", "PENDING"), strict=True):
            step = session.get(StepRunRow, answer.step_run_id)  # type: ignore[attr-defined]
            step.state, step.ended_at = state, T0 if state != "PENDING" else None
            step.result_json = "4" if state == "COMPLETED" else None

    store.run_sync(end)
    run_at(store, T0, finish_run, run_id, succeeded=False, result_json="", error=None)
    later = T0 + dt.timedelta(seconds=5)
    run_at(store, later, resume_run, run_id)
    answers, _ = run_at(store, later, submit_steps, run_id, calls(["m#1", "m#2", "m#3", "m#4"]))
    assert [(a.state, a.existing) for a in answers] == [
        ("COMPLETED", True), ("PENDING", True), ("PENDING", True), ("PENDING", False)
    ]  # fmt: skip
    assert answers[0].result_json == "4"
    numbers = {
        a.step_run_id: sorted(
            x.number for x in rows(store, AttemptRow, run_id, AttemptRow.number)
            if x.step_run_id == a.step_run_id
        )
        for a in answers
    }  # fmt: skip
    # m#3 was cancelled when the run failed: it runs again too.
    assert list(numbers.values()) == [[1], [1, 2], [1, 2], [1]]
    # Both kinds of events of one transaction were stored: the re-runs' and the new call's.
    events = [(e.kind, e.step_key) for e in rows(store, EventRow, run_id, EventRow.id)]
    assert events[-6:] == [
        ("step.pending", "m#2"), ("attempt.queued", "m#2"),
        ("step.pending", "m#3"), ("attempt.queued", "m#3"),
        ("step.pending", "m#4"), ("attempt.queued", "m#4"),
    ]  # fmt: skip


def test_stored_outcomes_in_an_answer_stay_within_the_byte_budget(store: Store) -> None:
    run_id = new_run(store)
    keys = [f"big#{i}" for i in range(1, 6)]
    first, _ = run_at(store, T0, submit_steps, run_id, calls(keys))
    result = '"' + "x" * 998 + '"'  # 1,000 bytes each

    def complete(session: object) -> None:
        for answer in first:
            step = session.get(StepRunRow, answer.step_run_id)  # type: ignore[attr-defined]
            step.state, step.result_json = "COMPLETED", result

    store.run_sync(complete)
    answers, _ = run_at(store, T0, submit_steps, run_id, calls(keys), outcome_bytes=2_500)
    assert [a.outcome_omitted for a in answers] == [False, False, True, True, True]
    assert [a.result_json for a in answers] == [result, result, "", "", ""]
    # The first outcome always fits, however large; the first `full_answers` calls too.
    tiny, _ = run_at(store, T0, submit_steps, run_id, calls(keys), outcome_bytes=10)
    assert [a.outcome_omitted for a in tiny] == [False, True, True, True, True]
    full, _ = run_at(store, T0, submit_steps, run_id, calls(keys), outcome_bytes=10, full_answers=4)
    assert [a.outcome_omitted for a in full] == [False, False, False, False, True]
    unbounded, _ = run_at(store, T0, submit_steps, run_id, calls(keys))
    assert all(a.result_json == result and not a.outcome_omitted for a in unbounded)
