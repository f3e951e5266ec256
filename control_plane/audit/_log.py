"""Appending to the audit log inside the caller's transaction, and reading it back.

``append`` only queues the record on the session; a ``before_commit`` hook writes the queued
records as the last statements of that same transaction. Two reasons:

* The chain must be linear with several writers, so writing takes a chain-wide lock. Taking
  it last, after every row lock the change needed, means a transaction that holds it never
  waits for another lock, so it cannot be part of a deadlock (taking it mid-way could:
  "A holds the chain lock and waits for run R; B holds run R and waits for the chain lock").
* The record commits or rolls back with the change it records: a rolled-back change leaves
  no record, and a record that cannot be written rolls the change back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from control_plane.audit._chain import GENESIS_HASH, details_text, record_hash
from control_plane.store.models import AuditRecordRow
from control_plane.store.tx import CLI_ACTOR, SYSTEM_ACTOR, current_actor

SYSTEM = SYSTEM_ACTOR
CLI = CLI_ACTOR
MAX_SUBJECT = 255
MAX_ACTOR = 128

_PENDING_KEY = "meridian.audit.pending"
# pg_advisory_xact_lock key: any constant unique to this use; "MRDNAUDT" as an integer.
_CHAIN_LOCK_KEY = 0x4D52444E41554454


def agent_actor(agent_id: str) -> str:
    return f"agent:{agent_id}"


def token_actor(token_id: str) -> str:
    return f"token:{token_id}"


@dataclass(frozen=True)
class _Pending:
    at: dt.datetime
    actor: str
    action: str
    subject: str
    details: str


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    now: dt.datetime,
) -> None:
    """Record ``action`` in the transaction running on ``session`` (written at its commit).

    ``details`` must be JSON-serialisable; it is encoded canonically right away, so later
    changes to the objects it was built from do not leak into the record.
    """
    if now.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    if actor == CLI:
        actor = current_actor()
    pending = _Pending(
        at=now,
        actor=actor[:MAX_ACTOR],
        action=action,
        subject=subject[:MAX_SUBJECT],
        details=details_text(details),
    )
    session.info.setdefault(_PENDING_KEY, []).append(pending)


def _lock_chain(session: Session) -> None:
    """Serialise appenders until this transaction ends.

    PostgreSQL: a transaction-scoped advisory lock; it is released by commit or rollback, and
    under READ COMMITTED the head read after it sees every chain write committed before.
    SQLite admits one writer at a time, but a transaction only becomes the writer at its first
    write, and the server is not the only process writing (``meridian tokens create`` runs on
    the host). A write that changes nothing makes this transaction the writer (waiting out
    the busy timeout) before it reads the head. Should either lock ever fail, the unique
    ``id`` and ``prev_hash`` columns make a forking insert fail instead of succeed.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
    elif dialect == "sqlite":
        session.execute(text("UPDATE audit_log SET id = id WHERE id < 0"))


def _write_pending(session: Session) -> None:
    pending: list[_Pending] | None = session.info.pop(_PENDING_KEY, None)
    if not pending:
        return
    session.flush()  # the change itself first: its row locks are taken before the chain lock
    _lock_chain(session)
    head = session.execute(
        select(AuditRecordRow.id, AuditRecordRow.hash).order_by(AuditRecordRow.id.desc()).limit(1)
    ).first()
    last_id, last_hash = (head[0], head[1]) if head is not None else (0, GENESIS_HASH)
    for item in pending:
        last_id += 1
        row_hash = record_hash(
            record_id=last_id,
            at=item.at,
            actor=item.actor,
            action=item.action,
            subject=item.subject,
            details=item.details,
            prev_hash=last_hash,
        )
        session.add(
            AuditRecordRow(
                id=last_id,
                at=item.at,
                actor=item.actor,
                action=item.action,
                subject=item.subject,
                details=item.details,
                prev_hash=last_hash,
                hash=row_hash,
            )
        )
        last_hash = row_hash
    session.flush()


def _discard_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


# Class-level listeners: every session of the control plane may append. Sessions that never
# append pay one dictionary lookup per commit.
if not event.contains(Session, "before_commit", _write_pending):
    event.listen(Session, "before_commit", _write_pending)
    event.listen(Session, "after_rollback", _discard_pending)


def list_records(
    session: Session,
    *,
    since: dt.datetime | None = None,
    after_id: int = 0,
    limit: int = 100,
    newest: bool = False,
) -> Sequence[AuditRecordRow]:
    """Records in chain order, at or after ``since`` and with id above ``after_id``.

    ``newest`` picks the last ``limit`` matching records instead of the first (still returned
    oldest first), which is what a quick look wants.
    """
    query = select(AuditRecordRow).where(AuditRecordRow.id > after_id)
    if since is not None:
        query = query.where(AuditRecordRow.at >= since)
    order = AuditRecordRow.id.desc() if newest else AuditRecordRow.id
    rows = list(session.scalars(query.order_by(order).limit(limit)))
    return rows[::-1] if newest else rows
