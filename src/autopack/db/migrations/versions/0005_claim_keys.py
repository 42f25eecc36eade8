"""Claim keys: a claim retried after its answer was lost returns the lease it was granted.

An executor retries ``POST /claims`` when it got no answer (a dropped connection, a read
timeout); the first try may have been applied. Without a key the retry leased a second
phase, and the first stayed EXECUTING under a lease nobody knew of until it expired, its
attempt spent (with one attempt allowed, the phase FAILED without having run).
``phase_attempts.claim_key`` is the key the claim carried.

Re-runnable like 0001: the column and its index are added only when missing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("phase_attempts")}
    if "claim_key" not in have:
        op.add_column("phase_attempts", sa.Column("claim_key", sa.String(length=64)))
    op.create_index(
        "ix_phase_attempts_claim_key", "phase_attempts", ["claim_key"], if_not_exists=True
    )


def downgrade() -> None:
    op.drop_index("ix_phase_attempts_claim_key", table_name="phase_attempts")
    op.drop_column("phase_attempts", "claim_key")
