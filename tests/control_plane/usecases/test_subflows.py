"""Subflows on a real store: a child run is linked to its parent (event on the parent's
timeline, audit record naming both), only the parent's runner starts it, the same key gives
the same child back (a completed one as it is, a failed one reopened), and cancelling the
parent cancels its unfinished children, recursively, in the same transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.store.db import Store
from control_plane.store.models import EventRow, FlowRunRow
from control_plane.store.queries import run_view
from control_plane.usecases.runs import cancel_run, finish_run
from control_plane.usecases.subflows import start_child_run
from meridian.core.errors import ConflictError, PermissionDenied
from meridian.core.states import RunState
from tests.control_plane.usecases.helpers import T0, new_run, run_at


def child_of(store: Store, parent: str, key: str = "child#1", flow: str = "child") -> str:
    (run, token, _), _ = run_at(
        store,
        T0,
        start_child_run,
        parent_run_id=parent,
        parent_key=key,
        caller_run_id=parent,
        flow_name=flow,
        entrypoint="flows:child",
        parameters_json='{"n": 1}',
    )
    assert token.startswith("mat_")
    return run.id


def state(store: Store, run_id: str) -> str:
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id).state)


def test_a_child_run_is_linked_to_its_parent(store: Store) -> None:
    parent = new_run(store)
    child = child_of(store, parent)
    view = store.run_sync(lambda s: run_view(s, parent))
    assert [c.id for c in view.children] == [child]
    row = view.children[0]
    assert (row.parent_run_id, row.parent_key, row.trigger) == (parent, "child#1", "subflow")
    assert row.state == RunState.RUNNING and row.bundle_sha256 == "b" * 64  # the parent's code
    messages = store.run_sync(
        lambda s: list(s.scalars(select(EventRow.message).where(EventRow.flow_run_id == parent)))
    )
    assert f"subflow child started as run {child}" in messages
    records = store.run_sync(lambda s: list(audit.list_records(s)))
    (linked,) = [r for r in records if r.action == "run.subflow"]
    assert linked.subject == child and parent in linked.details


def test_a_superseded_runner_of_the_parent_starts_no_child(store: Store) -> None:
    """Decision 0018's fencing on CreateRun of a subflow: once the parent was handed to a
    newer runner (epoch 2), the old runner's token (epoch 1) creates nothing."""
    parent = new_run(store)
    store.run_sync(lambda s: setattr(s.get(FlowRunRow, parent), "runner_epoch", 2))
    start = {
        "parent_run_id": parent,
        "parent_key": "child#1",
        "caller_run_id": parent,
        "flow_name": "child",
        "entrypoint": "flows:child",
        "parameters_json": "{}",
    }
    with pytest.raises(ConflictError, match="superseded by runner epoch 2"):
        run_at(store, T0, start_child_run, caller_epoch=1, **start)
    assert store.run_sync(lambda s: run_view(s, parent)).children == []
    (child, _, existing), _ = run_at(store, T0, start_child_run, caller_epoch=2, **start)
    assert not existing and child.parent_run_id == parent


def test_only_the_parents_runner_starts_a_child(store: Store) -> None:
    parent, other = new_run(store), new_run(store)
    with pytest.raises(PermissionDenied, match="parent run's own runner"):
        run_at(
            store,
            T0,
            start_child_run,
            parent_run_id=parent,
            parent_key="child#1",
            caller_run_id=other,
            flow_name="child",
            entrypoint="flows:child",
            parameters_json="{}",
        )


def test_the_same_key_gives_the_same_child_completed_as_it_is_failed_reopened(
    store: Store,
) -> None:
    parent = new_run(store)
    done, failed = child_of(store, parent, "a#1"), child_of(store, parent, "b#1")
    run_at(store, T0, finish_run, done, succeeded=True, result_json="42", error=None)
    run_at(store, T0, finish_run, failed, succeeded=False, result_json="", error=None)
    assert child_of(store, parent, "a#1") == done and state(store, done) == RunState.COMPLETED
    assert child_of(store, parent, "b#1") == failed and state(store, failed) == RunState.RUNNING
    with pytest.raises(ConflictError, match="not replay-safe"):
        child_of(store, parent, "a#1", flow="another")


def test_cancelling_a_parent_cancels_its_unfinished_children_recursively(store: Store) -> None:
    parent = new_run(store)
    child = child_of(store, parent)
    grandchild = child_of(store, child, "leaf#1", flow="leaf")
    done = child_of(store, parent, "done#1")
    run_at(store, T0, finish_run, done, succeeded=True, result_json="1", error=None)
    run_at(store, T0, cancel_run, parent, "stop")
    assert state(store, parent) == RunState.CANCELLED
    assert state(store, child) == RunState.CANCELLED
    assert state(store, grandchild) == RunState.CANCELLED
    assert state(store, done) == RunState.COMPLETED


def test_a_replayed_parent_fences_the_previous_driver_of_a_running_child(store: Store) -> None:
    from control_plane.usecases.runners import check_runner_epoch

    parent = new_run(store)
    child = child_of(store, parent)
    before = store.run_sync(lambda s: s.get(FlowRunRow, child).runner_epoch)
    assert child_of(store, parent) == child  # the replayed parent finds the same child...
    after = store.run_sync(lambda s: s.get(FlowRunRow, child).runner_epoch)
    assert after == before + 1  # ... and drives it under a new epoch
    run_at(store, T0, check_runner_epoch, child, after)
    with pytest.raises(ConflictError, match="superseded"):
        run_at(store, T0, check_runner_epoch, child, before)
