"""Orchestration engine against a real store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from control_plane.orchestration import engine
from control_plane.orchestration.agents import HelloIn, agent_connected, declare_agent_lost
from control_plane.orchestration.values import Effects, ReportIn, StepSubmission
from control_plane.scheduler.assign import scheduling_pass
from control_plane.scheduler.matching import AgentSlot
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AttemptRow, BundleRow, EventRow, StepRunRow
from meridian.errors import ConflictError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def spec(**overrides: object) -> dict:
    base = {
        "name": "extract",
        "module": "flows",
        "function": "extract",
        "target": "cloud=aws",
        "provider": "process",
        "retries": 2,
        "retry_delay_s": 1.0,
        "retry_backoff": 2.0,
        "retry_jitter": 0.0,
        "timeout_s": 0.0,
        "schedule_timeout_s": 60.0,
        "retry_on": [],
        "options_json": "",
    }
    base.update(overrides)
    return base


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    s.run_sync(
        lambda session: session.add(BundleRow(sha256="b" * 64, size=1, data=b"x", created_at=T0))
    )
    for agent_id, env, labels in (
        ("a1", "aws-demo", {"cloud": "aws"}),
        ("g1", "gcp-demo", {"cloud": "gcp"}),
    ):
        s.run_sync(
            lambda session, i=agent_id, e=env: session.add(
                AgentRow(
                    id=i,
                    name=i,
                    environment=e,
                    labels={},
                    providers=[],
                    capacity=0,
                    status="disconnected",
                    cert_fingerprint="",
                    enrolled_at=T0,
                    last_applied_seq=0,
                )
            )
        )
        hello = HelloIn("0.1", labels, ("process",), 2, {}, "host", False)
        s.run_sync(agent_connected, agent_id, "", hello, T0)
    yield s
    s.close()


SLOTS = [
    AgentSlot("a1", "a1", "aws-demo", {"cloud": "aws"}, frozenset({"process"}), 2, 0),
    AgentSlot("g1", "g1", "gcp-demo", {"cloud": "gcp"}, frozenset({"process"}), 2, 0),
]


def new_run(store: Store) -> str:
    def create(session):  # type: ignore[no-untyped-def]
        return engine.create_run(
            session,
            flow_name="etl",
            entrypoint="flows.py:etl",
            parameters_json="{}",
            bundle_sha256="b" * 64,
            trigger="manual",
            now=T0,
            effects=Effects(),
        ).id

    return store.run_sync(create)


def submit(store: Store, run_id: str, key: str = "extract#1", **kw: object) -> str:
    sub = StepSubmission(key=key, spec=spec(**kw), inputs_json='{"args": [1], "kwargs": {}}')
    return store.run_sync(engine.submit_steps, run_id, [sub], T0, Effects())[0].step_run_id


def attempts(store: Store, step_id: str) -> list[AttemptRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow)
                .where(AttemptRow.step_run_id == step_id)
                .order_by(AttemptRow.number)
            )
        )
    )


def report(attempt: AttemptRow, seq: int, kind: str, **kw: object) -> ReportIn:
    return ReportIn(
        seq=seq, attempt_id=attempt.id, fencing_token=attempt.fencing_token, at=T0, kind=kind, **kw
    )  # type: ignore[arg-type]


def test_assigns_to_matching_agent_and_completes(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    effects, _ = store.run_sync(scheduling_pass, SLOTS, T0)
    assert [a.agent_id for a in effects.assigns] == ["a1"]
    attempt = attempts(store, step_id)[0]
    assert attempt.state == "ASSIGNED" and attempt.fencing_token == 1
    _, decisions, _ = store.run_sync(
        engine.apply_reports, "a1", [report(attempt, 1, "running")], T0
    )
    assert decisions[0].accept
    done = report(attempt, 2, "finished", outcome="SUCCEEDED", result_json='{"rows": 3}')
    watermark, _, effects = store.run_sync(engine.apply_reports, "a1", [done], T0)
    assert watermark == 2 and effects.released_slots == {"a1": 1}
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "COMPLETED" and json.loads(step.result_json) == {"rows": 3}


def test_transient_failure_is_retried_after_backoff_then_final(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=1)
    store.run_sync(scheduling_pass, SLOTS, T0)
    first = attempts(store, step_id)[0]
    error = {
        "error_class": "transient",
        "type": "builtins.ValueError",
        "message": "boom",
        "traceback": "tb",
        "type_mro": ["builtins.ValueError", "builtins.Exception"],
    }
    store.run_sync(
        engine.apply_reports,
        "a1",
        [report(first, 1, "running"), report(first, 2, "finished", outcome="FAILED", error=error)],
        T0,
    )
    second = attempts(store, step_id)[1]
    assert second.state == "QUEUED" and second.not_before == T0 + dt.timedelta(seconds=1)
    effects, next_timer = store.run_sync(scheduling_pass, SLOTS, T0)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=1)
    later = T0 + dt.timedelta(seconds=1)
    effects, _ = store.run_sync(scheduling_pass, SLOTS, later)
    second = attempts(store, step_id)[1]
    assert second.fencing_token == 2
    store.run_sync(
        engine.apply_reports,
        "a1",
        [
            report(second, 3, "running"),
            report(second, 4, "finished", outcome="FAILED", error=error),
        ],
        later,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error["type"] == "builtins.ValueError"
    assert len(attempts(store, step_id)) == 2


def test_permanent_error_is_not_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, retries=5)
    store.run_sync(scheduling_pass, SLOTS, T0)
    attempt = attempts(store, step_id)[0]
    error = {
        "error_class": "permanent",
        "type": "meridian.errors.Permanent",
        "message": "no",
        "traceback": "",
        "type_mro": [],
    }
    store.run_sync(
        engine.apply_reports,
        "a1",
        [
            report(attempt, 1, "running"),
            report(attempt, 2, "finished", outcome="FAILED", error=error),
        ],
        T0,
    )
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and len(attempts(store, step_id)) == 1


def test_stale_token_foreign_agent_and_duplicate_seq_are_not_applied(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    attempt = attempts(store, step_id)[0]
    stale = ReportIn(seq=1, attempt_id=attempt.id, fencing_token=99, at=T0, kind="running")
    _, decisions, _ = store.run_sync(engine.apply_reports, "a1", [stale], T0)
    assert not decisions[0].accept and "stale fencing token" in decisions[0].reason
    _, decisions, _ = store.run_sync(
        engine.apply_reports, "g1", [report(attempt, 1, "running")], T0
    )
    assert not decisions[0].accept
    store.run_sync(engine.apply_reports, "a1", [report(attempt, 2, "running")], T0)
    done = report(attempt, 3, "finished", outcome="SUCCEEDED", result_json="1")
    store.run_sync(engine.apply_reports, "a1", [done], T0)
    # The same seq again (ack lost): applied once only.
    store.run_sync(engine.apply_reports, "a1", [done], T0)
    kinds = store.run_sync(
        lambda s: [e.kind for e in s.scalars(select(EventRow).order_by(EventRow.id))]
    )
    assert kinds.count("attempt.succeeded") == 1
    assert kinds.count("report.rejected") == 2


def test_inputs_conflict_for_same_key_is_refused(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)
    other = StepSubmission(key="extract#1", spec=spec(), inputs_json='{"args": [2], "kwargs": {}}')
    with pytest.raises(ConflictError, match="different inputs"):
        store.run_sync(engine.submit_steps, run_id, [other], T0, Effects())


def test_unschedulable_target_fails_with_known_environments(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=azure", schedule_timeout_s=5.0)
    effects, next_timer = store.run_sync(scheduling_pass, SLOTS, T0)
    assert not effects.assigns and next_timer == T0 + dt.timedelta(seconds=5)
    store.run_sync(scheduling_pass, SLOTS, T0 + dt.timedelta(seconds=5))
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "FAILED" and step.error["error_class"] == "scheduling"
    assert "aws-demo" in step.error["message"] and "gcp-demo" in step.error["message"]


def test_lost_agent_attempt_is_retried(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    effects = store.run_sync(declare_agent_lost, "a1", T0)
    assert effects.released_slots == {"a1": 1}
    first, second = attempts(store, step_id)
    assert first.state == "LOST" and first.error["error_class"] == "lost_agent"
    assert second.state == "QUEUED"


def test_finish_run_cancels_unfinished_steps(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id)
    store.run_sync(scheduling_pass, SLOTS, T0)
    effects = Effects()
    state = store.run_sync(
        lambda s: engine.finish_run(
            s, run_id, succeeded=True, result_json="null", error=None, now=T0, effects=effects
        )
    )
    assert state == "COMPLETED"
    assert [c.agent_id for c in effects.cancels] == ["a1"]
    step = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert step.state == "CANCELLED"
