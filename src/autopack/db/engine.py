"""Engines: the only place that knows how each backend must be connected.

SQLite gets WAL (readers never block the writer), foreign keys on, a busy timeout, and
``BEGIN IMMEDIATE`` for every transaction so that a claim takes the write lock *before*
it reads the row it is about to flip: two claimers can never both see the phase as free.
PostgreSQL relies on row locks (``FOR UPDATE SKIP LOCKED``, :mod:`autopack.db.statements`).

SQLite creates a missing file on connect, so an engine for a file that does not exist is
refused unless the caller asks to create it: only the commands that make databases
(``db init``, ``run create``, ``demo``, ``serve``) do.
"""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from autopack.errors import ConfigError, DatabaseMissing, DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite otherwise
    # starts transactions lazily, too late to take the write lock up front).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def unwritten(path: Path) -> bool:
    """Is this SQLite file missing or zero bytes, a database nothing has written yet? A
    command that only reads must not connect to it: connecting writes SQLite's header (the
    WAL setting) into the file."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError:  # unreadable: the driver's own error says why
        return False


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for other backends and in-memory databases."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return Path(database)


def make_engine(url: str, *, create: bool = False) -> Engine:
    """An engine for an already resolved (absolute) database URL.

    ``create=False``: a SQLite file that does not exist raises :class:`DatabaseMissing`
    instead of being created empty on the first connection.
    """
    path = sqlite_file(url)
    if path is not None and not create and not path.exists():
        raise DatabaseMissing(path=str(path))
    if path is not None and path.is_dir():  # was "has 2 hard links" (a directory's count)
        raise ConfigError(
            f"the SQLite database {path} is a directory, not a file: name a file, e.g. "
            f"sqlite:///{path / 'autopack.db'}",
            path=str(path),
        )
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        if path is not None:
            _refuse_a_replaced_file(engine, path)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    event.listen(engine, "checkout", _discard_if_closed_by_server)
    return engine


def _refuse_a_replaced_file(engine: Engine, path: Path) -> None:
    """Refuse every transaction once the SQLite file this engine opened is gone from its
    path or another file is there (``mv other.db autopack.db``, a restored copy).

    SQLite would go on: pooled connections write to the unlinked file (lost when the
    process ends) while new ones read the new file through the old ``-wal`` (two
    databases mixed, two instance_ids from one server). A file with several hard links is
    refused too: each name gets its own ``-wal`` and ``-shm``, so a server and a drain
    opening two names of one file silently lost each other's commits. One ``stat`` per
    checkout."""
    opened: list[tuple[int, int]] = []

    def check(*_args: Any) -> None:
        try:
            found = path.stat()
            now: tuple[int, int] | None = (found.st_dev, found.st_ino)
        except FileNotFoundError:
            now = None
        if now is not None and found.st_nlink > 1:
            raise DatabaseUnavailable(
                f"the database file {path} has {found.st_nlink} hard links: SQLite keeps its "
                "WAL journal next to the name a process opened, so processes using two names "
                "of one file lose each other's writes. Keep one name (a symlink is fine) and "
                "remove the other links.",
                path=str(path),
            )
        if not opened:  # the first connection (which may create the file)
            if now is not None:
                opened.append(now)
            return
        if now != opened[0]:
            raise DatabaseUnavailable(
                f"the database file {path} was {'removed' if now is None else 'replaced'} "
                "while this process was using it: nothing more is written to either. "
                "Restart this server (and its executors) on the file you mean.",
                path=str(path),
            )

    event.listen(engine, "do_connect", check)  # before SQLite makes an empty file there
    event.listen(engine, "checkout", check)


def _discard_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Replace a pooled PostgreSQL connection the server has closed (restart, failover,
    ``pg_terminate_backend``) before it is handed out, so no request fails on it.

    An idle connection we never ``LISTEN`` on receives nothing unless the server is
    closing it (it sends a FATAL message, then FIN), so a readable socket means a dead
    connection. Polling costs one syscall; ``pool_pre_ping`` costs a round trip and a
    query on every transaction (measured 15-20 % of the control plane's throughput).
    Raising ``DisconnectionError`` makes the pool discard it and connect afresh.
    """
    if dbapi_connection.closed:
        raise DisconnectionError("this pooled PostgreSQL connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("PostgreSQL closed this pooled connection")
