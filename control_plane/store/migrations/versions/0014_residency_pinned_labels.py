"""residency judged by pinned labels only: an environment's rule may count only the labels
join tokens fixed, never those an agent claims

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rules set before this judged every label, claimed or pinned: they keep doing so.
    with op.batch_alter_table("environments") as batch:
        batch.add_column(
            sa.Column(
                "residency_pinned_only", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("environments") as batch:
        batch.drop_column("residency_pinned_only")
