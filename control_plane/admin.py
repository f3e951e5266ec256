"""Operations run on the control-plane host against its store (no server needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from control_plane.auth.enrollment import create_join_token_row
from control_plane.store.db import Store, sqlite_url


def create_join_token(
    data_dir: Path, environment: str, *, ttl_s: float = 3600.0, db_url: str | None = None
) -> str:
    """Issue a one-time join token for ``environment``; only its hash is stored."""
    store = Store(db_url or sqlite_url(Path(data_dir) / "meridian.db"))
    try:
        store.migrate()
        now = dt.datetime.now(dt.UTC)
        return store.run_sync(create_join_token_row, environment, ttl_s, now)
    finally:
        store.close()
