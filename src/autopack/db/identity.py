"""Reading a live database's identity (:class:`autopack.identity.DbIdentity`) and the row
counts a user checks first when "nothing happened"."""

from __future__ import annotations

import hashlib
import os

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from autopack.db.models import DbMeta, LlmUsageEvent, Phase, Run, TokenEstimationEvent
from autopack.db.schema import UPGRADE_COMMAND, inspect_schema
from autopack.db.transaction import connection_lost
from autopack.dburl import public_url, redact_url
from autopack.errors import SchemaOutOfDate
from autopack.identity import DbIdentity

COUNTED_TABLES = {
    "runs": Run,
    "phases": Phase,
    "llm_usage_events": LlmUsageEvent,
    "token_estimation_v2_events": TokenEstimationEvent,
}


def _location(connection: Connection) -> tuple[str, str | None, str | None]:
    """(physical location, database name, system identifier) of the connected database."""
    if connection.dialect.name == "sqlite":
        return _sqlite_file(connection.engine.url.database or ":memory:"), None, None
    name = connection.execute(text("SELECT current_database()")).scalar_one()
    system_id: str | None = None
    try:
        with connection.begin_nested():
            system_id = str(
                connection.execute(
                    text("SELECT system_identifier FROM pg_control_system()")
                ).scalar_one()
            )
    except DBAPIError as exc:  # needs superuser or pg_monitor; the database name still counts
        if connection_lost(exc):
            # Not a refusal: read as "unknown cluster", a lost connection here gave /health
            # another fingerprint, and a client a false identity mismatch.
            raise
        system_id = None
    return f"{system_id or 'unknown-cluster'}/{name}", name, system_id


def _sqlite_file(database: str) -> str:
    """The file SQLite opened, as the kernel names it: device and inode. One file reached
    under two paths (a bind mount: the server in a container at ``/data/autopack.db``, the
    CLI on the host at ``~/project/autopack.db``) is one database; its real paths differed,
    so the two were told they used different databases. A copy is another inode, so a
    restored backup (same ``instance_id``) stays another database, as does a file replaced
    under a server that still holds the old one open."""
    path = os.path.realpath(database)
    try:
        found = os.stat(path)
    except OSError:  # ":memory:", or gone since it was opened: its path is all there is
        return path
    return f"file {found.st_dev}:{found.st_ino}"


def read_identity(engine: Engine) -> DbIdentity:
    """The identity of the database behind ``engine`` (schema must exist: see ensure_schema)."""
    with engine.connect() as connection:
        status = inspect_schema(connection)
        instance_id = connection.execute(
            select(DbMeta.instance_id).order_by(DbMeta.id).limit(1)
        ).scalar_one_or_none()
        if instance_id is None:
            shown = redact_url(engine.url.render_as_string(hide_password=False))
            raise SchemaOutOfDate(
                f"database {shown} has no identity: its db_meta table is empty (emptied by "
                f"hand?). fix: DATABASE_URL='{shown}' {UPGRADE_COMMAND} gives it a new "
                "instance_id (servers and executors that knew the old one will refuse it)",
                missing_rows=["db_meta"],
                fix=UPGRADE_COMMAND,
            )
        location, name, system_id = _location(connection)
    url = engine.url.render_as_string(hide_password=False)
    digest = hashlib.sha256(f"{engine.dialect.name}|{instance_id}|{location}".encode())
    return DbIdentity(
        instance_id=instance_id,
        backend=engine.dialect.name,
        url=redact_url(url),
        public_url=public_url(url),
        fingerprint=digest.hexdigest()[:16],
        schema_revision=status.db_revision,
        code_revision=status.code_revision,
        in_sync=status.in_sync,
        database_name=name,
        system_identifier=system_id,
    )


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows in the tables a user checks first when "nothing happened"."""
    with engine.connect() as connection:
        return {
            table: connection.execute(select(func.count()).select_from(model)).scalar_one()
            for table, model in COUNTED_TABLES.items()
        }
