"""Initial schema: every table of DESIGN.md §4 and the database's identity row.

Written to be re-runnable: tables and indexes are created only when missing and the
``db_meta`` row only when absent. ``autopack db upgrade`` relies on this to repair a
database that claims to be at this revision but lost a table, without touching rows.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from autopack import __version__

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "db_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_version", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id"),
        if_not_exists=True,
    )
    op.create_table(
        "llm_usage_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("stop_reason", sa.String(length=40), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("error_class", sa.String(length=200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("provider_cost_usd", sa.Float(), nullable=True),
        sa.Column("price_snapshot", sa.JSON(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_usage_run_phase",
        "llm_usage_events",
        ["run_id", "phase_id"],
        unique=False,
        if_not_exists=True,
    )

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("token_cap", sa.Integer(), nullable=True),
        sa.Column("cost_cap_usd", sa.Float(), nullable=True),
        sa.Column("max_phases", sa.Integer(), nullable=True),
        sa.Column("max_duration_minutes", sa.Integer(), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("ix_runs_state", "runs", ["state"], unique=False, if_not_exists=True)

    op.create_table(
        "token_budget_escalation_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("factor", sa.Float(), nullable=False),
        sa.Column("old_budget", sa.Integer(), nullable=False),
        sa.Column("new_budget", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_table(
        "token_estimation_v2_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("estimator_version", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("complexity", sa.String(length=20), nullable=False),
        sa.Column("deliverable_count", sa.Integer(), nullable=False),
        sa.Column("deliverables_json", sa.JSON(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("predicted_output_tokens", sa.Integer(), nullable=False),
        sa.Column("predicted_p90_tokens", sa.Integer(), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=False),
        sa.Column("budget_decided_by", sa.String(length=20), nullable=False),
        sa.Column("max_tokens_sent", sa.Integer(), nullable=False),
        sa.Column("actual_output_tokens", sa.Integer(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("stop_reason", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("parse_success", sa.Boolean(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("phase_outcome", sa.String(length=40), nullable=True),
        sa.Column("smape_percent", sa.Float(), nullable=True),
        sa.Column("waste_ratio", sa.Float(), nullable=True),
        sa.Column("underestimated", sa.Boolean(), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_estimation_run_phase",
        "token_estimation_v2_events",
        ["run_id", "phase_id"],
        unique=False,
        if_not_exists=True,
    )

    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("on_timeout", sa.String(length=20), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("responder", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_approvals_pending",
        "approval_requests",
        ["status", "timeout_at"],
        unique=False,
        if_not_exists=True,
    )

    op.create_table(
        "phases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("tier_id", sa.String(length=200), nullable=False),
        sa.Column("tier_index", sa.Integer(), nullable=False),
        sa.Column("phase_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("task_category", sa.String(length=40), nullable=False),
        sa.Column("complexity", sa.String(length=20), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_window_start", sa.Integer(), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_seconds", sa.Integer(), nullable=True),
        sa.Column("last_failure_reason", sa.Text(), nullable=True),
        sa.Column("failure_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "phase_id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_phases_claimable", "phases", ["state", "available_at"], unique=False, if_not_exists=True
    )
    op.create_index(
        "ix_phases_lease_expires_at",
        "phases",
        ["lease_expires_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_phases_run_tier", "phases", ["run_id", "tier_index"], unique=False, if_not_exists=True
    )
    op.create_index(
        "ix_phases_run_queue",
        "phases",
        ["run_id", "state", "tier_index", "phase_index", "id"],
        unique=False,
        if_not_exists=True,
    )

    op.create_table(
        "tiers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("tier_id", sa.String(length=200), nullable=False),
        sa.Column("tier_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "tier_id"),
        if_not_exists=True,
    )
    op.create_table(
        "phase_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("stop_reason", sa.String(length=80), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("files_written", sa.JSON(), nullable=False),
        sa.Column("check_results", sa.JSON(), nullable=False),
        sa.Column("audit_verdict", sa.JSON(), nullable=True),
        sa.Column("feedback", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("result_key", sa.String(length=300), nullable=True),
        sa.Column("result_response", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id", "phase_id"], ["phases.run_id", "phases.phase_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_key"),
        sa.UniqueConstraint("run_id", "phase_id", "attempt"),
        if_not_exists=True,
    )
    op.create_table(
        "phase_dependencies",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("phase_id", sa.String(length=200), nullable=False),
        sa.Column("depends_on", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "phase_id"], ["phases.run_id", "phases.phase_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "phase_id", "depends_on"),
        if_not_exists=True,
    )
    _create_identity_row()


def _create_identity_row() -> None:
    """The random instance_id is born here, once, with the database."""
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT COUNT(*) FROM db_meta")).scalar_one() == 0:
        db_meta = sa.table(
            "db_meta",
            sa.column("id", sa.Integer()),
            sa.column("instance_id", sa.String()),
            sa.column("created_at", sa.DateTime(timezone=True)),
            sa.column("created_by_version", sa.String()),
        )
        now = datetime.now(UTC)
        op.bulk_insert(
            db_meta,
            [
                {
                    "id": 1,
                    "instance_id": str(uuid.uuid4()),
                    "created_at": now
                    if bind.dialect.name != "sqlite"
                    else now.replace(tzinfo=None),
                    "created_by_version": __version__,
                }
            ],
        )


def downgrade() -> None:
    for table in (
        "phase_dependencies",
        "phase_attempts",
        "approval_requests",
        "tiers",
        "phases",
        "token_estimation_v2_events",
        "token_budget_escalation_events",
        "llm_usage_events",
        "runs",
        "db_meta",
    ):
        op.drop_table(table)
