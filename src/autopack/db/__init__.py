"""Database access: connections, transactions, statements, records. Only this package
(and :mod:`autopack.control`, through :func:`~autopack.db.transaction.run_transaction`)
touches the database.

:func:`open_database` is the single way a process gets its database: it connects, makes
sure the schema is complete (initialising a brand-new database when the caller writes,
refusing a partial one), reads the identity, checks it against an expected instance_id
when one is given, and logs the identity once. It never creates a SQLite file unless asked
to (``create=True``), and a command that only reads never sets up an empty database: it
must not answer "nothing here" from a database it just made or filled with empty tables.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from autopack.db.engine import make_engine, sqlite_file, unwritten
from autopack.db.identity import read_identity
from autopack.db.schema import ensure_schema
from autopack.db.transaction import again_on_lost_connection
from autopack.dburl import redact_url
from autopack.errors import ConfigError, DatabaseEmpty, DatabaseUnavailable, IdentityMismatch
from autopack.identity import DbIdentity
from autopack.logs import log_event

logger = logging.getLogger("autopack.db")
OPEN_TRIES = 5


@dataclass
class Database:
    engine: Engine
    identity: DbIdentity
    writer: AbstractContextManager[Any] = field(default_factory=nullcontext)
    """SQLite: one transaction per process at a time, queued in Python (an ``RLock``).

    ``BEGIN IMMEDIATE`` already serialises writers, but a blocked connection waits in
    SQLite's busy handler, which sleeps in growing steps (up to 100 ms) instead of waking
    when the lock is free; a Python lock hands over at once. Other processes on the same
    file still meet at SQLite's lock. PostgreSQL: no lock (row locks do the work)."""
    created: bool = False
    """This call created the SQLite file (the commands that may create one say so)."""
    initialised: bool = False
    """This call set up Autopack's tables in a database that had none: a file it created,
    an empty one, a new PostgreSQL database (said too: ``serve`` on one said nothing)."""

    @property
    def postgresql(self) -> bool:
        """PostgreSQL (row locks, round trips worth saving) rather than SQLite."""
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction (``BEGIN IMMEDIATE`` on SQLite); commits unless an error escapes.

        A Core connection, not an ORM ``Session``: the control plane runs named statements
        and never loads objects, and a ``Session`` costs its state machine on every begin
        and commit. Open and close it in one function on one thread: a transaction left
        open across an ``await`` or a thread hop holds SQLite's write lock for every other
        request.
        """
        with self.writer, self._connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def single_statement(self) -> Iterator[Connection]:
        """A connection for one statement that is its own transaction.

        PostgreSQL runs it in autocommit: no ``BEGIN`` and ``COMMIT`` round trips around it
        (two of the three a lease renewal cost). SQLite has no round trips to save and
        keeps its one-writer-at-a-time transaction.
        """
        if not self.postgresql:
            with self.transaction() as connection:
                yield connection
            return
        with self._connect() as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

    def _connect(self) -> Connection:
        """A connection from the pool. Every one of them busy for the pool's whole timeout
        (a lock held elsewhere, ``VACUUM FULL``, a migration: each request waits on it
        holding its connection) was SQLAlchemy's ``TimeoutError``, a bare 500 that
        executors take for a server fault; it is a 503 to retry, saying why."""
        try:
            return self.engine.connect()
        except PoolTimeout:
            pool = self.engine.pool
            waited = f"{pool.timeout():g} s" if isinstance(pool, QueuePool) else "too long"
            raise DatabaseUnavailable(
                f"every connection of this process to the database stayed in use for "
                f"{waited} ({pool.status()}): "
                "requests are waiting on the database, e.g. on a lock another session "
                "holds (pg_stat_activity shows which); try again shortly"
            ) from None

    def close(self) -> None:
        self.engine.dispose()


def cannot_open(url: str, exc: DBAPIError) -> ConfigError:
    """A driver's connection failure as the one-line error every command shows (exit 2)."""
    reason = str(exc.orig) if exc.orig is not None else str(exc)
    file = sqlite_file(url)
    if file is not None and not file.parent.is_dir():  # SQLite says "unable to open database file"
        reason = f"the directory {file.parent} does not exist (create it, or fix the path)"
    elif file is not None:
        reason += _no_room(file.parent)
    return ConfigError(
        f"cannot open database {redact_url(url)}: {reason.strip()}", url=redact_url(url)
    )


LITTLE_ROOM_BYTES = 1 << 20
"""Less room than this beside a database SQLite cannot open is worth saying."""


def _no_room(folder: Path) -> str:
    """Why SQLite may not open a file in ``folder`` whose words do not say it: it writes a
    journal, a ``-wal`` or a ``-shm`` file beside the database, even to read. A read-only
    filesystem was "unable to open database file", a full one "disk I/O error"."""
    try:
        found = os.statvfs(folder)
    except OSError:
        return ""
    if found.f_flag & os.ST_RDONLY:
        return f" ({folder} is on a read-only filesystem; SQLite writes beside the database)"
    if not os.access(folder, os.W_OK):
        return f" ({folder} is not writable by this user; SQLite writes beside the database)"
    free = found.f_bavail * found.f_frsize
    return f" (only {free:,} bytes free in {folder})" if free < LITTLE_ROOM_BYTES else ""


def open_database(
    url: str,
    *,
    role: str,
    expected_instance_id: str | None = None,
    log: bool = True,
    create: bool = False,
    initialise: bool = True,
) -> Database:
    """Connect, guard the schema, verify and log the identity. ``url`` must be resolved.

    A SQLite file that does not exist is :class:`~autopack.errors.DatabaseMissing` unless
    ``create`` is true; a database without tables is initialised if ``initialise`` (a
    process that writes: the API server, ``run create``), else
    :class:`~autopack.errors.DatabaseEmpty` (the CLI's readers).
    """
    path = sqlite_file(url)
    created = path is not None and not path.exists()
    writes = initialise or create
    if created and create and expected_instance_id:
        raise _never_pinned(url, expected_instance_id, exists=False)  # before the file is made
    if not writes and path is not None and not created and unwritten(path):
        raise _empty(url, path)  # left as it is: zero bytes
    engine = make_engine(url, create=create)
    try:
        identity, initialised = _guarded_identity(
            engine, initialise=writes and not expected_instance_id
        )
    except (OperationalError, DBAPIError) as exc:
        engine.dispose()
        raise cannot_open(url, exc) from exc
    except Exception:
        engine.dispose()
        raise
    if identity is None:
        engine.dispose()
        if expected_instance_id and writes:
            raise _never_pinned(url, expected_instance_id, exists=True)
        raise _empty(url, path)
    if expected_instance_id and identity.instance_id != expected_instance_id:
        engine.dispose()
        raise IdentityMismatch(
            f"refusing database {identity.url} (instance_id {identity.instance_id}): "
            f"AUTOPACK_EXPECTED_INSTANCE_ID expects instance_id {expected_instance_id}",
            expected_instance_id=expected_instance_id,
            actual_instance_id=identity.instance_id,
        )
    if log:
        log_event(
            logger,
            "database_identity",
            role=role,
            backend=identity.backend,
            url=identity.url,
            instance_id=identity.instance_id,
            fingerprint=identity.fingerprint,
            schema_revision=identity.schema_revision,
        )
    event.listen(engine, "connect", _same_database(identity))
    writer = threading.RLock() if engine.dialect.name == "sqlite" else nullcontext()
    return Database(engine, identity, writer, created=created, initialised=initialised)


def _same_database(identity: DbIdentity) -> Any:
    """A check of every new connection: it reaches the database this process opened, not
    one that took its name since (dropped and made again, a failover to another cluster,
    a SQLite file replaced), which a process would otherwise go on serving as if nothing
    happened. One query per new connection; pooled ones are reused."""

    def check(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT instance_id FROM db_meta ORDER BY id LIMIT 1")
            row = cursor.fetchone()
            found = row[0] if row else None
        except Exception as exc:
            if getattr(dbapi_connection, "broken", False):
                raise  # the connection died (pg_terminate_backend): retried as lost, not refused
            found = f"none ({type(exc).__name__})"  # no db_meta there: not an Autopack database
        finally:
            cursor.close()
        dbapi_connection.rollback()
        if found != identity.instance_id:
            dbapi_connection.close()
            raise DatabaseUnavailable(
                f"{identity.url} is no longer the database this process opened (instance_id "
                f"{identity.instance_id}); it now holds instance_id {found}. Restart this "
                "server (and its executors) on the database you mean.",
                expected_instance_id=identity.instance_id,
                actual_instance_id=found,
            )

    return check


def _guarded_identity(engine: Engine, *, initialise: bool) -> tuple[DbIdentity | None, bool]:
    """Guard the schema and read the identity (None: a database without tables left as it
    is, as ``initialise`` false asks), and whether this call set the database up; again on
    a new connection when the server ended ours (:func:`again_on_lost_connection`)."""

    def read() -> tuple[DbIdentity | None, bool]:
        status = ensure_schema(engine, initialise=initialise)
        if status.fresh:
            return None, False
        return read_identity(engine), status.initialised

    return again_on_lost_connection(read, OPEN_TRIES)


def _empty(url: str, path: Path | None) -> DatabaseEmpty:
    return DatabaseEmpty(
        f"{redact_url(url)} is an empty database (no tables at all)",
        path=str(path) if path is not None else redact_url(url),
    )


def _never_pinned(url: str, expected_instance_id: str, *, exists: bool) -> IdentityMismatch:
    """A database to be created or initialised under a pin: it would get a new instance_id,
    never the pinned one, and stay behind after the refusal. Refused before it is made."""
    made = "set up the empty database" if exists else "create database"
    return IdentityMismatch(
        f"refusing to {made} {redact_url(url)}: AUTOPACK_EXPECTED_INSTANCE_ID "
        f"expects instance_id {expected_instance_id}, and a new database never has it. "
        "Point DATABASE_URL at that database, or unset AUTOPACK_EXPECTED_INSTANCE_ID to "
        "create a new one.",
        expected_instance_id=expected_instance_id,
        url=redact_url(url),
    )


__all__ = ["Database", "DbIdentity", "cannot_open", "open_database"]
