"""Caching across runs against a real store (SQLite, and PostgreSQL when configured): a call
whose cache key an earlier run completed is stored CACHED with that result and never runs; a
miss runs and records its key; failures, expired results and other scopes are never reused."""

from __future__ import annotations

import datetime as dt
import itertools
import json

from sqlalchemy import select

from control_plane.orchestration.values import StepSubmission, SubmittedStep
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow, StepRunRow
from control_plane.store.queries import events_after
from control_plane.usecases.runs import create_run
from control_plane.usecases.steps import submit_steps
from meridian.core.spec import StepSpec
from tests.control_plane.usecases.helpers import (
    T0,
    apply,
    attempts,
    holder,
    new_run,
    report,
    run_at,
    schedule,
    spec,
)

KEY_A = "ck1-" + "a" * 64
KEY_B = "ck1-" + "b" * 64
KEY_C = "ck1-" + "c" * 64
HOUR = dt.timedelta(hours=1)
_SEQ = itertools.count(1)  # agents' report numbers only ever grow
PERMANENT = {
    "error_class": "permanent",
    "type": "builtins.ValueError",
    "message": "boom",
    "traceback": "tb",
    "type_mro": ["builtins.ValueError", "builtins.Exception"],
}


def call(
    key: str, cache_key: str, arg: int = 1, expires_s: float = 0.0, shared: StepSpec | None = None
) -> StepSubmission:
    return StepSubmission(
        key=key,
        spec=shared or spec(retries=0),
        inputs_json=json.dumps({"args": [arg], "kwargs": {}}),
        cache_key=cache_key,
        cache_expires_after_s=expires_s,
    )


def submit_one(store: Store, run_id: str, sub: StepSubmission, now: dt.datetime) -> SubmittedStep:
    answers, _ = run_at(store, now, submit_steps, run_id, [sub])
    return answers[0]


def run_step(
    store: Store,
    run_id: str,
    sub: StepSubmission,
    now: dt.datetime,
    *,
    result: str = "1",
    error: dict[str, object] | None = None,
) -> str:
    """Submit ``sub`` (a miss), run its attempt on an agent and report how it ended."""
    answer = submit_one(store, run_id, sub, now)
    assert answer.state == "PENDING", "expected a cache miss"
    schedule(store, now)
    attempt = attempts(store, answer.step_run_id)[0]
    outcome = {"outcome": "FAILED", "error": error} if error else {"outcome": "SUCCEEDED"}
    running = report(attempt, next(_SEQ), "running", at=now)
    finished = report(attempt, next(_SEQ), "finished", at=now, result_json=result, **outcome)
    apply(store, holder(attempt), [running, finished], now)
    return answer.step_run_id


def step_row(store: Store, step_id: str) -> StepRunRow:
    row = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert row is not None
    return row


def scoped_run(store: Store, scope: tuple[str, ...]) -> str:
    run, _ = run_at(
        store,
        T0,
        create_run,
        flow_name="etl",
        entrypoint="flows.py:etl",
        parameters_json="{}",
        bundle_sha256="b" * 64,
        trigger="manual",
        scope=scope,
    )
    return run.id


def test_a_completed_result_is_reused_by_a_later_run(store: Store) -> None:
    first = new_run(store)
    source = run_step(store, first, call("extract#1", KEY_A), T0, result='{"rows": 3}')
    assert step_row(store, source).cache_key == KEY_A  # a miss records its key

    second = new_run(store)
    answers, effects = run_at(store, T0 + HOUR, submit_steps, second, [call("extract#1", KEY_A)])
    answer = answers[0]
    assert (answer.state, answer.existing, answer.result_json) == ("CACHED", False, '{"rows": 3}')
    step = step_row(store, answer.step_run_id)
    assert step.state == "CACHED" and step.result_json == '{"rows": 3}'
    assert step.ended_at == T0 + HOUR and step.flow_run_id == second
    assert (step.cached_from_run_id, step.cached_from_step_key) == (first, "extract#1")
    assert attempts(store, step.id) == []  # nothing runs
    assert effects.queued == [] and not effects.wake_scheduler
    assert effects.touched_runs == {second}

    events = store.run_sync(
        lambda s: list(s.scalars(select(EventRow).where(EventRow.step_run_id == step.id)))
    )
    assert [(e.kind, e.to_state) for e in events] == [("step.cached", "CACHED")]
    assert events[0].message == f"reused from run {first} (step 'extract#1')"
    assert events[0].details is not None
    assert events[0].details["source_flow_run_id"] == first
    assert events[0].details["source_step_run_id"] == source
    assert events[0].details["source_step_key"] == "extract#1"
    # The watch stream carries the outcome with the event, as for a step that ran.
    _, views = store.run_sync(lambda s: events_after(s, second, 0))
    cached = [v for v in views if v.event.kind == "step.cached"]
    assert cached[0].step is not None and cached[0].step.result_json == '{"rows": 3}'


def test_a_different_key_misses_and_runs(store: Store) -> None:
    run_step(store, new_run(store), call("extract#1", KEY_A), T0)
    second = new_run(store)
    answer = submit_one(store, second, call("extract#1", KEY_B, arg=2), T0 + HOUR)
    assert answer.state == "PENDING"
    assert [a.state for a in attempts(store, answer.step_run_id)] == ["QUEUED"]
    assert step_row(store, answer.step_run_id).cache_key == KEY_B


def test_a_call_without_a_key_never_reuses(store: Store) -> None:
    run_step(store, new_run(store), call("extract#1", KEY_A), T0)
    answer = submit_one(store, new_run(store), call("extract#1", ""), T0 + HOUR)
    assert answer.state == "PENDING"
    assert step_row(store, answer.step_run_id).cache_key is None


def test_an_expired_result_is_not_reused(store: Store) -> None:
    run_step(store, new_run(store), call("extract#1", KEY_A), T0)
    fresh = submit_one(store, new_run(store), call("x#1", KEY_A, expires_s=7200), T0 + HOUR)
    assert fresh.state == "CACHED"
    stale = submit_one(store, new_run(store), call("x#1", KEY_A, expires_s=1800), T0 + HOUR)
    assert stale.state == "PENDING"


def test_the_newest_computed_result_is_reused_never_a_reused_one(store: Store) -> None:
    run_step(store, new_run(store), call("x#1", KEY_A), T0, result='"old"')
    # Two hours later with a one-hour expiration: a miss that computes a newer result.
    later = T0 + 2 * HOUR
    run_step(store, new_run(store), call("x#1", KEY_A, expires_s=3600), later, result='"new"')
    hit = submit_one(store, new_run(store), call("x#1", KEY_A), later + HOUR / 2)
    assert (hit.state, hit.result_json) == ("CACHED", '"new"')
    # A reused (CACHED) step run is no source: its age would hide how old the result is.
    again = submit_one(
        store, new_run(store), call("x#1", KEY_A, expires_s=3600), later + 1.25 * HOUR
    )
    assert again.state == "PENDING"


def test_a_failed_step_is_never_reused(store: Store) -> None:
    run_step(store, new_run(store), call("x#1", KEY_A), T0, error=PERMANENT)
    answer = submit_one(store, new_run(store), call("x#1", KEY_A), T0 + HOUR)
    assert answer.state == "PENDING"


def test_a_run_of_another_scope_does_not_reuse(store: Store) -> None:
    run_step(store, new_run(store), call("x#1", KEY_A), T0)  # an unscoped run computed it
    other = submit_one(store, scoped_run(store, ("aws-demo",)), call("x#1", KEY_A), T0 + HOUR)
    assert other.state == "PENDING"
    assert step_row(store, other.step_run_id).cache_scope == "aws-demo"
    same = submit_one(store, new_run(store), call("x#1", KEY_A), T0 + HOUR)
    assert same.state == "CACHED"


def test_a_map_reuses_only_its_cached_items(store: Store) -> None:
    run_step(store, new_run(store), call("load#2", KEY_B, arg=2), T0, result="20")
    second = new_run(store)
    shared = spec(retries=0)  # one spec object, as the calls of a map
    subs = [
        call(f"load#{i}", key, i, shared=shared) for i, key in ((1, KEY_A), (2, KEY_B), (3, KEY_C))
    ]
    answers, effects = run_at(store, T0 + HOUR, submit_steps, second, subs)
    assert [a.state for a in answers] == ["PENDING", "CACHED", "PENDING"]
    assert answers[1].result_json == "20"
    queued = store.run_sync(
        lambda s: list(
            s.scalars(select(AttemptRow.step_run_id).where(AttemptRow.flow_run_id == second))
        )
    )
    assert sorted(queued) == sorted([answers[0].step_run_id, answers[2].step_run_id])
    assert len(effects.queued) == 2 and effects.wake_scheduler


def test_resubmitting_a_reused_key_in_the_same_run_answers_the_stored_step(store: Store) -> None:
    run_step(store, new_run(store), call("x#1", KEY_A), T0, result="7")
    second = new_run(store)
    first_answer = submit_one(store, second, call("x#1", KEY_A), T0 + HOUR)
    again = submit_one(store, second, call("x#1", KEY_A), T0 + 2 * HOUR)
    assert (again.step_run_id, again.existing) == (first_answer.step_run_id, True)
    assert (again.state, again.result_json) == ("CACHED", "7")
