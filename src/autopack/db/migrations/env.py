"""Alembic environment: always driven programmatically by :mod:`autopack.db.schema`.

The caller passes an open connection (holding the schema lock) in
``config.attributes["connection"]``; there is no alembic.ini and no URL here, so a
migration can never run against a database other than the one the caller resolved.
"""

from __future__ import annotations

from alembic import context

from autopack.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
