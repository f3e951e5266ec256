"""Group commit (``store/group.py``): concurrent ``Store.transact`` calls share one transaction,
each use case in its own savepoint. On a real SQLite store (where it is on by default) and on
PostgreSQL with it turned on explicitly (it is off there by default, decision 0017).

A group holding only a blocking use case runs while the use cases are queued, so they all wait
together and form the next group (one group runs at a time): the tests do not depend on timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from control_plane.store import group
from control_plane.store.db import Store, sqlite_url
from control_plane.store.models import EventRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx, move_run, record_event
from meridian.core.kinds import EventKind
from meridian.core.states import RunState
from tests.control_plane.usecases.helpers import make_store, new_run, submit


@pytest.fixture(autouse=True)
def roomy_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # A group stops taking use cases after MAX_GROUP_S of work; on a loaded machine twenty
    # could take longer, and the tests below count groups, not time.
    monkeypatch.setattr(group, "MAX_GROUP_S", 60.0)


@pytest.fixture
def grouped(db_url: str) -> Iterator[Store]:
    for store in make_store(db_url):
        store.group_commit = True
        yield store


def note(run_id: str, text: str) -> Callable[[Tx], str]:
    def usecase(tx: Tx) -> str:
        record_event(tx, kind=EventKind.ATTEMPT_WAITING, flow_run_id=run_id, message=text)
        tx.effects.touched_runs.add(run_id)
        return text

    return usecase


def fail_after_writing(run_id: str) -> Callable[[Tx], None]:
    def usecase(tx: Tx) -> None:
        run = tx.session.get(FlowRunRow, run_id)
        assert run is not None
        move_run(tx, run, RunState.PAUSED)
        record_event(tx, kind=EventKind.ATTEMPT_WAITING, flow_run_id=run_id, message="doomed")
        tx.session.flush()  # its row change reaches the database before the failure
        raise RuntimeError("this use case fails")

    return usecase


async def in_one_group(store: Store, usecases: list[Callable[[Tx], Any]]) -> list[Any]:
    """Queue ``usecases`` while a group holding only a blocking use case runs, so that they
    all wait together and run as the next group (one group runs at a time)."""
    started, release = threading.Event(), threading.Event()

    def blocker(tx: Tx) -> None:
        started.set()
        release.wait(30)

    loop = asyncio.get_running_loop()
    busy = asyncio.ensure_future(store.transact(blocker))
    await loop.run_in_executor(None, started.wait, 30)
    calls = [asyncio.ensure_future(store.transact(u)) for u in usecases]
    await asyncio.sleep(0.05)  # every call is queued behind the blocking group
    release.set()
    await busy
    return await asyncio.gather(*calls, return_exceptions=True)


def messages(store: Store, run_id: str) -> list[str]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow.message)
                .where(EventRow.flow_run_id == run_id)
                .where(EventRow.kind == EventKind.ATTEMPT_WAITING.value)
                .order_by(EventRow.id)
            )
        )
    )


def test_waiting_use_cases_commit_together_once(grouped: Store) -> None:
    run_id = new_run(grouped)
    commits = grouped.stats.commits
    results = asyncio.run(in_one_group(grouped, [note(run_id, f"n{i}") for i in range(20)]))
    assert results == [f"n{i}" for i in range(20)]
    assert grouped.stats.commits == commits + 2  # the blocker's group, then the twenty
    assert grouped.stats.by_use_case["usecase"] == 20
    # In queue order, with ids increasing in that order.
    assert messages(grouped, run_id) == [f"n{i}" for i in range(20)]


def test_a_use_case_that_raises_rolls_back_only_itself(grouped: Store) -> None:
    run_id = new_run(grouped)
    usecases = [note(run_id, "before"), fail_after_writing(run_id), note(run_id, "after")]
    results = asyncio.run(in_one_group(grouped, usecases))
    assert results[0] == "before" and results[2] == "after"
    assert isinstance(results[1], RuntimeError) and "fails" in str(results[1])
    # Its neighbours committed; its own row change and its queued event did not.
    assert messages(grouped, run_id) == ["before", "after"]
    run = grouped.run_sync(lambda s: s.get(FlowRunRow, run_id))
    assert run is not None and run.state == RunState.RUNNING


def test_effects_are_applied_only_after_the_group_committed(grouped: Store) -> None:
    run_id = new_run(grouped)
    seen: list[list[str]] = []

    def after_commit(effects: Any) -> None:
        # Read from another session: only committed rows are visible there.
        with grouped.session() as other:
            seen.append(
                list(
                    other.scalars(
                        select(EventRow.message).where(
                            EventRow.flow_run_id == run_id,
                            EventRow.kind == EventKind.ATTEMPT_WAITING.value,
                        )
                    )
                )
            )

    grouped.after_commit(after_commit)
    asyncio.run(in_one_group(grouped, [note(run_id, f"n{i}") for i in range(5)]))
    # Every caller, the first one included, saw the whole group durable (the first list is
    # the blocker's, before the group).
    assert seen[1:] == [[f"n{i}" for i in range(5)]] * 5


def test_a_failed_commit_fails_every_caller_of_the_group(tmp_path: Path) -> None:
    # SQLite only: a deferred foreign key is the one way to make the COMMIT itself fail
    # (PostgreSQL's foreign keys here are not deferrable; it does not group by default).
    for store in make_store(sqlite_url(tmp_path / "store.sqlite")):
        run_id = new_run(store)
        step_id = submit(store, run_id)

        def breaks_the_commit(tx: Tx, step_id: str = step_id) -> None:
            # Checked only when the whole transaction commits, after every savepoint.
            tx.session.execute(text("PRAGMA defer_foreign_keys=ON"))
            tx.session.execute(
                update(StepRunRow).where(StepRunRow.id == step_id).values(flow_run_id="nowhere")
            )

        results = asyncio.run(in_one_group(store, [note(run_id, "a"), breaks_the_commit]))
        assert all(isinstance(r, IntegrityError) for r in results), results
        assert messages(store, run_id) == []  # nobody was acknowledged, nothing committed
        # The store keeps working afterwards.
        assert asyncio.run(store.transact(note(run_id, "later"))) == "later"
        assert messages(store, run_id) == ["later"]


def test_events_of_a_failing_savepoint_do_not_reach_the_database(grouped: Store) -> None:
    run_id = new_run(grouped)

    def bad_event(tx: Tx) -> None:
        record_event(tx, kind=EventKind.ATTEMPT_WAITING, flow_run_id=run_id, message="bad")
        tx.session.info["meridian.pending_events"][-1]["kind"] = None  # NOT NULL column

    results = asyncio.run(in_one_group(grouped, [note(run_id, "a"), bad_event, note(run_id, "b")]))
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], IntegrityError)
    assert messages(grouped, run_id) == ["a", "b"]


def test_sqlite_groups_by_default_postgres_does_not(db_url: str) -> None:
    for store in make_store(db_url):
        assert store.group_commit is store.is_sqlite


def test_a_closed_store_refuses_new_use_cases_instead_of_hanging(tmp_path: Path) -> None:
    store = next(make_store(sqlite_url(tmp_path / "store.sqlite")))
    run_id = new_run(store)
    store.close()
    with pytest.raises(RuntimeError):
        asyncio.run(store.transact(note(run_id, "too late")))
    with pytest.raises(RuntimeError):  # and again: the queue did not stay "scheduled"
        asyncio.run(store.transact(note(run_id, "still too late")))


def test_a_group_ends_after_its_time_bound_and_the_rest_follow_in_order(
    grouped: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group, "MAX_GROUP_S", 0.0)  # every group takes one use case only
    run_id = new_run(grouped)
    commits = grouped.stats.commits
    results = asyncio.run(in_one_group(grouped, [note(run_id, f"n{i}") for i in range(6)]))
    assert results == [f"n{i}" for i in range(6)]
    assert grouped.stats.commits == commits + 1 + 6
    assert messages(grouped, run_id) == [f"n{i}" for i in range(6)]
