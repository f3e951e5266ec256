"""step cache keys (caching across runs)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Step runs from before caching have no key: they are never reused.
    with op.batch_alter_table("step_runs") as batch:
        batch.add_column(sa.Column("cache_key", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("cache_scope", sa.String(length=1024), nullable=True))
        batch.add_column(sa.Column("cached_from_run_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("cached_from_step_key", sa.String(length=512), nullable=True))
        batch.create_index(
            "ix_step_runs_cache_key_cache_scope_ended_at",
            ["cache_key", "cache_scope", "ended_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("step_runs") as batch:
        batch.drop_index("ix_step_runs_cache_key_cache_scope_ended_at")
        batch.drop_column("cached_from_step_key")
        batch.drop_column("cached_from_run_id")
        batch.drop_column("cache_scope")
        batch.drop_column("cache_key")
