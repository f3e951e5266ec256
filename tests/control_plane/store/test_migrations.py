"""Alembic migrations build exactly the schema the models describe, and keep data on upgrade."""

from __future__ import annotations

import datetime as dt

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text

from control_plane.store.db import MIGRATIONS_DIR, Store
from control_plane.store.models import Base, FlowRunRow


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def test_head_matches_the_models(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        store.close()


def test_upgrade_from_the_first_revision_keeps_rows(db_url: str) -> None:
    store = Store(db_url)
    config = alembic_config()
    try:
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            conn.execute(
                text("INSERT INTO bundles (sha256, size, data, created_at) VALUES (:s, 1, :d, :t)"),
                {"s": "a" * 64, "d": b"x", "t": dt.datetime(2026, 1, 1)},
            )
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM bundles")).scalar() == 1
            columns = conn.execute(text("SELECT resumed_at, retry_of FROM flow_runs")).all()
            assert columns == []
    finally:
        store.close()


def test_runs_from_before_scoping_become_unscoped(db_url: str) -> None:
    """0007 adds ``flow_runs.scope``; existing runs get ``[]`` (visible to unscoped tokens)."""
    store = Store(db_url)
    config = alembic_config()
    try:
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0006")
            at = dt.datetime(2026, 1, 1)
            conn.execute(
                text("INSERT INTO bundles (sha256, size, data, created_at) VALUES (:s, 1, :d, :t)"),
                {"s": "a" * 64, "d": b"x", "t": at},
            )
            conn.execute(
                text(
                    "INSERT INTO flow_runs (id, flow_name, entrypoint, trigger, parameters_json, "
                    "bundle_sha256, state, created_at) "
                    "VALUES ('r1', 'f', 'f.py:f', 'api', '{}', :s, 'COMPLETED', :t)"
                ),
                {"s": "a" * 64, "t": at},
            )
        store.migrate()
        run = store.run_sync(lambda session: session.get(FlowRunRow, "r1"))
        assert run is not None and run.scope == []
    finally:
        store.close()
