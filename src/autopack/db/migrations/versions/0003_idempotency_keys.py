"""Idempotency keys for the worker's retried posts: usage reports and telemetry rows.

An executor retries a post whose answer it did not get (a 5xx, a dropped connection); the
key makes the retry a no-op when the first one was applied: ``phase_attempts.usage_key``
is the key of the attempt's last applied usage report (an attempt reports one call at a
time), each telemetry table has a unique ``idempotency_key``.

Re-runnable like 0001: columns and indexes are added only when missing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYED_TABLES = ("llm_usage_events", "token_estimation_v2_events", "token_budget_escalation_events")


def _add_missing(table: str, column: sa.Column[str]) -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    if column.name not in have:
        op.add_column(table, column)


def upgrade() -> None:
    _add_missing("phase_attempts", sa.Column("usage_key", sa.String(length=64), nullable=True))
    for table in KEYED_TABLES:
        _add_missing(table, sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        op.create_index(
            f"ux_{table}_idempotency_key",
            table,
            ["idempotency_key"],
            unique=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    for table in KEYED_TABLES:
        op.drop_index(f"ux_{table}_idempotency_key", table_name=table)
        op.drop_column(table, "idempotency_key")
    op.drop_column("phase_attempts", "usage_key")
