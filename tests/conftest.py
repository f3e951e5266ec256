"""Fixtures shared by the whole suite: database URLs for SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ENV = "MERIDIAN_TEST_POSTGRES_URL"


def _postgres_database(base_url: str) -> Iterator[str]:
    """Create a throwaway database on the server in ``base_url`` and drop it afterwards."""
    name = f"meridian_test_{uuid.uuid4().hex[:12]}"
    admin_url = base_url.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _no_saved_profiles(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read (or write) the developer's own ~/.config/meridian profiles."""
    monkeypatch.setenv("MERIDIAN_CONFIG_DIR", str(tmp_path_factory.mktemp("meridian-config")))
    monkeypatch.delenv("MERIDIAN_TOKEN", raising=False)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on SQLite, and on PostgreSQL when MERIDIAN_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meridian.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to run store tests against PostgreSQL")
    yield from _postgres_database(base)
