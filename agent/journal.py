"""The agent's durable outbox: every report is written here before it is sent.

Reports stay in ``data_dir/journal.sqlite`` until the control plane acks them, and are replayed
in sequence order after every reconnect. Sequence numbers come from a persisted counter, so a
number is never reused, even after acks delete rows or the agent restarts (agent.proto header).
SQLite runs in WAL mode with ``synchronous=FULL``: an appended report survives a power cut.

Each call is one short transaction guarded by a lock, so it is safe from worker threads; the
agent calls it off its event loop (``asyncio.to_thread``), since a commit waits for an fsync.
At run time writes go through ``write_batch``: many reports, handle changes (``agent.handles``,
same file) and acks in one transaction, so one fsync covers a whole batch (group commit,
``agent.commits``). A batch of acks alone commits without an fsync: losing it in a crash only
means those reports are sent again, and the control plane applies each seq at most once
(Welcome's ``last_applied_seq`` drops them here too).

An entry that can never be delivered (undecodable, of an unknown kind, larger than the control
plane accepts, or refused by it again and again) is *quarantined*: moved to the ``quarantine``
table in the same transaction, so it is kept for inspection but never replayed again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import handles
from agent.handles import StoredHandle
from agent.sqlitefile import JOURNAL_FILE, open_database

__all__ = [
    "JOURNAL_FILE",
    "Ack",
    "Append",
    "Journal",
    "JournalEntry",
    "JournalOp",
    "RemoveHandle",
    "SaveHandle",
    "open_database",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('max_frame_bytes', 0);
"""


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    kind: str
    attempt_id: str
    fencing_token: int
    payload: bytes


@dataclass(frozen=True)
class Append:
    """Journal one report (its seq is assigned when the batch commits)."""

    kind: str
    attempt_id: str
    fencing_token: int
    payload: bytes


@dataclass(frozen=True)
class SaveHandle:
    stored: StoredHandle


@dataclass(frozen=True)
class RemoveHandle:
    attempt_id: str


@dataclass(frozen=True)
class Ack:
    """Forget every report with ``seq <= up_to_seq``."""

    up_to_seq: int


JournalOp = Append | SaveHandle | RemoveHandle | Ack


class Journal:
    """Durable, ordered outbox of reports keyed by a never-reused sequence number."""

    def __init__(self, data_dir: Path) -> None:
        self._lock = threading.Lock()
        self._conn = open_database(Path(data_dir) / JOURNAL_FILE)
        with self._lock:
            self._conn.executescript(_SCHEMA)
            handles.ensure_schema(self._conn)  # batches write handles in the same transaction

    def append(self, kind: str, attempt_id: str, fencing_token: int, payload: bytes) -> int:
        """Store one report durably and return its sequence number."""
        (entry,) = self.write_batch([Append(kind, attempt_id, fencing_token, payload)])
        assert entry is not None
        return entry.seq

    def write_batch(self, ops: Sequence[JournalOp]) -> list[JournalEntry | None]:
        """Apply ``ops`` in order in one transaction (one fsync): durable when this returns.

        Returns, per op, the journaled entry of an ``Append`` (with its seq) and None otherwise.
        Nothing of the batch is kept when it raises.
        """
        durable = any(not isinstance(op, Ack) for op in ops)
        results: list[JournalEntry | None] = []
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction():
                    self._apply(ops, results)
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")
        return results

    def _apply(self, ops: Sequence[JournalOp], results: list[JournalEntry | None]) -> None:
        (last,) = self._conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        seq = int(last)
        rows: list[tuple[int, str, str, int, bytes]] = []
        acked = 0
        for op in ops:
            entry: JournalEntry | None = None
            if isinstance(op, Append):
                seq += 1
                entry = JournalEntry(seq, op.kind, op.attempt_id, op.fencing_token, op.payload)
                rows.append((seq, op.kind, op.attempt_id, op.fencing_token, op.payload))
            elif isinstance(op, SaveHandle):
                handles.save_row(self._conn, op.stored)
            elif isinstance(op, RemoveHandle):
                handles.delete_row(self._conn, op.attempt_id)
            else:
                acked = max(acked, op.up_to_seq)
            results.append(entry)
        if rows:
            self._conn.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
            self._conn.executemany(
                "INSERT INTO reports (seq, kind, attempt_id, fencing_token, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        if acked:
            # Only seqs the control plane was sent, so never one appended in this batch.
            self._conn.execute("DELETE FROM reports WHERE seq <= ?", (min(acked, int(last)),))

    def quarantine(self, seq: int, reason: str) -> JournalEntry | None:
        """Move the entry ``seq`` aside for good; returns it (None when it is gone already)."""
        with self._lock, self._transaction():
            row = self._conn.execute(
                "SELECT seq, kind, attempt_id, fencing_token, payload FROM reports WHERE seq = ?",
                (seq,),
            ).fetchone()
            if row is None:
                return None
            self._conn.execute(
                "INSERT OR REPLACE INTO quarantine "
                "(seq, kind, attempt_id, fencing_token, payload, reason) VALUES (?, ?, ?, ?, ?, ?)",
                (*row, reason[:2000]),
            )
            self._conn.execute("DELETE FROM reports WHERE seq = ?", (seq,))
        return JournalEntry(int(row[0]), str(row[1]), str(row[2]), int(row[3]), bytes(row[4]))

    def quarantined(self) -> list[tuple[JournalEntry, str]]:
        """Quarantined entries with the reason each was moved aside, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, attempt_id, fencing_token, payload, reason FROM quarantine "
                "ORDER BY seq"
            ).fetchall()
        return [
            (JournalEntry(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4])), str(r[5]))
            for r in rows
        ]

    def max_frame_bytes(self) -> int:
        """The frame size the control plane last negotiated (0: never connected)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM meta WHERE key='max_frame_bytes'"
            ).fetchone()
        return int(row[0]) if row else 0

    def set_max_frame_bytes(self, value: int) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('max_frame_bytes', ?)", (value,)
            )

    def unacked(self, after_seq: int = 0, limit: int = 1000) -> list[JournalEntry]:
        """Reports with ``seq > after_seq`` still waiting for an ack, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, attempt_id, fencing_token, payload FROM reports "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [JournalEntry(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows]

    def ack(self, up_to_seq: int) -> int:
        """Forget every report with ``seq <= up_to_seq``; returns how many were deleted."""
        with self._lock, self._transaction():
            cur = self._conn.execute("DELETE FROM reports WHERE seq <= ?", (up_to_seq,))
        return cur.rowcount

    def pending_outcomes(self) -> dict[str, int]:
        """Attempts whose final report is not yet acked (attempt id -> fencing token): the
        control plane must not think the agent lost them, since their outcome is in here.

        Only ``finished`` reports count. An attempt with nothing but a RUNNING proposal (or
        logs) left here has no runner and no outcome any more (the agent died before its
        step started): claiming it would leave it RUNNING on the control plane with nobody
        running it, renewed by every heartbeat, for ever."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT attempt_id, MAX(fencing_token) FROM reports WHERE kind = 'finished' "
                "GROUP BY attempt_id"
            ).fetchall()
        return {str(attempt_id): int(token) for attempt_id, token in rows}

    def count(self) -> int:
        with self._lock:
            (n,) = self._conn.execute("SELECT COUNT(*) FROM reports").fetchone()
        return int(n)

    def last_seq(self) -> int:
        """The highest sequence number ever handed out by this journal."""
        with self._lock:
            (n,) = self._conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(n)

    def reconcile(self, last_applied_seq: int) -> None:
        """Apply a Welcome's ``last_applied_seq``.

        Normally that is an ack whose reply was lost. If the control plane has applied numbers
        this journal never issued, the journal file was lost or replaced while the identity was
        kept; renumber pending reports above it instead of letting them be dropped as applied.
        """
        with self._lock, self._transaction():
            (last,) = self._conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
            if last_applied_seq <= int(last):
                self._conn.execute("DELETE FROM reports WHERE seq <= ?", (last_applied_seq,))
                return
            offset = last_applied_seq
            # Negate first so the primary key never collides while rows move up.
            self._conn.execute("UPDATE reports SET seq = -seq")
            self._conn.execute("UPDATE reports SET seq = -seq + ?", (offset,))
            (top,) = self._conn.execute(
                "SELECT COALESCE(MAX(seq), ?) FROM reports", (offset,)
            ).fetchone()
            self._conn.execute("UPDATE meta SET value=? WHERE key='last_seq'", (int(top),))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK around one journal operation."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
