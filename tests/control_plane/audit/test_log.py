"""Appending and verifying against a real store; tampering done with plain SQL.

Runs on SQLite and, when MERIDIAN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.store.db import Store
from control_plane.store.models import AuditRecordRow, BundleRow

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def _append(session: Session, n: int, at: dt.datetime = T0) -> None:
    audit.append(
        session,
        actor="cli",
        action="run.triggered",
        subject=f"run-{n}",
        details={"n": n, "flow": "etl", "nested": {"b": [1, 2], "a": "é"}},
        now=at + dt.timedelta(seconds=n),
    )


def _fill(store: Store, count: int) -> None:
    for n in range(1, count + 1):
        store.run_sync(_append, n)


def _rows(store: Store) -> list[AuditRecordRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(AuditRecordRow).order_by(AuditRecordRow.id)))
    )


def _sql(store: Store, *statements: str) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def test_records_form_a_linear_chain(store: Store) -> None:
    _fill(store, 4)
    rows = _rows(store)
    assert [r.id for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == audit.GENESIS_HASH
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert rows[1].at == T0 + dt.timedelta(seconds=2)  # microseconds survive the store
    assert rows[0].details == '{"flow":"etl","n":1,"nested":{"a":"é","b":[1,2]}}'
    report = store.run_sync(audit.verify_chain)
    assert report == audit.VerifyReport(True, 4, 4, rows[-1].hash)


def test_empty_log_verifies_with_the_genesis_head(store: Store) -> None:
    assert store.run_sync(audit.verify_chain) == audit.VerifyReport(True, 0, 0, audit.GENESIS_HASH)


def test_several_records_in_one_transaction_are_chained_in_order(store: Store) -> None:
    def three(session: Session) -> None:
        for n in (1, 2, 3):
            _append(session, n)

    store.run_sync(three)
    assert [r.subject for r in _rows(store)] == ["run-1", "run-2", "run-3"]
    assert store.run_sync(audit.verify_chain).ok


def test_a_rolled_back_transaction_leaves_no_record(store: Store) -> None:
    _fill(store, 1)

    def change_then_fail(session: Session) -> None:
        session.add(BundleRow(sha256="c" * 64, size=1, data=b"x", created_at=T0))
        _append(session, 2)
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        store.run_sync(change_then_fail)
    assert [r.id for r in _rows(store)] == [1]
    assert store.run_sync(lambda s: s.get(BundleRow, "c" * 64)) is None
    _fill(store, 1)  # the next append continues the chain without a gap
    assert [r.id for r in _rows(store)] == [1, 2] and store.run_sync(audit.verify_chain).ok


def test_a_failed_append_rolls_the_change_back(store: Store) -> None:
    def change_with_bad_details(session: Session) -> None:
        session.add(BundleRow(sha256="d" * 64, size=1, data=b"x", created_at=T0))
        audit.append(session, actor="cli", action="x", subject="y", details={"v": float("nan")},
                     now=T0)  # fmt: skip

    with pytest.raises(ValueError):
        store.run_sync(change_with_bad_details)
    assert store.run_sync(lambda s: s.get(BundleRow, "d" * 64)) is None


def test_list_records_filters_and_pages(store: Store) -> None:
    _fill(store, 5)
    since = T0 + dt.timedelta(seconds=3)
    page = store.run_sync(lambda s: audit.list_records(s, since=since))
    assert [r.id for r in page] == [3, 4, 5]
    page = store.run_sync(lambda s: audit.list_records(s, after_id=1, limit=2))
    assert [r.id for r in page] == [2, 3]
    newest = store.run_sync(lambda s: audit.list_records(s, limit=2, newest=True))
    assert [r.id for r in newest] == [4, 5]


# ---- tampering, done the way an attacker with database access would ---------------------


def test_detects_edited_details(store: Store) -> None:
    _fill(store, 5)
    _sql(store, """UPDATE audit_log SET details = '{"flow":"other"}' WHERE id = 3""")
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 3 and "altered" in report.problem
    assert report.head_id == 2 and report.records == 2


@pytest.mark.parametrize("column", ["actor", "action", "subject"])
def test_detects_edited_columns(store: Store, column: str) -> None:
    _fill(store, 3)
    _sql(store, f"UPDATE audit_log SET {column} = 'forged' WHERE id = 2")
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 2


def test_detects_an_edit_with_a_recomputed_hash(store: Store) -> None:
    """Fixing up the edited record's own hash breaks the next record's link instead."""
    _fill(store, 4)
    row = _rows(store)[1]
    forged = audit.record_hash(
        record_id=row.id, at=row.at, actor="attacker", action=row.action,
        subject=row.subject, details=row.details, prev_hash=row.prev_hash,
    )  # fmt: skip
    _sql(store, f"UPDATE audit_log SET actor = 'attacker', hash = '{forged}' WHERE id = 2")
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 3 and "does not follow" in report.problem


def test_detects_a_removed_record(store: Store) -> None:
    _fill(store, 5)
    _sql(store, "DELETE FROM audit_log WHERE id = 3")
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 4
    assert "record 3 missing" in report.problem


def test_detects_a_removed_first_record(store: Store) -> None:
    _fill(store, 2)
    _sql(store, "DELETE FROM audit_log WHERE id = 1")
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 2 and report.head_id == 0


def test_detects_swapped_records(store: Store) -> None:
    _fill(store, 5)
    _sql(
        store,
        "UPDATE audit_log SET id = 1000 WHERE id = 2",
        "UPDATE audit_log SET id = 2 WHERE id = 4",
        "UPDATE audit_log SET id = 4 WHERE id = 1000",
    )
    report = store.run_sync(audit.verify_chain)
    assert not report.ok and report.first_bad_id == 2


def test_removing_the_tail_is_only_visible_against_an_anchored_head(store: Store) -> None:
    _fill(store, 3)
    anchored = store.run_sync(audit.verify_chain).head_hash
    _sql(store, "DELETE FROM audit_log WHERE id = 3")
    report = store.run_sync(audit.verify_chain)
    assert report.ok and report.head_hash != anchored  # hence docs/audit.md: anchor the head


def test_concurrent_writers_keep_the_chain_linear(store: Store) -> None:
    """Many threads append at once (PostgreSQL runs them in parallel transactions)."""
    threads, per_thread = 6, 5
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(per_thread):
                store.run_sync(_append, worker * 100 + n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    report = store.run_sync(audit.verify_chain)
    assert report.ok and report.records == threads * per_thread
