"""``WatchRun`` pages a run's events by index: a page costs what it returns, never a read of
the whole run, however many steps the run has (SQLite's query plans, checked statement by
statement)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from control_plane.orchestration.values import StepSubmission
from control_plane.store import queries
from control_plane.store.db import Store
from control_plane.usecases.runs import cancel_run
from control_plane.usecases.steps import submit_steps
from tests.control_plane.usecases.helpers import T0, make_store, new_run, run_at, spec
from tests.support.databases import sqlite_url

TABLE_SCAN = re.compile(r"\bSCAN (events|step_runs|attempts|approvals|flow_runs)\b")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    yield from make_store(sqlite_url(tmp_path))


def plans(store: Store, statements: list[tuple[str, Any]]) -> list[str]:
    """SQLite's plan of each captured SELECT, as text."""
    out = []
    with store.engine.connect() as connection:
        for statement, params in statements:
            if statement.lstrip().upper().startswith("SELECT"):
                rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                out.append("; ".join(str(row[-1]) for row in rows))
    return out


def test_a_watch_page_reads_events_and_their_steps_by_index(sqlite_store: Store) -> None:
    run_id = new_run(sqlite_store)
    shared = spec()
    calls = [StepSubmission(f"s#{i}", shared, '{"args": [], "kwargs": {}}') for i in range(300)]
    run_at(sqlite_store, T0, submit_steps, run_id, calls)
    run_at(sqlite_store, T0, cancel_run, run_id, "every step ends: pages carry outcomes")
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        statements.append((statement, params))

    event.listen(sqlite_store.engine, "before_cursor_execute", capture)
    try:
        state, page = sqlite_store.run_sync(queries.events_after, run_id, 650, 1000)
    finally:
        event.remove(sqlite_store.engine, "before_cursor_execute", capture)
    assert state == "CANCELLED" and page and page[0].event.id > 650
    assert any(view.step is not None for view in page)  # outcomes were looked up too
    found = plans(sqlite_store, statements)
    # (An empty IN list is a scan of a constant row, not of a table.)
    assert found and not any(TABLE_SCAN.search(plan) for plan in found), found
    assert any("USING INDEX ix_events_flow_run_id_id" in plan for plan in found), found
    with sqlite_store.engine.connect() as connection:  # the same run read whole would scan
        whole = connection.execute(text("EXPLAIN QUERY PLAN SELECT * FROM events")).all()
    assert TABLE_SCAN.search(str(whole[0][-1]))
