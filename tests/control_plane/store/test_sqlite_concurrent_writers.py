"""Two processes' stores on one SQLite file (the server and an offline admin command): a
transaction that reads before it writes must not fail with "database is locked" because the
other committed in between; it waits for the write lock instead."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text

from control_plane.store.db import Store, sqlite_url
from tests.support.deadlines import DEADLINE_S


def test_a_read_then_write_transaction_survives_another_stores_commit(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "shared.db")
    first, second = Store(url), Store(url)
    try:
        first.run_sync(lambda s: s.execute(text("CREATE TABLE notes (who TEXT)")))
        read_done = threading.Event()
        errors: list[BaseException] = []

        def read_then_write(session: Any) -> None:
            session.execute(text("SELECT count(*) FROM notes")).scalar_one()
            read_done.set()
            # Give the other store every chance to commit between our read and our write.
            other.join(timeout=0.5)
            session.execute(text("INSERT INTO notes VALUES ('first')"))

        def write_after_the_read() -> None:
            try:
                assert read_done.wait(DEADLINE_S)
                second.run_sync(lambda s: s.execute(text("INSERT INTO notes VALUES ('second')")))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        other = threading.Thread(target=write_after_the_read)
        other.start()
        first.run_sync(read_then_write)
        other.join(DEADLINE_S)
        assert not other.is_alive()
        assert errors == []
        rows = first.run_sync(lambda s: sorted(s.execute(text("SELECT who FROM notes")).scalars()))
        assert rows == ["first", "second"]
    finally:
        first.close()
        second.close()
