"""Results that stayed at their site, against a real store (SQLite, and PostgreSQL when
configured): a finished report's reference is stored on the step run (never the bytes) and
answered to watchers, readers, resumed submissions and cached calls; a reference the agent may
not report fails its attempt; inputs may name only references this control plane recorded, in
runs the submitter may read, and assignments carry them."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from control_plane.api import views
from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import EventRow, StepRunRow
from control_plane.store.queries import events_after, run_view
from control_plane.usecases.attempts import INVALID_RESULT_REFERENCE
from control_plane.usecases.input_refs import FORGED
from control_plane.usecases.scheduling import scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import ConflictError, ValidationError
from tests.control_plane.usecases.helpers import (
    SLOTS,
    T0,
    attempts,
    new_run,
    run_at,
    schedule,
    spec,
    submit,
)
from tests.control_plane.usecases.refs import (
    REF,
    changed,
    consumer,
    finish,
    produce,
    scoped_run,
)


def step_row(store: Store, step_id: str) -> StepRunRow:
    row = store.run_sync(lambda s: s.get(StepRunRow, step_id))
    assert row is not None
    return row


def test_a_finished_report_stores_the_reference_not_the_bytes(store: Store) -> None:
    run_id = new_run(store)
    step_id = produce(store, run_id)
    row = step_row(store, step_id)
    assert (row.state, row.result_json) == ("COMPLETED", None)
    assert row.result_ref_json == REF.to_json() and row.result_ref_sha256 == REF.sha256
    # The watcher's outcome (WatchRun) and the audit view (GetRun) carry the reference.
    _, updates = store.run_sync(lambda s: events_after(s, run_id, 0, 500))
    (done,) = [u for u in updates if u.event.kind == "step.completed"]
    outcome = views.run_update(done).step_outcome
    assert (outcome.result_ref_json, outcome.result_json) == (REF.to_json(), "")
    (detail,) = views.run_detail(store.run_sync(lambda s: run_view(s, run_id))).steps
    assert (detail.result_ref_json, detail.result_json) == (REF.to_json(), "")


def test_a_resubmitted_call_is_answered_with_the_stored_reference(store: Store) -> None:
    run_id = new_run(store)
    produce(store, run_id)
    again = StepSubmission("extract#1", spec(target="cloud=aws"), '{"args": [1], "kwargs": {}}')
    (answer,), _ = run_at(store, T0, submit_steps, run_id, [again])
    assert answer.existing and answer.state == "COMPLETED"
    assert (answer.result_ref_json, answer.result_json) == (REF.to_json(), "")
    assert views.submitted_step(answer).outcome.result_ref_json == REF.to_json()


@pytest.mark.parametrize(
    ("ref_json", "stores", "result_json", "needle"),
    [
        (changed(REF, environment="gcp-demo").to_json(), ("s3-main",), "", "environment"),
        (REF.to_json(), ("scratch",), "", "did not advertise"),
        (REF.to_json(), (), "", "its stores: none"),
        ('{"v": 1, "uri": "s3://x"}', ("s3-main",), "", "missing fields"),
        ("not json", ("s3-main",), "", "not JSON"),
        (REF.to_json(), ("s3-main",), "42", "no result_json"),
    ],
    ids=["other-environment", "unadvertised-store", "no-stores", "fields", "json", "both"],
)
def test_a_reference_the_agent_may_not_report_fails_its_attempt(
    store: Store, ref_json: str, stores: tuple[str, ...], result_json: str, needle: str
) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, target="cloud=aws")
    schedule(store)
    first = attempts(store, step_id)[0]
    finish(store, first, ref_json=ref_json, stores=stores, result_json=result_json)
    failed, retry = attempts(store, step_id)
    assert failed.state == "FAILED" and failed.error is not None
    assert failed.error.type == INVALID_RESULT_REFERENCE and needle in failed.error.message
    assert retry.state == "QUEUED"  # the step's retry policy decides, as for any failure
    row = step_row(store, step_id)
    assert row.result_ref_json is None and row.result_json is None
    rejected = store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow.message).where(
                    EventRow.attempt_id == first.id, EventRow.kind == "report.rejected"
                )
            )
        )
    )
    assert len(rejected) == 1 and needle in rejected[0]


def test_a_cached_call_reuses_the_stored_reference(store: Store) -> None:
    cache_key = "ck1-" + "c" * 64
    first_run = new_run(store)
    cached = StepSubmission(
        "extract#1", spec(target="cloud=aws"), '{"args": [1], "kwargs": {}}', cache_key=cache_key
    )
    (answer,), _ = run_at(store, T0, submit_steps, first_run, [cached])
    schedule(store)
    finish(store, attempts(store, answer.step_run_id)[0], ref_json=REF.to_json())
    (reused,), _ = run_at(store, T0, submit_steps, new_run(store), [cached])
    assert reused.state == "CACHED"
    assert (reused.result_ref_json, reused.result_json) == (REF.to_json(), "")
    row = step_row(store, reused.step_run_id)
    assert (row.result_ref_json, row.result_ref_sha256) == (REF.to_json(), REF.sha256)


def test_inputs_may_name_a_recorded_reference_and_the_assignment_carries_it(store: Store) -> None:
    produce(store, new_run(store))
    run_id = new_run(store)
    (answer,), _ = run_at(store, T0, submit_steps, run_id, [consumer(target="cloud=gcp")])
    stored = step_row(store, answer.step_run_id).input_refs_json
    assert stored is not None and json.loads(stored) == [REF.to_value()]
    _, effects = run_at(store, T0, scheduling_pass, SLOTS)
    (assign,) = effects.assigns
    assert assign.step_key == "load#1" and assign.input_refs_json == (REF.to_json(),)


@pytest.mark.parametrize(
    "forged",
    [
        changed(REF, size=REF.size + 1),
        changed(REF, uri="s3://acme-results/secrets/passwords.csv"),
        changed(REF, sealed=True),
        changed(REF, store="scratch"),
        changed(REF, sha256="f" * 64),
    ],
    ids=["size", "uri", "sealed", "store", "sha256"],
)
def test_a_forged_reference_is_refused_and_nothing_is_stored(store: Store, forged: object) -> None:
    produce(store, new_run(store))
    run_id = new_run(store)
    with pytest.raises(ValidationError, match=FORGED) as refused:
        run_at(store, T0, submit_steps, run_id, [consumer(refs=(forged,))])  # type: ignore[arg-type]
    assert "'load#1'" in str(refused.value) and "s3://" not in str(refused.value)
    keys = store.run_sync(
        lambda s: list(s.scalars(select(StepRunRow.key).where(StepRunRow.flow_run_id == run_id)))
    )
    assert keys == []


def test_a_reference_from_a_run_outside_the_scope_is_refused(store: Store) -> None:
    produce(store, scoped_run(store, "aws-demo"))
    elsewhere = scoped_run(store, "gcp-demo")
    with pytest.raises(ValidationError, match=FORGED):
        run_at(store, T0, submit_steps, elsewhere, [consumer()])
    wider = scoped_run(store, "aws-demo", "gcp-demo")
    (answer,), _ = run_at(store, T0, submit_steps, wider, [consumer()])
    assert answer.state == "PENDING"
    # An unscoped run's submitter scoped by its token is held to the token's scope.
    with pytest.raises(ValidationError, match=FORGED):
        run_at(store, T0, submit_steps, new_run(store), [consumer()], caller=("gcp-demo",))


def test_a_key_resubmitted_with_other_references_is_a_conflict(store: Store) -> None:
    produce(store, new_run(store), key="a#1")
    other = changed(REF, uri="s3://acme-results/runs/r/other/a/result", sha256="2b" * 32)
    produce(store, new_run(store), key="b#1", ref=other)
    run_id = new_run(store)
    run_at(store, T0, submit_steps, run_id, [consumer(refs=(REF,))])
    # Same inputs text (a sealed envelope would hide the markers), other references listed.
    swapped = StepSubmission("load#1", consumer().spec, consumer().inputs_json, input_refs=(other,))
    with pytest.raises(ConflictError, match="different input references"):
        run_at(store, T0, submit_steps, run_id, [swapped])
    (again,), _ = run_at(store, T0, submit_steps, run_id, [consumer(refs=(REF,))])
    assert again.existing
