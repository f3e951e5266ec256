"""Which databases store-backed tests run on: SQLite always, PostgreSQL when configured.

Set ``MERIDIAN_TEST_POSTGRES_URL`` to a server URL (``postgresql://user:pw@host/postgres``);
every PostgreSQL-parametrised test then gets a throwaway database of its own on that server,
dropped afterwards. Without it those parametrisations skip. When it is unset and a server
answers on 127.0.0.1:5432, ``discover_postgres`` (called by tests/conftest.py) sets it to
``LOCAL_POSTGRES_URL``, the way ``.ci/run`` does, so plain ``pytest`` uses it too.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ENV = "MERIDIAN_TEST_POSTGRES_URL"
LOCAL_POSTGRES = ("127.0.0.1", 5432)
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Every skip for a missing PostgreSQL starts with this; tests/conftest.py counts them by it.
POSTGRES_SKIP_PREFIX = f"set {POSTGRES_ENV}"

# The ``params`` of every fixture parametrised over databases.
DATABASES = ("sqlite", "postgres")


def discover_postgres(probe_timeout_s: float = 1.0) -> str | None:
    """Set ``MERIDIAN_TEST_POSTGRES_URL`` to the local server when unset and one answers
    (a TCP probe of ``probe_timeout_s``); returns the URL in use, or None."""
    configured = os.environ.get(POSTGRES_ENV)
    if configured:
        return configured
    with socket.socket() as sock:
        sock.settimeout(probe_timeout_s)
        if sock.connect_ex(LOCAL_POSTGRES) != 0:
            return None
    os.environ[POSTGRES_ENV] = LOCAL_POSTGRES_URL
    return LOCAL_POSTGRES_URL


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'meridian.db'}"


def postgres_server(purpose: str) -> str:
    """The configured PostgreSQL server URL, or skip: ``purpose`` says what would have run."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_SKIP_PREFIX} to run {purpose} against PostgreSQL")
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
