"""``autopack serve``: one process on either backend, several on PostgreSQL, and every
process on the database the command resolved (never one its children resolve again)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from autopack.client import ApiClient
from autopack.contract import ClaimIn, HeartbeatIn, ResultIn
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState
from tests.support import (
    Pid,
    Server,
    alive,
    clean_env,
    cli,
    database_identity,
    free_port,
    gone,
    kill,
    wait_for,
)


def _stop_gracefully(server: Server) -> None:
    """SIGTERM, as a service manager stops it: every process shuts its app down.

    (One uvicorn process re-raises the signal once it has shut down, so its status is
    -SIGTERM; the multi-process supervisor exits 0.)
    """
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    output = server.output()
    server.stop()
    assert code in (0, -signal.SIGTERM), output
    started = output.count("Application startup complete.")
    assert started >= 1
    assert output.count("Application shutdown complete.") == started, output


def test_serve_answers_for_its_database_and_stops_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    expected = database_identity(database_url, tmp_path)["instance_id"]
    server = Server(clean_env(DATABASE_URL=database_url), tmp_path, autopack_args=["serve"])
    try:
        assert server.wait_healthy()["database"]["instance_id"] == expected
    finally:
        _stop_gracefully(server)


def test_serve_and_run_create_say_they_set_up_an_empty_database(
    database_url: str, second_database_url: str, tmp_path: Path
) -> None:
    """A new PostgreSQL database (or an empty SQLite file) got Autopack's tables from
    ``serve`` or ``run create`` without a word, where a new SQLite file is announced."""
    from tests.executor_support import phase, run_file

    said = "set up Autopack's tables in the empty database"
    outputs = []
    for _ in range(2):  # the second finds it set up: nothing to say
        server = Server(clean_env(DATABASE_URL=database_url), tmp_path, autopack_args=["serve"])
        try:
            server.wait_healthy()
            outputs.append(server.output())
        finally:
            server.stop()
    assert said in outputs[0] and said not in outputs[1], outputs
    spec = run_file(tmp_path, [phase("p1", ["pkg/a.py"])])
    created = cli(
        "run", "create", str(spec), cwd=tmp_path, env=clean_env(DATABASE_URL=second_database_url)
    )
    assert created.returncode == 0, created.stderr[-2000:]
    assert said in created.stderr


@pytest.mark.postgres
def test_two_api_processes_serve_the_database_the_command_resolved(
    pg_admin: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from tests.conftest import create_pg_database, drop_pg_database

    chosen, decoy = create_pg_database(pg_admin), create_pg_database(pg_admin)
    request.addfinalizer(lambda: drop_pg_database(pg_admin, chosen))
    request.addfinalizer(lambda: drop_pg_database(pg_admin, decoy))
    expected = database_identity(chosen, tmp_path)["instance_id"]
    database_identity(decoy, tmp_path)["instance_id"]
    # The children inherit DATABASE_URL (and a .env) naming the decoy: the flag must win
    # in every one of them, as it did in the command.
    (tmp_path / ".env").write_text(f"DATABASE_URL={decoy}\n")
    server = Server(
        clean_env(DATABASE_URL=decoy),
        tmp_path,
        autopack_args=["--database-url", chosen, "serve", "--workers", "2"],
    )
    try:
        assert server.wait_healthy()["database"]["instance_id"] == expected
        with ApiClient(server.url) as client:
            client.create_run(
                parse_run_definition(
                    {
                        "run_id": "r",
                        "tiers": [
                            {
                                "tier_id": "T1",
                                "name": "t",
                                "phases": [{"phase_id": f"p{i}", "name": "p"} for i in range(6)],
                            }
                        ],
                    }
                )
            )
            done: list[str] = []
            claim_in = ClaimIn(worker_id="w", lease_seconds=60, run_id="r")
            while (claim := client.claim(claim_in)) is not None:
                client.heartbeat(
                    "r",
                    claim.phase_id,
                    HeartbeatIn(lease_token=claim.lease_token, lease_seconds=60),
                )
                client.post_result(
                    "r",
                    claim.phase_id,
                    ResultIn(
                        lease_token=claim.lease_token,
                        outcome=PhaseState.COMPLETE,
                        stop_reason="done",
                    ),
                )
                done.append(claim.phase_id)
            assert sorted(done) == [f"p{i}" for i in range(6)]
            assert client.get_run("r").state == "DONE_SUCCESS"

        def both_started() -> list[str] | None:  # the second may still be starting
            found = re.findall(r"database_identity role=api .* instance_id=(\S+)", server.output())
            return found if len(found) == 2 else None

        api_identities = wait_for(both_started, timeout=30)
        assert api_identities == [expected, expected], server.output()
    finally:
        _stop_gracefully(server)


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["autopack serve", "uvicorn autopack.main:app"])
def test_api_processes_end_with_a_supervisor_killed_and_the_server_restarts(
    command: str, pg_admin: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``kill -9`` of the supervisor of ``--workers 2`` left both API processes orphaned,
    serving on with the tokens they started with, and a restart on the port failed
    "Address already in use" for as long as they lived."""
    from tests.conftest import create_pg_database, drop_pg_database

    url = create_pg_database(pg_admin)
    request.addfinalizer(lambda: drop_pg_database(pg_admin, url))
    env = clean_env(DATABASE_URL=url)
    if command == "autopack serve":
        first = Server(env, tmp_path, autopack_args=["serve", "--workers", "2"])
    else:  # the log level that shows each process's start
        first = Server(env, tmp_path, uvicorn_args=["--workers", "2", "--log-level", "info"])
    pids: list[Pid] = []

    def no_orphans() -> None:  # a failed test leaves none behind
        for pid in pids:
            kill(pid)

    request.addfinalizer(no_orphans)
    try:
        first.wait_healthy()

        def both_started() -> list[str] | None:
            found = re.findall(r"Started server process \[(\d+)\]", first.output())
            return found if len(found) == 2 else None

        pids += [alive(int(pid)) for pid in wait_for(both_started, timeout=30)]
        first.process.kill()
        first.process.wait(timeout=30)
        assert all(gone(pid, timeout=30) for pid in pids), first.output()
    finally:
        first.stop()
    again = Server(env, tmp_path, port=first.port, autopack_args=["serve"])
    try:
        again.wait_healthy()
    finally:
        _stop_gracefully(again)


def test_several_api_processes_on_sqlite_are_refused_before_touching_it(tmp_path: Path) -> None:
    database = tmp_path / "autopack.db"
    result = cli(
        "serve", "--workers", "2", cwd=tmp_path, env=clean_env(DATABASE_URL=f"sqlite:///{database}")
    )
    assert result.returncode == 2
    assert "--workers 2 needs PostgreSQL" in result.stderr
    assert str(database) in result.stderr
    assert not database.exists()


def test_more_api_processes_than_a_machine_runs_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """--workers 100000 on PostgreSQL forked API processes until the machine gave out.
    (A database nobody answers for: were the flag let through, nothing could start.)"""
    env = clean_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/autopack")
    refused = cli("serve", "--workers", "100000", cwd=tmp_path, env=env, timeout=30)
    assert refused.returncode == 2, refused.stderr
    assert "Invalid value for '--workers'" in refused.stderr and "64" in refused.stderr


def test_a_port_outside_1_to_65535_is_refused_not_bound_modulo_65536(tmp_path: Path) -> None:
    # uvicorn took --port 70000, said "running on :70000" and listened on 4464; -1 and 2**64
    # were an exit 3 (a schema error's code) from getaddrinfo, after the database opened
    url = f"sqlite:///{tmp_path / 'a.db'}"
    for port in ("70000", "-1", "0", str(2**64)):
        env = clean_env(DATABASE_URL=url)
        refused = cli("serve", "--port", port, cwd=tmp_path, env=env, timeout=30)
        assert refused.returncode == 2, (port, refused.stdout, refused.stderr)
        assert "--port" in refused.stderr and "Traceback" not in refused.stderr
    env = clean_env(DATABASE_URL=url, AUTOPACK_DEFAULT_API_PORT="70000")
    for command in (("serve",), ("run", "list")):
        refused = cli(*command, cwd=tmp_path, env=env, timeout=30)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "AUTOPACK_DEFAULT_API_PORT" in refused.stderr and "65535" in refused.stderr
    assert not (tmp_path / "a.db").exists()


def test_a_maintenance_interval_that_never_runs_or_spins_is_refused(tmp_path: Path) -> None:
    # inf: no lease reclaimed, no approval expired, no run ended over its duration budget,
    # with nothing said; 1e-300: a pass after pass on the database, as fast as it answers
    url = f"sqlite:///{tmp_path / 'a.db'}"
    for interval in ("inf", "1e400", "1e-300", "86400"):
        env = clean_env(DATABASE_URL=url, AUTOPACK_MAINTENANCE_INTERVAL_SECONDS=interval)
        refused = cli("serve", "--port", str(free_port()), cwd=tmp_path, env=env, timeout=30)
        assert refused.returncode == 2, (interval, refused.stderr)
        assert "AUTOPACK_MAINTENANCE_INTERVAL_SECONDS" in refused.stderr


def test_a_port_nothing_can_listen_on_is_an_error_naming_it(tmp_path: Path) -> None:
    """A taken port left uvicorn's exit 3 (which means an out-of-date schema), port 99999
    hung, and neither should create the database first."""
    import socket

    database = tmp_path / "autopack.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{database}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    result = cli("serve", "--port", "99999", cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2 and "--port" in result.stderr, result.stderr
    assert not database.exists()


def test_the_api_server_alone_logs_that_it_set_up_an_empty_database(
    database_url: str, tmp_path: Path
) -> None:
    """``uvicorn autopack.main:app`` on a new PostgreSQL database (a mistyped name) or an
    empty SQLite file set Autopack's tables up with only its usual identity line: nothing
    told the operator the database it serves had been empty."""
    logs = []
    for _ in range(2):  # the second finds it set up: nothing to say
        server = Server(clean_env(DATABASE_URL=database_url), tmp_path)
        try:
            server.wait_healthy()
            logs.append(server.output())
        finally:
            server.stop()
    assert "database_initialised" in logs[0] and "no tables" in logs[0], logs[0]
    assert "database_initialised" not in logs[1], logs[1]
