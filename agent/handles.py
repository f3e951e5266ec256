"""Persisted provider handles, one per attempt whose infrastructure this agent started.

A handle is saved as soon as ``provider.submit`` returns and removed only after the attempt's
finished report is journaled, so an agent that restarts in between finds every attempt it still
owns and can ``recover`` it instead of leaving infrastructure running unobserved. The table
lives in the journal's SQLite file. At run time handles are written by the journal's batches
(``agent.journal.SaveHandle``/``RemoveHandle``): a handle and the report that announces it, or
an outcome and the handle's removal, commit in one transaction, sharing its fsync with every
other report of the batch. ``HandleStore`` reads them back at start (its own connection).
A sealed step's handle also records how to seal its outcome (``agent.sealing.AttemptSeal``), so
a re-attached attempt never reports its result in plaintext.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.sqlitefile import JOURNAL_FILE, open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handles (
    attempt_id TEXT PRIMARY KEY,
    fencing_token INTEGER NOT NULL,
    provider TEXT NOT NULL,
    handle_json TEXT NOT NULL,
    seal_json TEXT NOT NULL DEFAULT ''
);
"""
# Added after the first release: a journal created before it gets the column on open.
_ADD_SEAL_COLUMN = "ALTER TABLE handles ADD COLUMN seal_json TEXT NOT NULL DEFAULT ''"


@dataclass(frozen=True)
class StoredHandle:
    attempt_id: str
    fencing_token: int
    provider: str
    handle_json: str
    seal_json: str = ""  # AttemptSeal of a sealed step, "" otherwise


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the handles table (and columns added since the first release) if missing."""
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(handles)")}
    if "seal_json" not in columns:
        conn.execute(_ADD_SEAL_COLUMN)


def save_row(conn: sqlite3.Connection, stored: StoredHandle) -> None:
    """Insert or replace ``stored`` (inside the caller's transaction, if any)."""
    conn.execute(
        "INSERT OR REPLACE INTO handles "
        "(attempt_id, fencing_token, provider, handle_json, seal_json) VALUES (?, ?, ?, ?, ?)",
        (
            stored.attempt_id,
            stored.fencing_token,
            stored.provider,
            stored.handle_json,
            stored.seal_json,
        ),
    )


def delete_row(conn: sqlite3.Connection, attempt_id: str) -> None:
    conn.execute("DELETE FROM handles WHERE attempt_id = ?", (attempt_id,))


class HandleStore:
    """Durable map attempt id -> (fencing token, provider type, handle JSON)."""

    def __init__(self, data_dir: Path) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection = open_database(Path(data_dir) / JOURNAL_FILE)
        with self._lock:
            ensure_schema(self._conn)

    def save(self, stored: StoredHandle) -> None:
        with self._lock:
            save_row(self._conn, stored)

    def remove(self, attempt_id: str) -> None:
        with self._lock:
            delete_row(self._conn, attempt_id)

    def load_all(self) -> list[StoredHandle]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT attempt_id, fencing_token, provider, handle_json, seal_json FROM handles "
                "ORDER BY attempt_id"
            ).fetchall()
        return [StoredHandle(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
