"""A run's code is a git branch: the run's repository, branch and accepted head, and the
commit of every completed phase and attempt.

Re-runnable like 0001: a column is added only when missing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "runs": [
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("branch", sa.String(length=300), nullable=True),
        sa.Column("branch_head", sa.String(length=64), nullable=True),
    ],
    "phases": [sa.Column("commit_sha", sa.String(length=64), nullable=True)],
    "phase_attempts": [
        sa.Column("commit_sha", sa.String(length=64), nullable=True),
        sa.Column("base_sha", sa.String(length=64), nullable=True),
    ],
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in COLUMNS.items():
        have = {column["name"] for column in inspector.get_columns(table)}
        for column in columns:
            if column.name not in have:
                op.add_column(table, column)


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.drop_column(table, column.name)
