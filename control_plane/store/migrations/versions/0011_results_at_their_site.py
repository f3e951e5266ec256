"""results that stay at their site: references, residency rules, transfers, deletions

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Step runs from before have inline results only: no reference, no referenced inputs.
    with op.batch_alter_table("step_runs") as batch:
        batch.add_column(sa.Column("result_ref_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("result_ref_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("input_refs_json", sa.Text(), nullable=True))
        batch.create_index("ix_step_runs_result_ref_sha256", ["result_ref_sha256"], unique=False)
    op.create_table(
        "environments",
        sa.Column("name", sa.String(length=253), primary_key=True),
        sa.Column("residency", sa.String(length=1024), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=False),
        sa.Column("step_key", sa.String(length=512), nullable=False),
        sa.Column("attempt_id", sa.String(length=36), nullable=True),
        sa.Column("from_environment", sa.String(length=253), nullable=False),
        sa.Column("to_environment", sa.String(length=253), nullable=False),
        sa.Column("store", sa.String(length=63), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("producer_run_id", sa.String(length=36), nullable=False),
        sa.Column("producer_step_key", sa.String(length=512), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_transfers_started_at", "transfers", ["started_at"])
    op.create_index("ix_transfers_flow_run_id", "transfers", ["flow_run_id"])
    op.create_table(
        "result_deletions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("environment", sa.String(length=253), nullable=False),
        sa.Column("store", sa.String(length=63), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
    )
    op.create_index("ix_result_deletions_environment", "result_deletions", ["environment"])


def downgrade() -> None:
    op.drop_index("ix_result_deletions_environment", table_name="result_deletions")
    op.drop_table("result_deletions")
    op.drop_index("ix_transfers_flow_run_id", table_name="transfers")
    op.drop_index("ix_transfers_started_at", table_name="transfers")
    op.drop_table("transfers")
    op.drop_table("environments")
    with op.batch_alter_table("step_runs") as batch:
        batch.drop_index("ix_step_runs_result_ref_sha256")
        batch.drop_column("input_refs_json")
        batch.drop_column("result_ref_sha256")
        batch.drop_column("result_ref_json")
