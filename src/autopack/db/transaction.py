"""One transaction as the control plane uses it: a connection, one ``now``, and typed reads.

Every rule of :mod:`autopack.control` runs inside :func:`run_transaction`, which opens a
Core connection (:meth:`Database.transaction`), hands it over as a :class:`Tx` and
commits when the work returns. The work is retried, on a fresh connection, when
PostgreSQL resolved a deadlock or a serialization conflict by aborting it (nothing was
applied, so running it again is the whole recovery), and when its connection died.

Rows leave this layer as typed records (:mod:`autopack.db.records`): ``tx.one(PhaseRecord,
statement, params)`` rather than a mapping indexed by column names.
"""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from sqlalchemy import Connection, RowMapping
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError
from sqlalchemy.sql import Executable

from autopack.clock import utcnow
from autopack.db.engine import SQLITE_BUSY_TIMEOUT_MS
from autopack.errors import DatabaseFull, DatabaseUnavailable
from autopack.identity import DbIdentity
from autopack.logs import log_event

if TYPE_CHECKING:
    from autopack.db import Database

logger = logging.getLogger("autopack.db")

T = TypeVar("T")
R = TypeVar("R", bound="FromRow")
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
"""Admin shutdown (``pg_terminate_backend``), crash shutdown, cannot connect now; class 08
(connection exception) too."""
MAX_TRANSACTION_TRIES = 5


class FromRow(Protocol):
    """A typed record that can be built from a result row (:mod:`autopack.db.records`)."""

    @classmethod
    def from_row(cls: type[R], row: RowMapping, prefix: str = "") -> R: ...


@dataclass
class Tx:
    """One transaction: its connection, its single ``now``, and the database it is in."""

    conn: Connection
    now: datetime
    identity: DbIdentity
    pg: bool

    def execute(self, statement: Executable, params: Params | None = None) -> CursorResult[Any]:
        return self.conn.execute(statement, params)

    def row(self, statement: Executable, params: Params | None = None) -> RowMapping | None:
        return self.execute(statement, params).mappings().first()

    def rows(self, statement: Executable, params: Params | None = None) -> Sequence[RowMapping]:
        return self.execute(statement, params).mappings().all()

    def one(self, record: type[R], statement: Executable, params: Params | None = None) -> R | None:
        """The first row as a ``record``, or None."""
        found = self.row(statement, params)
        return None if found is None else record.from_row(found)

    def all(self, record: type[R], statement: Executable, params: Params | None = None) -> list[R]:
        return [record.from_row(found) for found in self.rows(statement, params)]

    def scalar(self, statement: Executable, params: Params | None = None) -> Any:
        return self.execute(statement, params).scalar()

    def count(self, statement: Executable, params: Params | None = None) -> int:
        return int(cast(int, self.execute(statement, params).scalar_one()))

    def where(self) -> str:
        """Which database, for messages: a 404 must say where it looked."""
        return f"database {self.identity.public_url} (instance_id {self.identity.instance_id})"


CHECKOUT_EXHAUSTED = "This connection is closed"
"""What SQLAlchemy's pool raises (an ``InvalidRequestError``) when every connection it
opened for a checkout was closed by the server before it could be handed out."""


def connection_lost(exc: DBAPIError | InvalidRequestError) -> bool:
    """Did this fail because the connection died (server restart, failover,
    ``pg_terminate_backend``, a network cut) rather than because of what it ran?"""
    if isinstance(exc, InvalidRequestError):
        return str(exc) == CHECKOUT_EXHAUSTED
    if exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError) and exc.statement is None:
        return True  # no statement ran: the connection could not be opened
    code = getattr(exc.orig, "sqlstate", None) or ""
    return code.startswith("08") or code in CONNECTION_SQLSTATES


LOST_READ_PATIENCE_SECONDS = 10.0
"""How long a read whose connections a reachable server keeps ending is asked again."""


def again_on_lost_connection(read: Callable[[], T], tries: int = 5) -> T:
    """``read()``, again on a new connection when the server ended ours (a restart, a
    failover, ``pg_terminate_backend``) mid-read or while it was being set up (then
    psycopg has no SQLSTATE to tell it from a refused connection, so a database that
    cannot be reached at all is asked again too: ``tries`` times in a row, about a second
    more before saying so). A server that ended a connection after running a statement on
    it is up: that is asked again for :data:`LOST_READ_PATIENCE_SECONDS` however often it
    happens, since a count of tries was what a server terminating connections every
    tenth of a second exhausted (an open on a loaded machine failed five times in a row).
    For reads outside :func:`run_transaction`: opening a database, ``/health``. A checkout
    the pool gave up on (:data:`CHECKOUT_EXHAUSTED`, every backend terminated at once) is
    one too: it answered /health 503 to executors joining a drain while the database was up."""
    deadline = time.monotonic() + LOST_READ_PATIENCE_SECONDS
    unanswered = 0
    attempt = 0
    while True:
        attempt += 1
        try:
            return read()
        except (DBAPIError, InvalidRequestError) as exc:
            if not connection_lost(exc):
                raise
            answered = isinstance(exc, DBAPIError) and exc.statement is not None
            unanswered = 0 if answered else unanswered + 1
            if unanswered == tries or time.monotonic() > deadline:
                raise
            time.sleep(min(0.1 * attempt, 0.5))


def run_transaction(database: Database, work: Callable[[Tx], T]) -> T:
    """Run ``work`` in one transaction; retry it when PostgreSQL aborted it (deadlock,
    serialization failure: nothing was applied) or its connection died (on a new
    connection); raise everything else. A database still unreachable after
    MAX_TRANSACTION_TRIES is :class:`DatabaseUnavailable` (503), never a bare 500.

    Retrying after a lost connection is safe for every operation because each one is
    safe to repeat: results carry idempotency keys (or a spent lease token), usage
    reports and telemetry rows idempotency keys, heartbeats are fenced by the lease, and a
    claim carries a claim key (run again after its COMMIT reached the server, it gets the
    lease it was granted; one without a key leaves a lease that expires and is reclaimed).
    """
    for attempt in range(1, MAX_TRANSACTION_TRIES + 1):
        try:
            with database.transaction() as connection:
                return work(Tx(connection, utcnow(), database.identity, database.postgresql))
        except (DBAPIError, InvalidRequestError) as exc:
            if sqlite_busy(exc):
                raise busy(exc) from exc
            if storage_full(exc):
                raise full(exc, database) from exc
            lost = connection_lost(exc)
            code = getattr(getattr(exc, "orig", None), "sqlstate", None)
            if not lost and code not in RETRYABLE_SQLSTATES:
                raise
            if attempt == MAX_TRANSACTION_TRIES:
                if lost:
                    raise unavailable(exc, attempt) from exc
                raise
            log_event(
                logger,
                "transaction_retry",
                logging.WARNING,
                sqlstate=code,
                connection_lost=lost,
                tries=attempt,
            )
            # a dead connection usually means a restarting server: wait a little longer
            time.sleep(random.uniform(0, (0.2 if lost else 0.02) * attempt))
    raise AssertionError("unreachable")


def sqlite_busy(exc: DBAPIError | InvalidRequestError) -> bool:
    """Did SQLite give up waiting for a lock another process holds (``database is
    locked``: a ``sqlite3`` shell in a transaction, a backup, a second server's long
    write)? It waited ``busy_timeout`` already (:data:`SQLITE_BUSY_TIMEOUT_MS`)."""
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return isinstance(exc, OperationalError) and code in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def busy(exc: DBAPIError | InvalidRequestError) -> DatabaseUnavailable:
    """A lock held past the busy timeout as a 503 the client may retry: it was a bare 500
    (an unexpected ``OperationalError``), which executors take for a server fault."""
    seconds = SQLITE_BUSY_TIMEOUT_MS // 1000
    return DatabaseUnavailable(
        f"the SQLite database stayed locked by another connection for {seconds} s "
        f"({getattr(exc, 'orig', None) or exc}); try again shortly"
    )


DISK_FULL_SQLSTATE = "53100"
"""PostgreSQL's ``disk_full``: the server's data directory has no room left."""


def storage_full(exc: DBAPIError | InvalidRequestError) -> bool:
    """Did the database have no room to write (SQLite's ``database or disk is full``,
    PostgreSQL's ``disk_full``)? A SQLite COMMIT that found no room came without a
    statement and was taken for a lost connection: asked again five times, it was a 503
    saying "the database connection failed … try again shortly", the full disk nowhere."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
        getattr(orig, "sqlstate", None) == DISK_FULL_SQLSTATE
    )


def full(exc: DBAPIError | InvalidRequestError, database: Database) -> DatabaseFull:
    """No room to write as a 507 naming the database and the room left where it is."""
    url = database.engine.url
    where = f"PostgreSQL database {url.database} on {url.host}"
    if not database.postgresql and url.database:
        folder = Path(url.database).parent
        try:
            room = f"{shutil.disk_usage(folder).free:,} bytes free"
        except OSError as error:
            room = error.strerror or str(error)
        where = f"SQLite database {url.database} ({room} in {folder})"
    cause = getattr(exc, "orig", None) or exc
    return DatabaseFull(
        f"the {where} has no room to write ({cause}): nothing of this request was "
        "recorded; free space there, then run the command again"
    )


def unavailable(exc: DBAPIError | InvalidRequestError, tries: int) -> DatabaseUnavailable:
    cause = getattr(exc, "orig", None) or exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return DatabaseUnavailable(
        f"the database connection failed {tries} times in a row ({type(cause).__name__}: "
        f"{reason}); try again shortly"
    )
