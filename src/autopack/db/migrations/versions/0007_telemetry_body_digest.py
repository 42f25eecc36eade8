"""Telemetry body digests: an idempotency key reused for another event is a 409.

A telemetry post retried after its answer was lost is stored once, under its key. A key
posted again with another body (a client that reuses keys) was answered with the first
row's id as if stored, and the second event (a call and what it cost) was lost without a
word. Each row now keeps a digest of the body it was stored from: the same body again is
the retry it looks like, another body a conflict the client hears about (its recorder
counts a failed write). Rows stored before this revision have none and answer as before.

Re-runnable like 0001: the columns are added only when missing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("llm_usage_events", "token_estimation_v2_events", "token_budget_escalation_events")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        if "body_digest" not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column("body_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "body_digest")
