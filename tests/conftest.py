"""Fixtures: a fresh real database per test, on SQLite and on PostgreSQL.

PostgreSQL comes from ``AUTOPACK_TEST_POSTGRES_URL`` (default: trust auth on
127.0.0.1:5432). Each test that asks for ``database_url`` gets its own throw-away
database, dropped afterwards. Without a server the PostgreSQL cases skip with the
reason, except under ``CI=true`` where a missing server fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from autopack.db import Database, open_database
from tests.executor_support import stop_drains
from tests.support import SETTING_NAMES

PG_ADMIN_URL = os.environ.get(
    "AUTOPACK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first: started last, a minute-long test would leave the other
    pytest worker idle at the end of ``make test``."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin() -> str:
    """A reachable PostgreSQL admin URL, or skip (fail under CI=true)."""
    try:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_ADMIN_URL


def create_pg_database(admin_url: str) -> str:
    """CREATE DATABASE with a unique name; returns its URL."""
    # AUTOPACK_TEST_PG_PREFIX: a shared PostgreSQL server's naming rule for scratch databases
    prefix = os.environ.get("AUTOPACK_TEST_PG_PREFIX", "autopack_test_")
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    assert name, f"{url} names no database"
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's Autopack settings, their .env file or their cache (the
    test's subprocesses inherit its own cache directory through XDG_CACHE_HOME); no drain a
    test started outlives it."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    yield
    stop_drains()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    backend_name: str = request.param
    return backend_name


def empty_sqlite(path: Path) -> str:
    """An empty SQLite database file (zero bytes is a valid, empty database), as a URL.

    Like a freshly created PostgreSQL database it exists and holds nothing, so commands
    that never create a database (only initialise an empty one) can use it.
    """
    path.touch()
    return f"sqlite:///{path}"


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A brand-new, empty database on ``backend`` (absolute URL)."""
    if backend == "sqlite":
        yield empty_sqlite(tmp_path / "autopack.db")
        return
    admin = request.getfixturevalue("pg_admin")
    url = create_pg_database(admin)
    try:
        yield url
    finally:
        drop_pg_database(admin, url)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """That database, opened in process (the control-plane tests call services directly)."""
    database = open_database(database_url, role="test", log=False, create=True)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def second_database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """Another empty database on the same backend, for "two databases" tests."""
    if backend == "sqlite":
        other = tmp_path / "other"
        other.mkdir()
        yield empty_sqlite(other / "autopack.db")
        return
    admin = request.getfixturevalue("pg_admin")
    url = create_pg_database(admin)
    try:
        yield url
    finally:
        drop_pg_database(admin, url)
