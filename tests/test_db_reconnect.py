"""PostgreSQL drops the API server's connections (a restart, a failover, an admin's kill).

The server must not answer 500s from dead pooled connections, nor need a restart: every
connection is checked as it leaves the pool and replaced when the database closed it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from autopack.client import ApiClient
from autopack.contract import ClaimIn
from autopack.rundef import parse_run_definition
from tests.conftest import _pg_conninfo, create_pg_database, drop_pg_database
from tests.support import Server, clean_env
from tests.test_auth import OPERATOR_TOKEN, TOKENS, _csrf

RUN = {
    "run_id": "r1",
    "tiers": [
        {
            "tier_id": "T1",
            "name": "t",
            "phases": [{"phase_id": "p1", "name": "one"}, {"phase_id": "p2", "name": "two"}],
        }
    ],
}


def _terminate_connections(admin_url: str, database: str) -> int:
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()) AS t",
            (database,),
        ).fetchone()
    assert killed is not None
    return int(killed[0])


@pytest.mark.postgres
def test_api_server_survives_postgres_closing_its_connections(
    pg_admin: str, tmp_path: Path
) -> None:
    url = create_pg_database(pg_admin)
    try:
        with (
            Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server,
            ApiClient(server.url) as client,
        ):
            server.wait_healthy()
            client.create_run(parse_run_definition(RUN))
            first = client.claim(ClaimIn(worker_id="worker-a", lease_seconds=60, run_id="r1"))
            assert first is not None and first.phase_id == "p1"

            assert _terminate_connections(pg_admin, str(make_url(url).database)) >= 1

            assert client.get_run("r1").run_id == "r1"
            second = client.claim(ClaimIn(worker_id="worker-b", lease_seconds=60, run_id="r1"))
            assert second is not None and second.phase_id == "p2"
            assert server.process.poll() is None
    finally:
        drop_pg_database(pg_admin, url)


def _answer_while_its_read_is_cut(
    pg_admin: str, url: str, table: str, ask: Callable[[], httpx.Response]
) -> httpx.Response:
    """``ask()`` while ``table`` is locked, so its read waits; the backend that waits is
    terminated (what a restart, a failover or ``pg_terminate_backend`` does), then the
    lock goes. The answer."""
    name = str(make_url(url).database)
    answers: list[httpx.Response] = []
    with psycopg.connect(_pg_conninfo(url)) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        asking = threading.Thread(target=lambda: answers.append(ask()))
        asking.start()
        with psycopg.connect(_pg_conninfo(pg_admin), autocommit=True) as admin:
            deadline = time.monotonic() + 20
            waiting: list[Any] = []
            while not waiting and time.monotonic() < deadline:
                waiting = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    (name,),
                ).fetchall()
                time.sleep(0.05)
            assert waiting, f"the request never waited for the lock on {table}"
            admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
        holder.rollback()  # the lock goes: a read on a new connection succeeds
    asking.join(timeout=30)
    [answer] = answers
    return answer


@pytest.mark.postgres
def test_health_read_on_a_connection_postgres_ends_is_retried_not_a_503(
    pg_admin: str, tmp_path: Path
) -> None:
    """/health read the identity once: a backend terminated mid-read (what a restart,
    a failover or ``pg_terminate_backend`` does) answered 503 "the database is
    unavailable" while the database was up (seen in a chaos drain under the executors'
    identity handshakes). It is read again on a new connection, as every transaction is."""
    url = create_pg_database(pg_admin)
    try:
        with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
            server.wait_healthy()
            answer = _answer_while_its_read_is_cut(
                pg_admin, url, "db_meta", lambda: httpx.get(f"{server.url}/health", timeout=30)
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "ok"
            assert "Traceback" not in server.output()
    finally:
        drop_pg_database(pg_admin, url)


@pytest.mark.postgres
@pytest.mark.parametrize("action", ["look", "log out"])
def test_a_dashboard_session_read_on_a_connection_postgres_ends_is_retried_not_a_500(
    pg_admin: str, tmp_path: Path, action: str
) -> None:
    """Every dashboard request with a session asks whether it was logged out, and log out
    records it: outside the transactions the control plane retries, so a backend
    terminated under either answered the operator a 500 with a traceback in the log."""
    url = create_pg_database(pg_admin)
    try:
        with (
            Server(clean_env(DATABASE_URL=url, **TOKENS), cwd=tmp_path) as server,
            httpx.Client(base_url=server.url, timeout=30) as browser,
        ):
            assert browser.post("/ui/login", data={"token": OPERATOR_TOKEN}).status_code == 303
            page = browser.get("/ui")
            assert page.status_code == 200
            csrf = _csrf(page.text)
            if action == "look":
                answer = _answer_while_its_read_is_cut(
                    pg_admin, url, "ended_sessions", lambda: browser.get("/ui")
                )
                assert answer.status_code == 200, answer.text
            else:
                answer = _answer_while_its_read_is_cut(
                    pg_admin,
                    url,
                    "ended_sessions",
                    lambda: browser.post("/ui/logout", data={"csrf": csrf}),
                )
                assert answer.status_code == 303, answer.text
                assert browser.get("/ui").status_code == 303, "logged out"
            assert "Traceback" not in server.output()
    finally:
        drop_pg_database(pg_admin, url)
