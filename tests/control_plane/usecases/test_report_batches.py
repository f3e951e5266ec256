"""A report batch is applied with a number of queries that does not grow with its size: the
batch's attempts, steps and runs are read in bulk, not once per report (statements are counted
with a ``before_cursor_execute`` listener, not timed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, select

from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow
from control_plane.usecases.scheduling import scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import SLOTS, T0, apply, new_run, report, run_at, spec

ROOMY = [dataclasses.replace(SLOTS[0], capacity=1000)]


@contextmanager
def counted_selects(store: Store) -> Iterator[list[str]]:
    selects: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        yield selects
    finally:
        event.remove(store.engine, "before_cursor_execute", on_execute)


def assigned(store: Store, n: int) -> list[AttemptRow]:
    run_id = new_run(store)
    subs = [
        StepSubmission(key=f"s#{i}", spec=spec(target="cloud=aws"), inputs_json="{}")
        for i in range(n)
    ]
    run_at(store, T0, submit_steps, run_id, subs)
    run_at(store, T0, scheduling_pass, ROOMY)
    rows = store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow).where(
                    AttemptRow.flow_run_id == run_id, AttemptRow.state == AttemptState.ASSIGNED
                )
            )
        )
    )
    assert len(rows) == n
    return rows


def selects_for_a_batch(store: Store, attempts: list[AttemptRow], first_seq: int) -> int:
    running = [report(a, first_seq + i, "running") for i, a in enumerate(attempts)]
    with counted_selects(store) as selects:
        apply(store, "a1", running)
    finished = [
        report(a, first_seq + len(attempts) + i, "finished", outcome="SUCCEEDED", result_json="1")
        for i, a in enumerate(attempts)
    ]
    with counted_selects(store) as more:
        apply(store, "a1", finished)
    return len(selects) + len(more)


def test_the_queries_of_a_report_batch_do_not_grow_with_its_size(store: Store) -> None:
    small = selects_for_a_batch(store, assigned(store, 3), first_seq=1)
    large = selects_for_a_batch(store, assigned(store, 60), first_seq=100)
    assert large == small, (small, large)
