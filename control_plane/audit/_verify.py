"""Checking the chain: every record's hash, every link, and that no id is missing."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.audit._chain import GENESIS_HASH, record_hash
from control_plane.store.models import AuditRecordRow

_BATCH = 1000


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`.

    ``head_id``/``head_hash`` name the last record checked; when the chain is intact, anchor
    that hash somewhere the database's owners cannot write, and a later verify (or an
    export) that no longer contains it proves the log was rewritten or truncated.
    """

    ok: bool
    records: int
    head_id: int
    head_hash: str
    first_bad_id: int | None = None
    problem: str = ""


def verify_chain(session: Session) -> VerifyReport:
    """Walk the log in id order and stop at the first record that does not hold up.

    Detects an edited record (its hash no longer matches its content), a removed one (a gap
    in the ids, and the next record's ``prev_hash`` no longer names its predecessor) and
    reordered ones (a record's id is part of its hash, and the links no longer line up).
    Removing records from the very end leaves a shorter valid chain: only an anchored head
    hash reveals that (see docs/audit.md).
    """
    expected_id, prev_hash, count = 1, GENESIS_HASH, 0
    rows = session.scalars(
        select(AuditRecordRow).order_by(AuditRecordRow.id).execution_options(yield_per=_BATCH)
    )
    for row in rows:
        problem = _check(row, expected_id, prev_hash)
        if problem:
            return VerifyReport(False, count, expected_id - 1, prev_hash, row.id, problem)
        expected_id, prev_hash, count = row.id + 1, row.hash, count + 1
    return VerifyReport(True, count, expected_id - 1, prev_hash)


def _check(row: AuditRecordRow, expected_id: int, prev_hash: str) -> str:
    if row.id != expected_id:
        missing = f"record {expected_id}" if row.id == expected_id + 1 else (
            f"records {expected_id}-{row.id - 1}")  # fmt: skip
        return f"{missing} missing: the chain jumps from {expected_id - 1} to {row.id}"
    recomputed = record_hash(
        record_id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=row.details,
        prev_hash=row.prev_hash,
    )
    if recomputed != row.hash:
        return f"record {row.id} was altered: its content no longer matches its hash"
    if row.prev_hash != prev_hash:
        return (
            f"record {row.id} does not follow record {row.id - 1}: its prev_hash "
            f"{row.prev_hash[:12]}... is not {prev_hash[:12]}..."
        )
    return ""
