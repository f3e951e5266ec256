"""transfer method: how a result transfer's bytes moved (relay | presigned)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every transfer before presigned URLs went through the relay.
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(
            sa.Column("method", sa.String(length=16), nullable=False, server_default="relay")
        )


def downgrade() -> None:
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("method")
