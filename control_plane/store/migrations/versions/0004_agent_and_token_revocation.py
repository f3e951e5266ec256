"""agent revocation and drain, join token revocation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("drain_requested_at", sa.DateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("drain_requested_at")
        batch_op.drop_column("revoked_at")
