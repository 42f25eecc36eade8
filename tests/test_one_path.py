"""Every control command goes through one client that proves the server uses our database.

A server on another database than the one this process resolves is refused by every
command that reads or changes runs, approvals or telemetry (exit 2, both databases named),
before anything is written to either database. And the client stays light: importing it
never loads the database stack.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autopack.db import open_database
from autopack.dburl import resolve_database_url
from tests.conftest import BACKENDS, create_pg_database, drop_pg_database
from tests.executor_support import rows
from tests.support import Server, clean_env, cli

COMMANDS = {
    "run create": ["run", "create", "RUN_FILE"],
    "run show": ["run", "show", "r1"],
    "run list": ["run", "list"],
    "run cancel": ["run", "cancel", "r1"],
    "run phase": ["run", "phase", "r1", "a"],
    "run requeue": ["run", "requeue", "r1", "a"],
    "run seed": ["run", "seed"],
    "run export": ["run", "export", "r1", "exported"],
    "approvals list": ["approvals", "list"],
    "approvals approve": ["approvals", "approve", "1"],
    "approvals reject": ["approvals", "reject", "1"],
    "approvals show": ["approvals", "show", "1"],
    "telemetry report": ["telemetry", "report"],
    "telemetry calibrate": ["telemetry", "calibrate"],
    "probe": ["probe", "--run-id", "r1", "--phase-id", "a"],
    "drain run": ["drain", "run", "--run-id", "r1"],
    "drain phase": ["drain", "phase", "--run-id", "r1", "--phase-id", "a"],
}
RUN_FILE = """
run_id: r1
tiers:
  - tier_id: T1
    name: tier
    phases:
      - phase_id: a
        name: a
"""
TABLES = ("runs", "phases", "phase_attempts", "approval_requests", "llm_usage_events")


@dataclass
class TwoDatabases:
    """This process's database (``local``) and a server on another one (``server``)."""

    local_url: str
    server_url: str
    api_url: str
    workdir: Path
    local_instance: str
    server_instance: str

    def counts(self) -> dict[str, tuple[int, int]]:
        """Rows per table in (local, server)."""
        return {
            table: (
                rows(self.local_url, f"SELECT count(*) AS n FROM {table}")[0]["n"],
                rows(self.server_url, f"SELECT count(*) AS n FROM {table}")[0]["n"],
            )
            for table in TABLES
        }


def _instance(url: str) -> str:
    [row] = rows(url, "SELECT instance_id FROM db_meta")
    return str(row["instance_id"])


@pytest.fixture(scope="module", params=BACKENDS)
def two_databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoDatabases]:
    """Two initialised databases on one backend and a server on the second, shared by the
    module's tests (every command below is refused, so none changes them)."""
    workdir = tmp_path_factory.mktemp("one-path")
    admin = request.getfixturevalue("pg_admin") if request.param == "postgresql" else None
    if admin is None:
        urls = [f"sqlite:///{workdir / name}.db" for name in ("local", "server")]
    else:
        urls = [create_pg_database(admin) for _ in range(2)]
    try:
        for url in urls:
            open_database(resolve_database_url(url), role="test", log=False, create=True).close()
        (workdir / "r1.yaml").write_text(RUN_FILE)
        with Server(clean_env(DATABASE_URL=urls[1]), cwd=workdir) as server:
            yield TwoDatabases(
                local_url=urls[0],
                server_url=urls[1],
                api_url=server.url,
                workdir=workdir,
                local_instance=_instance(urls[0]),
                server_instance=_instance(urls[1]),
            )
    finally:
        if admin is not None:
            for url in urls:
                drop_pg_database(admin, url)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_server_on_another_database_is_refused_by_every_control_command(
    two_databases: TwoDatabases, command: str
) -> None:
    planes = two_databases
    before = planes.counts()
    args = [str(planes.workdir / "r1.yaml") if a == "RUN_FILE" else a for a in COMMANDS[command]]
    env = clean_env(DATABASE_URL=planes.local_url, AUTOPACK_API_URL=planes.api_url)
    result = cli(*args, cwd=planes.workdir, env=env)
    assert result.returncode == 2, (command, result.stdout, result.stderr)
    assert "IdentityMismatch" in result.stderr
    assert planes.local_instance in result.stderr and planes.server_instance in result.stderr
    assert planes.counts() == before, f"{command} wrote to a database"


def test_the_same_commands_work_against_a_server_on_our_database(
    database_url: str, tmp_path: Path
) -> None:
    """The refusal above is about identity: with the server on our database they work."""
    env = clean_env(DATABASE_URL=database_url)
    (tmp_path / "r1.yaml").write_text(RUN_FILE)
    with Server(env, cwd=tmp_path) as server:
        attached = clean_env(DATABASE_URL=database_url, AUTOPACK_API_URL=server.url)
        created = cli("run", "create", str(tmp_path / "r1.yaml"), cwd=tmp_path, env=attached)
        assert created.returncode == 0, created.stderr
        assert f"API {server.url}" in created.stdout
        listed = cli("run", "list", "--json", cwd=tmp_path, env=attached)
        assert listed.returncode == 0 and '"run_id": "r1"' in listed.stdout
    assert rows(database_url, "SELECT id FROM runs") == [{"id": "r1"}]


def test_importing_the_client_loads_no_database_code() -> None:
    """Executors and scripts import the client on machines that never open a database."""
    probe = (
        "import sys, autopack.client, autopack.contract, autopack.executor.lease\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic'})\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert result.stdout.strip() == "", f"importing the client loaded {result.stdout.strip()}"
