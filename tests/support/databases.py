"""Which databases store-backed tests run on: SQLite always, PostgreSQL when configured.

Set ``MERIDIAN_TEST_POSTGRES_URL`` to a server URL (``postgresql://user:pw@host/postgres``);
every PostgreSQL-parametrised test then gets a throwaway database of its own on that server,
dropped afterwards. Without it those parametrisations skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ENV = "MERIDIAN_TEST_POSTGRES_URL"

# The ``params`` of every fixture parametrised over databases.
DATABASES = ("sqlite", "postgres")


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'meridian.db'}"


def postgres_server(purpose: str) -> str:
    """The configured PostgreSQL server URL, or skip: ``purpose`` says what would have run."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to run {purpose} against PostgreSQL")
    return base


def postgres_database(base_url: str) -> Iterator[str]:
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
