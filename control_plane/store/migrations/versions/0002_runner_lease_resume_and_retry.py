"""runner lease, resume and retry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("runner_lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("retry_of", sa.String(length=36), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.drop_column("retry_of")
        batch_op.drop_column("resumed_at")
        batch_op.drop_column("runner_lease_expires_at")
