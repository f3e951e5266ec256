"""The agent's one SQLite file (``data_dir/journal.sqlite``) and how it is opened.

The journal (``agent.journal``) and the persisted handles (``agent.handles``) live in it, so a
batch of reports and handle changes commits in one transaction with one fsync.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

JOURNAL_FILE = "journal.sqlite"


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating) one of the agent's SQLite files with the durability settings we rely on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so each call is one transaction.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn
