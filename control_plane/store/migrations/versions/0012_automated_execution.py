"""automated execution: deployments and versions, schedules and fired slots, trigger keys,
webhooks, concurrency limits and their slots, hosted-runner and subflow columns on runs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Runs from before are ad-hoc runs with a local runner: no deployment, no hosted runner.
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("deployment_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("deployment_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trigger_detail", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("parent_key", sa.String(length=512), nullable=True))
        batch.add_column(
            sa.Column("wants_runner", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("runner_target", sa.String(length=1024), nullable=True))
        batch.add_column(
            sa.Column("runner_epoch", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("runner_agent_id", sa.String(length=36), nullable=True))
        batch.add_column(
            sa.Column("runner_resumes", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("on_runner_lost", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("max_runner_resumes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("start_after", _TS, nullable=True))
        batch.create_index("ix_flow_runs_deployment_id", ["deployment_id"], unique=False)
        batch.create_index("ix_flow_runs_parent_run_id", ["parent_run_id"], unique=False)
        batch.create_index("ix_flow_runs_wants_runner", ["wants_runner"], unique=False)
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False, unique=True),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("deleted_at", _TS, nullable=True),
    )
    op.create_table(
        "deployment_versions",
        sa.Column(
            "deployment_id", sa.String(length=36), sa.ForeignKey("deployments.id"), primary_key=True
        ),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column(
            "bundle_sha256", sa.String(length=64), sa.ForeignKey("bundles.sha256"), nullable=False
        ),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column(
            "deployment_id", sa.String(length=36), sa.ForeignKey("deployments.id"), nullable=False
        ),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("catch_up", sa.JSON(), nullable=False),
        sa.Column("jitter_s", sa.Float(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("evaluated_through", _TS, nullable=False),
        sa.Column("next_fire_at", _TS, nullable=True),
    )
    op.create_index("ix_schedules_deployment_id", "schedules", ["deployment_id"])
    op.create_index("ix_schedules_active_next_fire_at", "schedules", ["active", "next_fire_at"])
    op.create_table(
        "schedule_fires",
        sa.Column("deployment_id", sa.String(length=36), primary_key=True),
        sa.Column("slot_key", sa.String(length=128), primary_key=True),
        sa.Column("schedule_id", sa.String(length=36), nullable=False),
        sa.Column("nominal_at", _TS, nullable=False),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("fired_at", _TS, nullable=False),
    )
    op.create_table(
        "trigger_keys",
        sa.Column("deployment_id", sa.String(length=36), primary_key=True),
        sa.Column("key", sa.String(length=255), primary_key=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_trigger_keys_created_at", "trigger_keys", ["created_at"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column(
            "deployment_id", sa.String(length=36), sa.ForeignKey("deployments.id"), nullable=False
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_index("ix_webhooks_deployment_id", "webhooks", ["deployment_id"])
    op.create_table(
        "concurrency_limits",
        sa.Column("name", sa.String(length=128), primary_key=True),
        sa.Column("limit", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "limit_slots",
        sa.Column("limit_name", sa.String(length=160), primary_key=True),
        sa.Column("holder_id", sa.String(length=160), primary_key=True),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", _TS, nullable=True),
        sa.Column("expires_at", _TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("limit_slots")
    op.drop_table("concurrency_limits")
    op.drop_index("ix_webhooks_deployment_id", table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_index("ix_trigger_keys_created_at", table_name="trigger_keys")
    op.drop_table("trigger_keys")
    op.drop_table("schedule_fires")
    op.drop_index("ix_schedules_active_next_fire_at", table_name="schedules")
    op.drop_index("ix_schedules_deployment_id", table_name="schedules")
    op.drop_table("schedules")
    op.drop_table("deployment_versions")
    op.drop_table("deployments")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_index("ix_flow_runs_wants_runner")
        batch.drop_index("ix_flow_runs_parent_run_id")
        batch.drop_index("ix_flow_runs_deployment_id")
        for column in (
            "start_after",
            "max_runner_resumes",
            "on_runner_lost",
            "runner_resumes",
            "runner_agent_id",
            "runner_epoch",
            "runner_target",
            "wants_runner",
            "parent_key",
            "parent_run_id",
            "trigger_detail",
            "deployment_version",
            "deployment_id",
        ):
            batch.drop_column(column)
