"""Fixtures shared by the whole suite: no developer profiles, and a database URL for store
tests (SQLite, and PostgreSQL when configured; see ``tests/support/databases.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import DATABASES, postgres_database, postgres_server, sqlite_url


@pytest.fixture(autouse=True)
def _no_saved_profiles(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read (or write) the developer's own ~/.config/meridian profiles."""
    monkeypatch.setenv("MERIDIAN_CONFIG_DIR", str(tmp_path_factory.mktemp("meridian-config")))
    monkeypatch.delenv("MERIDIAN_TOKEN", raising=False)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on SQLite, and on PostgreSQL when MERIDIAN_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    yield from postgres_database(postgres_server("store tests"))
