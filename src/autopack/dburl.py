"""Database URLs: the one form every process opens, and the forms safe to show.

:func:`resolve_database_url` is why two processes given the same setting open the same
database: a relative SQLite path is made absolute when the setting is resolved (never
again by a child in another directory), and a PostgreSQL URL must name its database.
:func:`redact_url` is for logs and terminals, :func:`public_url` for ``/health``.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from autopack.paths import as_the_system_means, file_kind


def resolve_database_url(raw: str, cwd: Path | None = None) -> str:
    """Normalise a database URL so every process that receives it opens the same database.

    Relative SQLite paths become absolute against ``cwd`` (default: the working directory
    now), and bare ``postgresql://`` URLs get the psycopg 3 driver.
    """
    try:
        url = make_url(raw.strip())
    except ArgumentError as exc:
        raise ValueError(f"not a database URL ({exc})") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database lives in one process only, and Autopack's "
                "parts (this command, its API server, executors) must share one: name a "
                "file, e.g. sqlite:///autopack.db"
            )
        if url.host or url.username or url.password or url.port:
            # SQLAlchemy refused it only at the first connection, with a traceback
            raise ValueError(
                "a SQLite URL names a file on this machine, no host or user: "
                "sqlite:////path/to/autopack.db (four slashes for an absolute path)"
            )
        _refuse_another_sqlite_database(url)
        path = Path(database).expanduser()
        if not path.is_absolute():
            path = (cwd or Path.cwd()) / path
        path = as_the_system_means(path)
        _refuse_a_path_never_a_file(path)
        url = url.set(database=str(path))
    elif backend in {"postgresql", "postgres"}:
        url = _database_in_path(url)
        if not url.database:
            raise ValueError(
                "names no database, so PostgreSQL would pick one by the user's name (or "
                "PGDATABASE), which another machine or shell resolves differently: name it, "
                "e.g. postgresql://user@host:5432/autopack"
            )
        if "@" in (url.host or ""):
            # postgresql://u:p@ss@host parses as password 'p', host 'ss@host': every
            # message naming the host (config show, doctor, connection errors) showed the
            # rest of the password.
            raise ValueError(
                "its password holds a raw '@' (which cannot be told from the one before the "
                "host): percent-encode each '@' in the password as %40 (p@ss: p%40ss)"
            )
        url = url.set(drivername="postgresql+psycopg")
    else:
        raise ValueError(f"backend {backend!r} is not supported: use sqlite:/// or postgresql://")
    return url.render_as_string(hide_password=False)


def _database_in_path(url: URL) -> URL:
    """The database a ``?dbname=`` names, moved to the URL's path, where every message,
    ``/health`` and the identity handshake read it: libpq opens the query's database over
    the path's, so ``…/autopack?dbname=other`` was served as ``…/autopack`` while it
    read ``other``, and ``…/?dbname=autopack`` was named with no database at all. A URL
    naming two different databases is refused, naming both."""
    named = url.query.get("dbname")
    if named is None:
        return url
    if not isinstance(named, str):
        raise ValueError("names 'dbname' more than once: name the database once, in the path")
    if url.database and url.database != named:
        raise ValueError(
            f"names two databases, {url.database!r} in the path and {named!r} in ?dbname= "
            "(PostgreSQL would open the second): name the one you mean once, in the path"
        )
    return url.difference_update_query(["dbname"]).set(database=named)


_PYSQLITE_ARGUMENTS = frozenset(
    {"timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
)
"""The query arguments SQLAlchemy hands the driver itself; any other is a SQLite URI option."""


def _refuse_another_sqlite_database(url: URL) -> None:
    """Refuse a SQLite URL that opens another file than the path it names. A URI filename
    (``file:x.db``) is a path Autopack can neither make absolute nor check exists (from a
    subdirectory it meant a new, empty database there; without ``uri=true``, a file named
    ``file:x.db``). URI options (``?mode=ro&uri=true``) reach SQLite as part of a plain
    path, so they opened a new, empty file named ``x.db?mode=ro`` beside the database;
    without ``uri=true`` they are ignored."""
    options = sorted(set(url.query) - _PYSQLITE_ARGUMENTS)
    if (url.database or "").startswith("file:") or options:
        what = "a SQLite URI filename (file:…)" if not options else f"{', '.join(options)}"
        raise ValueError(
            f"{what}: SQLite URI filenames and options make SQLite open another file than "
            "the path the URL names (?mode=ro&uri=true: a new, empty file named "
            "'autopack.db?mode=ro'): name the file alone, e.g. sqlite:////path/to/autopack.db"
        )


def _refuse_a_path_never_a_file(path: Path) -> None:
    """Refuse a path the file system cannot hold (a name longer than it allows): every
    command asks whether the file exists, which raised ``OSError`` with a traceback there.
    Refuse a FIFO, device or socket too: SQLite "opened" one (``/dev/null``) and failed
    with "disk I/O error" after writing ``/dev/null-journal`` beside it. A path that merely
    does not exist yet is fine (``db init`` may create it); a directory is named as one
    where the database is opened."""
    try:
        found = path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return  # not there (yet), or a symlink loop: "no database at …" says so
        raise ValueError(f"its file cannot be looked at: {exc.strerror}") from None
    if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
        raise ValueError(
            f"{path} is {file_kind(found.st_mode)}, not a regular file: a SQLite database is a "
            "file (name one, e.g. sqlite:////path/to/autopack.db)"
        )


def redact_url(url: str) -> str:
    """The URL with its password hidden: safe for logs and terminals. A password holding a
    raw ``@`` (refused by :func:`resolve_database_url`, but shown where the raw setting is
    named) parses as partly the host: hidden up to the host's last ``@``."""
    parsed = make_url(url)
    if "@" in (parsed.host or ""):
        parsed = parsed.set(password="***", host=(parsed.host or "").rsplit("@", 1)[1])
    return parsed.render_as_string(hide_password=True)


def public_url(url: str) -> str:
    """The URL with password, user and host hidden: safe for ``/health`` answers."""
    parsed: URL = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.render_as_string(hide_password=True)
    return f"{parsed.get_backend_name()}://***@***/{parsed.database or ''}"
