"""Schema guard and migrations: the only code that changes the shape of the database.

Every table is created by Alembic migrations; no code path creates a subset of tables.
:func:`ensure_schema` is what every process runs at start: a brand-new empty database is
migrated to head, a database at head is accepted, anything else (some tables missing,
an older or unknown revision) is refused with :class:`SchemaOutOfDate`, naming the
missing pieces and the command that fixes them. Both run under a lock so that several
processes starting at once on a fresh database initialise it exactly once.

Alembic is imported only when a migration runs: every process checks the schema when it
opens the database, few migrate, and importing Alembic cost 0.2 s of every process's
start (each CLI command, each spawned API server). The check reads ``alembic_version``
itself and compares it with :data:`CODE_REVISION`, which a test holds equal to the head
of the shipped migrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from autopack.db.engine import unwritten
from autopack.db.models import Base
from autopack.dburl import redact_url
from autopack.errors import ConfigError, SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config

UPGRADE_COMMAND = "autopack db upgrade"
CODE_REVISION = "0007"
"""The migration revision this code expects: the head of ``db/migrations/versions``."""
# Arbitrary constant: PostgreSQL advisory lock that serialises schema checks and upgrades.
_PG_SCHEMA_LOCK = 727_011_337


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("autopack.db") / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _db_revision(connection: Connection, tables: set[str]) -> str | None:
    """What ``alembic_version`` says (None before the first migration); several rows
    (branches this code never made) come back joined, so they never match."""
    if "alembic_version" not in tables:
        return None
    heads = sorted(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return ",".join(heads) or None


@dataclass(frozen=True)
class SchemaStatus:
    """What the database has compared with what the code needs."""

    url: str
    db_revision: str | None
    code_revision: str
    missing_tables: list[str] = field(default_factory=list)
    missing_columns: dict[str, list[str]] = field(default_factory=dict)
    fresh: bool = False
    foreign_tables: list[str] = field(default_factory=list)
    """Tables Autopack has no model of: in a fresh database, another application's."""
    initialised: bool = False
    """:func:`ensure_schema` just set up this (fresh) database."""

    @property
    def damaged(self) -> bool:
        """Columns are missing that no pending migration adds (the revision is the code's)."""
        return bool(self.missing_columns) and self.db_revision == self.code_revision

    @property
    def in_sync(self) -> bool:
        return (
            self.db_revision == self.code_revision
            and not self.missing_tables
            and not self.missing_columns
        )

    def problem(self) -> str:
        """One paragraph a user can act on; empty when in sync."""
        if self.in_sync:
            return ""
        where = f"database {redact_url(self.url)}"
        fix = f"DATABASE_URL='{redact_url(self.url)}'"
        if self.fresh:
            return f"{where} is not initialised yet. fix: {fix} autopack db init"
        if self.db_revision != self.code_revision:
            parts = [
                f"{where} is at schema revision {self.db_revision or 'none'}, "
                f"this code needs {self.code_revision}"
            ]
        else:
            parts = [f"{where} has an incomplete schema at revision {self.db_revision}"]
        if self.missing_tables:
            parts.append("missing tables: " + ", ".join(self.missing_tables))
        for table, columns in self.missing_columns.items():
            parts.append(f"table {table} lacks columns: {', '.join(columns)}")
        fix = f"fix: {fix} {UPGRADE_COMMAND}"
        if self.damaged:
            fix = (
                "Autopack cannot add columns to tables it did not create: back the database "
                "up and initialise a new one"
            )
        return "; ".join(parts) + f". {fix}"


def inspect_schema(connection: Connection) -> SchemaStatus:
    """Compare the live schema with the models and the migration head."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    expected = Base.metadata.tables
    # One reflection query for all tables (per-table get_columns was a query each).
    columns = inspector.get_multi_columns(filter_names=sorted(set(expected) & tables))
    missing_columns = {}
    for (_, name), reflected in sorted(columns.items()):
        if name not in expected:  # SQLite reflects every table, whatever filter_names says
            continue
        have = {column["name"] for column in reflected}
        lacking = [column.name for column in expected[name].columns if column.name not in have]
        if lacking:
            missing_columns[name] = lacking
    return SchemaStatus(
        url=connection.engine.url.render_as_string(hide_password=False),
        db_revision=_db_revision(connection, tables),
        code_revision=CODE_REVISION,
        missing_tables=sorted(set(expected) - tables),
        missing_columns=missing_columns,
        fresh=not (tables & (set(expected) | {"alembic_version"})),
        foreign_tables=sorted(tables - set(expected) - {"alembic_version"}),
    )


def _lock(connection: Connection) -> None:
    # SQLite: the engine's BEGIN IMMEDIATE already holds the write lock.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})


def ensure_schema(engine: Engine, *, initialise: bool = True) -> SchemaStatus:
    """Initialise a fresh database (unless not ``initialise``: then its status is
    returned, untouched), accept one at head, refuse anything else."""
    with engine.begin() as connection:
        _lock(connection)
        status = inspect_schema(connection)
        if status.in_sync:
            return status
        if status.fresh and status.foreign_tables:
            raise _foreign(status)
        if status.fresh and not initialise:
            return status
        if status.fresh:
            from alembic import command

            command.upgrade(_alembic_config(connection), "head")
            return replace(inspect_schema(connection), initialised=True)
    raise SchemaOutOfDate(status.problem(), **_status_details(status))


def _foreign(status: SchemaStatus) -> ConfigError:
    """Another application's database (``DATABASE_URL`` of the wrong project, a typo'd
    file name): any command opening it added Autopack's twelve tables to it, a read such
    as ``run list`` too. Only ``autopack db init`` (asked for by name) does that now."""
    shown = ", ".join(status.foreign_tables[:5]) + (", …" if len(status.foreign_tables) > 5 else "")
    url = redact_url(status.url)
    return ConfigError(
        f"database {url} is not an Autopack database: it holds other tables ({shown}) and "
        "none of Autopack's, so it is left as it is. Point DATABASE_URL at an Autopack "
        f"database or a new one; to add Autopack's tables to this one, run DATABASE_URL='{url}' "
        "autopack db init",
        url=url,
        foreign_tables=status.foreign_tables,
    )


def upgrade(engine: Engine) -> SchemaStatus:
    """``autopack db upgrade``: migrate to head and re-create tables that went missing.

    Migrations are idempotent (create-if-missing), so a database stamped at some revision
    but lacking tables is repaired by replaying them from the start; rows are untouched.
    """
    from alembic import command
    from alembic.util import CommandError

    with engine.begin() as connection:
        _lock(connection)
        before = inspect_schema(connection)
        if before.damaged:
            raise SchemaOutOfDate(before.problem(), **_status_details(before))
        config = _alembic_config(connection)
        lost_identity = "db_meta" in inspect(connection).get_table_names() and not (
            connection.execute(text("SELECT COUNT(*) FROM db_meta")).scalar()
        )
        try:
            if (before.missing_tables or lost_identity) and before.db_revision is not None:
                # migrations are create-if-missing: replaying them repairs, keeping every row
                command.stamp(config, "base", purge=True)
            command.upgrade(config, "head")
        except CommandError as exc:  # a revision this code has no migration for
            raise SchemaOutOfDate(
                f"database {redact_url(before.url)} is at schema revision "
                f"{before.db_revision}, which this Autopack (up to {CODE_REVISION}) cannot "
                f"migrate from ({exc}): use the Autopack version that wrote it, or back the "
                "database up and initialise a new one",
                **_status_details(before),
            ) from exc
        after = inspect_schema(connection)
    if not after.in_sync:
        raise SchemaOutOfDate(after.problem(), **_status_details(after))
    return after


def check(engine: Engine) -> SchemaStatus:
    """Read-only status (``autopack db check``); never creates a missing SQLite file nor
    writes into an empty one."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and unwritten(Path(database)):
        return SchemaStatus(
            url=engine.url.render_as_string(hide_password=False),
            db_revision=None,
            code_revision=CODE_REVISION,
            missing_tables=sorted(Base.metadata.tables),
            fresh=True,
        )
    with engine.connect() as connection:
        return inspect_schema(connection)


def _status_details(status: SchemaStatus) -> dict[str, object]:
    return {
        "db_revision": status.db_revision,
        "code_revision": status.code_revision,
        "missing_tables": status.missing_tables,
        "missing_columns": status.missing_columns,
        "fix": UPGRADE_COMMAND,
    }
