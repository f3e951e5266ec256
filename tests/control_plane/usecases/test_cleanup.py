"""Run deletion, run expiry and the result-deletion queue against a real store (SQLite, and
PostgreSQL when configured): a deleted run's stored objects are queued and its rows removed in
one transaction; a running run is refused; an object a cached step of another run still refers
to is kept; queued deletions are claimed, resent after a delay, settled and given up."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.orchestration.housekeeping import uri_digest
from control_plane.orchestration.values import LogLineIn, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import (
    ApprovalRow,
    AttemptRow,
    AuditRecordRow,
    EventRow,
    FlowRunRow,
    LogRow,
    ResultDeletionRow,
    StepRunRow,
    TransferRow,
)
from control_plane.store.tx import Tx
from control_plane.usecases.approvals import decide_approval, request_approval
from control_plane.usecases.attempts import apply_reports
from control_plane.usecases.cleanup import (
    MAX_TRIES,
    claim_deletions,
    delete_run,
    expire_runs,
    live_runs,
    referenced_by_live_parameters,
    referenced_page,
    settle_deletions,
)
from control_plane.usecases.runs import create_run, finish_run
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import ConflictError
from meridian.core.resultref import ResultRef, ref_marker
from tests.control_plane.usecases.helpers import (
    T0,
    attempts,
    holder,
    new_run,
    report,
    run_at,
    schedule,
    spec,
)

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
_SEQ = itertools.count(1)
STORE = "scratch"


def ref_for(run_id: str, key: str, size: int = 1000) -> ResultRef:
    uri = f"file:///srv/results/runs/{run_id}/{key.replace('#', '~23')}/a1/result"
    return ResultRef("aws-demo", STORE, uri, size, "c" * 64, "json")


def produce(
    store: Store, run_id: str, key: str, *, cache_key: str = "", now: dt.datetime = T0
) -> ResultRef:
    """Run step ``key`` of ``run_id`` on agent a1 (aws-demo), which stores its result in its
    store ``scratch`` and reports the reference; returns the reference."""
    sub = StepSubmission(
        key=key, spec=spec(retries=0), inputs_json='{"args": [], "kwargs": {}}', cache_key=cache_key
    )
    answers, _ = run_at(store, now, submit_steps, run_id, [sub])
    schedule(store, now)
    attempt = attempts(store, answers[0].step_run_id)[0]
    ref = ref_for(run_id, key)
    reports = [
        report(attempt, next(_SEQ), "running", at=now),
        report(attempt, next(_SEQ), "logs", at=now, lines=(LogLineIn(now, "stdout", "hi"),)),
        report(
            attempt, next(_SEQ), "finished", at=now, outcome="SUCCEEDED",
            result_ref_json=ref.to_json(),
        ),
    ]  # fmt: skip
    run_at(store, now, apply_reports, holder(attempt), reports, result_stores={STORE})
    return ref


def finish(store: Store, run_id: str, now: dt.datetime = T0) -> None:
    run_at(store, now, finish_run, run_id, succeeded=True, result_json="null", error=None)


def count(store: Store, model: Any, **where: Any) -> int:
    def query(session: Session) -> int:
        stmt = select(func.count()).select_from(model)
        for column, value in where.items():
            stmt = stmt.where(getattr(model, column) == value)
        return int(session.scalar(stmt) or 0)

    return store.run_sync(query)


def queued(store: Store) -> list[ResultDeletionRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(ResultDeletionRow).order_by(ResultDeletionRow.id)))
    )


def audit_records(store: Store, action: str) -> list[dict[str, Any]]:
    rows = store.run_sync(
        lambda s: list(s.scalars(select(AuditRecordRow).where(AuditRecordRow.action == action)))
    )
    return [{"actor": r.actor, "subject": r.subject, **json.loads(r.details)} for r in rows]


def add_transfer(store: Store, run_id: str, ref: ResultRef) -> None:
    store.run_sync(
        lambda s: s.add(
            TransferRow(
                id="t-" + run_id[:30], flow_run_id=run_id, from_environment="aws-demo",
                to_environment="gcp-demo", store=STORE, uri=ref.uri, sha256=ref.sha256,
                size=ref.size, bytes=ref.size, state="COMPLETED", started_at=T0,
            )
        )
    )  # fmt: skip


def test_deleting_a_run_queues_its_objects_and_removes_its_rows(store: Store) -> None:
    run_id = new_run(store)
    first = produce(store, run_id, "extract#1")
    second = produce(store, run_id, "load#1")
    run_at(store, T0, request_approval, run_id, "publish#1", "ok?", 0.0)
    run_at(store, T0, decide_approval, run_id, "publish#1", True, "fine")
    finish(store, run_id)
    add_transfer(store, run_id, first)
    for model in (EventRow, LogRow, AttemptRow, ApprovalRow, StepRunRow):
        assert count(store, model, flow_run_id=run_id) > 0

    deleted, _ = run_at(store, T0 + HOUR, delete_run, run_id[:8], "no longer needed")

    assert (deleted.flow_run_id, deleted.queued, deleted.kept) == (run_id, 2, 0)
    rows = queued(store)
    assert {(r.environment, r.store, r.uri, r.size) for r in rows} == {
        ("aws-demo", STORE, first.uri, first.size),
        ("aws-demo", STORE, second.uri, second.size),
    }
    assert {(r.flow_run_id, r.reason, r.tries, r.sent_at) for r in rows} == {
        (run_id, "run deleted", 0, None)
    }
    for model in (EventRow, LogRow, AttemptRow, ApprovalRow, StepRunRow):
        assert count(store, model, flow_run_id=run_id) == 0, model.__name__
    assert count(store, FlowRunRow, id=run_id) == 0
    assert count(store, TransferRow, flow_run_id=run_id) == 1  # the egress ledger stays
    [record] = audit_records(store, "run.deleted")
    assert record["subject"] == run_id
    assert (record["reason"], record["objects_queued"], record["state"]) == (
        "no longer needed",
        2,
        "COMPLETED",
    )


def test_a_deletion_that_fails_changes_nothing(store: Store) -> None:
    """The rows, the queue and the audit record are one transaction."""
    run_id = new_run(store)
    produce(store, run_id, "extract#1")
    finish(store, run_id)

    def delete_then_fail(tx: Tx) -> None:
        delete_run(tx, run_id, "")
        raise RuntimeError("the disk filled up mid-way")

    with pytest.raises(RuntimeError):
        run_at(store, T0, delete_then_fail)
    assert count(store, FlowRunRow, id=run_id) == 1
    assert count(store, StepRunRow, flow_run_id=run_id) == 1
    assert count(store, EventRow, flow_run_id=run_id) > 0
    assert queued(store) == []
    assert audit_records(store, "run.deleted") == []


def test_a_running_run_is_refused(store: Store) -> None:
    run_id = new_run(store)
    produce(store, run_id, "extract#1")
    with pytest.raises(ConflictError, match="is RUNNING: only a finished run"):
        run_at(store, T0, delete_run, run_id, "")
    assert count(store, FlowRunRow, id=run_id) == 1
    assert queued(store) == []


def test_a_finished_run_with_attempts_still_running_is_refused(store: Store) -> None:
    run_id = new_run(store)
    sub = StepSubmission("slow#1", spec(retries=0), '{"args": [], "kwargs": {}}')
    run_at(store, T0, submit_steps, run_id, [sub])
    schedule(store)
    # The runner lost its lease: the run CRASHED, its step still runs on its agent.
    store.run_sync(lambda s: setattr(s.get(FlowRunRow, run_id), "state", "CRASHED"))
    with pytest.raises(ConflictError, match="1 of its attempts still run"):
        run_at(store, T0, delete_run, run_id, "")


def test_an_object_a_cached_step_of_another_run_refers_to_is_kept(store: Store) -> None:
    source = new_run(store)
    shared = produce(store, source, "extract#1", cache_key="ck1-" + "a" * 64)
    own = produce(store, source, "load#1")
    finish(store, source)
    reuser = new_run(store)
    hit = StepSubmission(
        "extract#1", spec(retries=0), '{"args": [], "kwargs": {}}', cache_key="ck1-" + "a" * 64
    )
    answers, _ = run_at(store, T0 + HOUR, submit_steps, reuser, [hit])
    assert answers[0].state == "CACHED"

    deleted, _ = run_at(store, T0 + 2 * HOUR, delete_run, source, "")

    assert (deleted.queued, deleted.kept) == (1, 1)
    assert [r.uri for r in queued(store)] == [own.uri]
    # Deleting the run that reused it last frees the object.
    finish(store, reuser, T0 + HOUR)
    again, _ = run_at(store, T0 + 2 * HOUR, delete_run, reuser, "")
    assert (again.queued, again.kept) == (1, 0)
    assert {r.uri for r in queued(store)} == {own.uri, shared.uri}


def test_expiry_deletes_only_runs_ended_before_the_retention_bounded(store: Store) -> None:
    old = [new_run(store) for _ in range(3)]
    for run_id in old:
        produce(store, run_id, "extract#1")
        finish(store, run_id, T0)
    recent = new_run(store)
    finish(store, recent, T0 + 9 * DAY)
    running = new_run(store)

    expired, _ = run_at(store, T0 + 10 * DAY, expire_runs, 7, 2)
    assert len(expired) == 2  # bounded: the next batch takes the rest
    expired, _ = run_at(store, T0 + 10 * DAY, expire_runs, 7, 2)
    assert len(expired) == 1
    assert {r for r in old if count(store, FlowRunRow, id=r)} == set()
    assert count(store, FlowRunRow, id=recent) == count(store, FlowRunRow, id=running) == 1
    assert len(queued(store)) == 3
    records = audit_records(store, "run.deleted")
    assert {r["actor"] for r in records} == {"system"}
    assert records[0]["reason"] == "retention: ended more than 7 days ago"
    assert run_at(store, T0 + 10 * DAY, expire_runs, 0, 10)[0] == []  # 0 days: keep for ever


def queue_rows(store: Store, n: int, store_name: str = STORE) -> None:
    store.run_sync(
        lambda s: s.add_all(
            ResultDeletionRow(
                environment="aws-demo", store=store_name, uri=f"file:///r/runs/x/s/{i}/result",
                size=i, reason="run deleted", created_at=T0, tries=0, last_error="",
            )
            for i in range(n)
        )
    )  # fmt: skip


def test_claims_are_bounded_marked_and_resent_only_after_the_delay(store: Store) -> None:
    queue_rows(store, 5)
    queue_rows(store, 1, store_name="other")
    claim = dict(limit=3, resend_after_s=60.0)
    first, _ = run_at(store, T0, claim_deletions, "aws-demo", {STORE}, **claim)
    assert [c.size for c in first] == [0, 1, 2]
    second, _ = run_at(store, T0, claim_deletions, "aws-demo", {STORE}, **claim)
    assert [c.size for c in second] == [3, 4]  # never the store the agent lacks
    assert run_at(store, T0 + 30 * dt.timedelta(seconds=1), claim_deletions, "aws-demo",
                  {STORE}, **claim)[0] == []  # fmt: skip
    resent, _ = run_at(store, T0 + 2 * HOUR, claim_deletions, "aws-demo", {STORE}, **claim)
    assert [c.size for c in resent] == [0, 1, 2]
    assert run_at(store, T0, claim_deletions, "gcp-demo", {STORE}, **claim)[0] == []


def test_settling_removes_confirmed_rows_and_keeps_failures(store: Store) -> None:
    queue_rows(store, 3)
    claimed, _ = run_at(store, T0, claim_deletions, "aws-demo", {STORE}, limit=3, resend_after_s=60)
    removed, _ = run_at(
        store, T0, settle_deletions, [claimed[0].id, claimed[1].id], {claimed[2].id: "denied"}
    )
    assert removed == 2
    [left] = queued(store)
    assert (left.id, left.last_error, left.tries) == (claimed[2].id, "denied", 1)


def test_a_deletion_is_given_up_after_max_tries_and_audited(store: Store) -> None:
    queue_rows(store, 1)
    now = T0
    for _ in range(MAX_TRIES):
        claimed, _ = run_at(store, now, claim_deletions, "aws-demo", {STORE}, limit=5,
                            resend_after_s=60)  # fmt: skip
        assert len(claimed) == 1
        run_at(store, now, settle_deletions, [], {claimed[0].id: "AccessDenied"})
        now += HOUR
    claimed, _ = run_at(store, now, claim_deletions, "aws-demo", {STORE}, limit=5,
                        resend_after_s=60)  # fmt: skip
    assert claimed == [] and queued(store) == []
    [record] = audit_records(store, "results.deletion_abandoned")
    assert (record["tries"], record["last_error"], record["store"]) == (
        MAX_TRIES,
        "AccessDenied",
        STORE,
    )


def test_the_sweep_snapshot_names_live_runs_and_referenced_uris(store: Store) -> None:
    done = new_run(store)
    ref = produce(store, done, "extract#1")
    finish(store, done)
    live = new_run(store)
    run_at(store, T0, submit_steps, live, [StepSubmission("s#1", spec(), '{"args": []}')])

    assert store.run_sync(live_runs) == {live}
    envs = {"aws-demo"}
    digests, after = store.run_sync(lambda s: referenced_page(s, "", envs, 1000))
    assert (digests, after) == ({uri_digest(ref.uri)}, "")
    assert store.run_sync(lambda s: referenced_page(s, "", {"gcp-demo"}, 1000)) == (set(), "")
    # Paged: a full page names where the next starts; the page after the last is empty.
    other = produce(store, live, "other#1")
    first, cursor = store.run_sync(lambda s: referenced_page(s, "", envs, 1))
    second, cursor2 = store.run_sync(lambda s: referenced_page(s, cursor, envs, 1))
    assert first | second == {uri_digest(ref.uri), uri_digest(other.uri)}
    assert store.run_sync(lambda s: referenced_page(s, cursor2, envs, 1)) == (set(), "")


def test_an_object_a_live_run_takes_as_an_input_is_kept(store: Store) -> None:
    source = new_run(store)
    given = produce(store, source, "extract#1")
    own = produce(store, source, "load#1")
    finish(store, source)
    # Another run, still in progress, passes extract#1's result to one of its steps.
    consumer = new_run(store)
    sub = StepSubmission(
        "use#1", spec(retries=0), '{"args": [], "kwargs": {}}', input_refs=(given,)
    )
    run_at(store, T0 + HOUR, submit_steps, consumer, [sub])

    deleted, _ = run_at(store, T0 + 2 * HOUR, delete_run, source, "")

    assert (deleted.queued, deleted.kept) == (1, 1)
    assert [r.uri for r in queued(store)] == [own.uri]
    # ... and the garbage collector does not take it for an orphan: its run is gone, but the
    # consumer's step names it as an input.
    digests, _ = store.run_sync(lambda s: referenced_page(s, "", {"aws-demo"}, 1000))
    assert uri_digest(given.uri) in digests and uri_digest(own.uri) not in digests


def test_an_object_a_live_run_takes_as_a_parameter_is_kept(store: Store) -> None:
    source = new_run(store)
    given = produce(store, source, "extract#1")
    own = produce(store, source, "load#1")
    finish(store, source)
    # A run in progress took extract#1's result as a parameter (``-p data=@result:...``);
    # its body has not passed it to a step yet.
    parameters = json.dumps({"data": [1, {"nested": ref_marker(given)}]})
    waiting, _ = run_at(
        store, T0 + HOUR, create_run, flow_name="etl", entrypoint="flows.py:etl",
        parameters_json=parameters, bundle_sha256="b" * 64, trigger="manual",
    )  # fmt: skip

    deleted, _ = run_at(store, T0 + 2 * HOUR, delete_run, source, "")

    assert (deleted.queued, deleted.kept) == (1, 1)
    assert [r.uri for r in queued(store)] == [own.uri]
    live = store.run_sync(lambda s: referenced_by_live_parameters(s, {"aws-demo"}))
    assert live == {uri_digest(given.uri)}
    assert store.run_sync(lambda s: referenced_by_live_parameters(s, {"gcp-demo"})) == set()
    # Once that run ends, the object is an orphan like any other.
    finish(store, waiting.id, T0 + 3 * HOUR)
    assert store.run_sync(lambda s: referenced_by_live_parameters(s, {"aws-demo"})) == set()


def test_a_malformed_marker_in_a_live_runs_parameters_stops_nothing(store: Store) -> None:
    source = new_run(store)
    given = produce(store, source, "extract#1")
    finish(store, source)
    # Run parameters are not checked for markers: one may be malformed next to a good one.
    parameters = json.dumps(
        {"bad": {"$meridian_ref": "junk"}, "odd": {"$meridian_ref": {}, "x": 1},
         "good": ref_marker(given)}
    )  # fmt: skip
    run_at(
        store, T0 + HOUR, create_run, flow_name="etl", entrypoint="flows.py:etl",
        parameters_json=parameters, bundle_sha256="b" * 64, trigger="manual",
    )  # fmt: skip
    live = store.run_sync(lambda s: referenced_by_live_parameters(s, {"aws-demo"}))
    assert live == {uri_digest(given.uri)}
    deleted, _ = run_at(store, T0 + 2 * HOUR, delete_run, source, "")
    assert (deleted.queued, deleted.kept) == (0, 1)
