"""join token pinned labels

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tokens and agents from before pinning pin nothing: "{}".
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("pinned_labels", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("pinned_labels")
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("labels")
