"""PostgreSQL drops the API server's connections (a restart, a failover, an admin's kill).

The server must not answer 500s from dead pooled connections, nor need a restart: every
connection is checked as it leaves the pool and replaced when the database closed it.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from autopack.client import ApiClient
from autopack.contract import ClaimIn
from autopack.rundef import parse_run_definition
from tests.conftest import _pg_conninfo, create_pg_database, drop_pg_database
from tests.support import Server, clean_env

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
