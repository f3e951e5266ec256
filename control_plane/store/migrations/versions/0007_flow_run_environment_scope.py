"""flow run environment scope

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs from before scoping were triggered without a scope: "[]" (visible to unscoped
    # tokens only, as before).
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("scope", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("scope")
