"""Where a run's branch is moved when a drain names the repository: ``runs.drained_in``.

Run creation refuses a second active run on one repository's branch, but knew only the
run file's ``repository``: a run naming none, drained with ``--workspace``/``--repo``,
was in no repository to that check, so a later run on the same branch there was
created, and the two runs' compare-and-swaps lost one's commits. A drain that names a
repository records it here (after the same check), and creation checks both columns.

Re-runnable like 0001: the column is added only when missing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    if "drained_in" not in have:
        op.add_column("runs", sa.Column("drained_in", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "drained_in")
