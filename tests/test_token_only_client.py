"""A machine that holds a token and the server's URL, not the database's credentials.

An executor or operator machine told only ``AUTOPACK_API_URL`` (no ``DATABASE_URL``
anywhere, no default ``autopack.db``) uses the database that server serves: it has
no second database to drift to, creates nothing where it runs, and says which database it
used. ``AUTOPACK_EXPECTED_INSTANCE_ID`` pins which database that must be, on every
command: a server on another one is refused naming both, before anything is written.
A default ``autopack.db`` that exists is still the database it names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from autopack.config import Settings
from autopack.connect import connect
from autopack.contract import ClaimIn
from autopack.dburl import resolve_database_url
from autopack.errors import IdentityMismatch, LeaseLost
from autopack.executor.lease import Lease
from autopack.runfile import load_run_file
from tests.conftest import empty_sqlite
from tests.executor_support import cassette, files, line, phase, rows, run_file
from tests.support import Server, clean_env, cli, free_port
from tests.test_auth import OPERATOR_TOKEN, TOKENS, WORKER_TOKEN
from tests.test_one_path import COMMANDS, RUN_FILE, TwoDatabases, two_databases  # noqa: F401 (fixture)
from tests.test_probe import _probe


def _only_a_server(api_url: str, **extra: str) -> dict[str, str]:
    """A client environment naming a server and no database (nor a default port's server)."""
    return clean_env(AUTOPACK_API_URL=api_url, AUTOPACK_DEFAULT_API_PORT=str(free_port()), **extra)


def _empty(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_operator_and_worker_holding_only_tokens_create_and_drain_on_the_servers_database(
    database_url: str, tmp_path: Path
) -> None:
    served = tmp_path / "server"
    served.mkdir()
    with Server(clean_env(DATABASE_URL=database_url, **TOKENS), cwd=served) as server:
        [instance] = rows(database_url, "SELECT instance_id FROM db_meta")
        operator_machine = tmp_path / "operator"
        operator_machine.mkdir()
        definition = run_file(operator_machine, [phase("p1", ["pkg/m.py"])])
        operator = _only_a_server(server.url, AUTOPACK_API_TOKEN=OPERATOR_TOKEN)
        created = cli("run", "create", str(definition), cwd=operator_machine, env=operator)
        assert created.returncode == 0, created.stderr
        assert f"API {server.url}" in created.stdout
        assert _empty(operator_machine) == [definition.name], "the client created nothing"

        worker_machine = tmp_path / "worker"
        worker_machine.mkdir()
        tape = cassette(tmp_path, [line("p1", 1, files(m_py="VALUE = 1\n"))])
        worker = _only_a_server(
            server.url, AUTOPACK_WORKER_TOKEN=WORKER_TOKEN, TELEMETRY_DB_ENABLED="1"
        )
        drained = cli(
            *("drain", "run", "--run-id", "exec-run", "--auditor", "rules"),
            *("--cassette", str(tape), "--workspace", str(worker_machine / "ws"), "--json"),
            cwd=worker_machine,
            env=worker,
        )
        assert drained.returncode == 0, drained.stderr
        assert json.loads(drained.stdout)["run_state"] == "DONE_SUCCESS"
        assert f"instance {instance['instance_id']}" in drained.stderr, "it says which database"
        assert _empty(worker_machine) == ["ws"], "no database, no server log left behind"

        report = cli("telemetry", "report", "--json", cwd=operator_machine, env=operator)
        assert report.returncode == 0, report.stderr
    [done] = rows(database_url, "SELECT state FROM phases WHERE phase_id = 'p1'")
    assert done["state"] == "COMPLETE"
    assert rows(database_url, "SELECT count(*) AS n FROM llm_usage_events")[0]["n"] >= 1


def test_doctor_on_a_machine_holding_only_a_token_names_the_servers_database(
    database_url: str, tmp_path: Path
) -> None:
    with Server(clean_env(DATABASE_URL=database_url, **TOKENS), cwd=tmp_path) as server:
        [instance] = rows(database_url, "SELECT instance_id FROM db_meta")
        machine = tmp_path / "worker"
        machine.mkdir()
        env = _only_a_server(server.url, AUTOPACK_WORKER_TOKEN=WORKER_TOKEN)
        result = cli("doctor", cwd=machine, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"serves {server.url}" not in result.stdout  # the database, not the URL, is named
        assert f"(instance_id {instance['instance_id']})" in result.stdout
        assert "this client names no database" in result.stdout
        pinned = cli(
            "doctor", cwd=machine, env={**env, "AUTOPACK_EXPECTED_INSTANCE_ID": "another-one"}
        )
        assert pinned.returncode == 2, pinned.stdout
        assert "another-one" in pinned.stderr and instance["instance_id"] in pinned.stderr
        assert _empty(machine) == []


def test_doctor_says_whether_the_server_takes_this_machines_token_and_with_which_rights(
    tmp_path: Path,
) -> None:
    """Doctor's handshake (``/health``) needs no token: a machine with no token or a
    mistyped one was told every check passed (exit 0), and its first drain or ``run
    create`` was then a 401. Each token is now tried on the server, and never printed."""
    url = empty_sqlite(tmp_path / "autopack.db")
    with Server(clean_env(DATABASE_URL=url, **TOKENS), cwd=tmp_path) as server:
        machine = tmp_path / "machine"
        machine.mkdir()
        said: dict[str, tuple[int, dict[str, object]]] = {}
        for name, token in {
            "none": {},
            "wrong": {"AUTOPACK_WORKER_TOKEN": "not-this-servers-token-0123"},
            "worker": {"AUTOPACK_WORKER_TOKEN": WORKER_TOKEN},
            "operator": {"AUTOPACK_API_TOKEN": OPERATOR_TOKEN},
        }.items():
            result = cli("doctor", "--json", cwd=machine, env=_only_a_server(server.url, **token))
            assert OPERATOR_TOKEN not in result.stdout + result.stderr
            assert WORKER_TOKEN not in result.stdout + result.stderr
            [check] = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "api token"]
            said[name] = (result.returncode, check)
    assert said["none"][0] == 2 and not said["none"][1]["ok"]
    assert "no token sent: this Autopack server needs a token" in str(said["none"][1]["detail"])
    assert said["wrong"][0] == 2 and not said["wrong"][1]["ok"]
    assert "AUTOPACK_WORKER_TOKEN sent: the token is not one this server knows" in str(
        said["wrong"][1]["detail"]
    )
    assert said["worker"][0] == 0 and "is the server's worker token" in str(said["worker"][1])
    assert said["operator"][0] == 0 and "operator's rights" in str(said["operator"][1])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_pinned_instance_id_refuses_a_server_on_another_database_on_every_command(
    two_databases: TwoDatabases,  # noqa: F811 (the fixture imported above)
    command: str,
    tmp_path: Path,
) -> None:
    """The client names no database, only the instance_id it must reach: every command
    refuses the server on another one, naming both, and writes nothing anywhere."""
    planes = two_databases
    before = planes.counts()
    args = [str(planes.workdir / "r1.yaml") if a == "RUN_FILE" else a for a in COMMANDS[command]]
    env = _only_a_server(planes.api_url, AUTOPACK_EXPECTED_INSTANCE_ID=planes.local_instance)
    result = cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, (command, result.stdout, result.stderr)
    assert "IdentityMismatch" in result.stderr
    assert planes.local_instance in result.stderr and planes.server_instance in result.stderr
    assert "AUTOPACK_EXPECTED_INSTANCE_ID" in result.stderr
    assert planes.counts() == before, f"{command} wrote to a database"
    assert _empty(tmp_path) == []


def test_a_pinned_instance_id_of_the_servers_database_is_accepted(
    two_databases: TwoDatabases,  # noqa: F811
    tmp_path: Path,
) -> None:
    planes = two_databases
    env = _only_a_server(planes.api_url, AUTOPACK_EXPECTED_INSTANCE_ID=planes.server_instance)
    listed = cli("run", "list", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert _empty(tmp_path) == []


def test_a_default_database_file_where_the_client_runs_is_still_the_one_it_names(
    two_databases: TwoDatabases,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Without DATABASE_URL the client's database is ./autopack.db when there is one: a
    server on another database is refused as ever, not silently preferred."""
    planes = two_databases
    assert cli("db", "init", cwd=tmp_path, env=clean_env()).returncode == 0
    [here] = rows(f"sqlite:///{tmp_path / 'autopack.db'}", "SELECT instance_id FROM db_meta")
    result = cli("run", "list", cwd=tmp_path, env=_only_a_server(planes.api_url))
    assert result.returncode == 2, result.stdout
    assert "IdentityMismatch" in result.stderr
    assert here["instance_id"] in result.stderr and planes.server_instance in result.stderr


def test_no_server_at_the_url_is_exit_2_naming_it_and_creates_nothing(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    made = run_file(tmp_path, [phase("p1", ["pkg/m.py"])])
    for args in (["run", "create", str(made)], ["drain", "run", "--run-id", "exec-run"]):
        result = cli(*args, cwd=tmp_path, env=_only_a_server(url, AUTOPACK_API_WAIT_SECONDS="1"))
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert f"no Autopack API answers at {url}" in result.stderr
        assert "waited 1 s (AUTOPACK_API_WAIT_SECONDS)" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert _empty(tmp_path) == [made.name], "nothing may be created"


def test_an_executor_started_before_its_server_waits_for_it_saying_so(tmp_path: Path) -> None:
    """An executor started with its server (or while a supervisor restarts it) exited 2
    at once, "no Autopack API answers"; it now waits, saying so, and goes on."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = subprocess.Popen(
        [sys.executable, "-m", "autopack", "run", "list"],
        cwd=tmp_path,
        env=_only_a_server(url, AUTOPACK_API_WAIT_SECONDS="60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stderr is not None
    for said in client.stderr:  # the server starts only once the client says it waits
        if "api_server_waiting" in said:
            break
    assert f"url={url}" in said and "up_to_s=60" in said, said
    served = clean_env(DATABASE_URL=empty_sqlite(tmp_path / "served.db"))
    with Server(served, cwd=tmp_path, port=port):
        out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "0 of 0 run(s)" in out, out


def test_a_pinned_instance_id_refuses_the_database_a_client_names_too(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL="sqlite:///here.db")
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    [here] = rows(f"sqlite:///{tmp_path / 'here.db'}", "SELECT instance_id FROM db_meta")
    result = cli(
        "run", "list", cwd=tmp_path, env={**env, "AUTOPACK_EXPECTED_INSTANCE_ID": "another-one"}
    )
    assert result.returncode == 2, result.stdout
    assert f"refusing database sqlite:///{tmp_path / 'here.db'}" in result.stderr
    assert here["instance_id"] in result.stderr
    assert "AUTOPACK_EXPECTED_INSTANCE_ID expects instance_id another-one" in result.stderr


def test_the_probe_of_a_machine_holding_only_a_token_drains_on_the_servers_database(
    database_url: str, tmp_path: Path
) -> None:
    """The probe's drain is a child process: it must name no database either (it was
    handed DATABASE_URL=./autopack.db, which it refused as missing), and is pinned to the
    database the probe's server serves."""
    with Server(clean_env(DATABASE_URL=database_url, **TOKENS), cwd=tmp_path) as server:
        machine = tmp_path / "operator"
        machine.mkdir()
        env = _only_a_server(
            server.url, AUTOPACK_API_TOKEN=OPERATOR_TOKEN, TELEMETRY_DB_ENABLED="1"
        )
        code, stdout, stderr = _probe(machine, "telemetry-p1-string-util", env)
        assert code == 0, stdout + stderr
        assert "✔ llm_usage_events: 0 → 2 (+2)" in stdout
        assert "DatabaseMissing" not in stderr
        assert "autopack.db" not in _empty(machine)
    assert rows(database_url, "SELECT count(*) AS n FROM llm_usage_events")[0]["n"] == 2


def test_a_server_restarted_on_another_database_is_refused_on_the_clients_next_call(
    tmp_path: Path,
) -> None:
    """The handshake proved database A; the server behind the same URL then came back on
    database B. A client holding only the URL took B's answers (and wrote to B) without a
    word: now every call names the database it proved, and B's server refuses it (a
    restored copy of A too: it keeps A's instance_id, not its fingerprint)."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("a", "b", "copy")}
    for name in ("a", "b"):
        init = cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=urls[name]))
        assert init.returncode == 0, init.stderr
    shutil.copyfile(tmp_path / "a.db", tmp_path / "copy.db")  # a restored backup: same id
    (tmp_path / "r1.yaml").write_text(RUN_FILE)
    definition = load_run_file(tmp_path / "r1.yaml")
    [a] = rows(urls["a"], "SELECT instance_id FROM db_meta")
    with Server(clean_env(DATABASE_URL=urls["a"]), cwd=tmp_path) as first:
        settings = Settings(autopack_api_url=first.url)
        with connect(settings, None, own="thread") as connection:
            assert connection.database.instance_id == a["instance_id"]
            connection.client.create_run(definition)
            claim = connection.client.claim(ClaimIn(worker_id="w", run_id="r1"))
            assert claim is not None
            lease = Lease(connection.client, claim, lease_seconds=60)
            first.stop()
            for other in ("b", "copy"):
                with Server(clean_env(DATABASE_URL=urls[other]), cwd=tmp_path, port=first.port):
                    for call in (
                        connection.client.list_runs,
                        lambda: connection.client.create_run(definition),
                    ):
                        with pytest.raises(IdentityMismatch) as refused:
                            call()
                        assert a["instance_id"] in refused.value.message
                        assert f"{tmp_path / other}.db" in refused.value.message
                    # the heartbeat thread died of it (a traceback); the attempt carried on
                    with pytest.raises(LeaseLost, match="another database") as lost:
                        lease.renew()
                    assert a["instance_id"] in lost.value.message
                    with pytest.raises(LeaseLost):
                        lease.check()
    assert rows(urls["b"], "SELECT count(*) AS n FROM runs")[0]["n"] == 0
    assert rows(urls["copy"], "SELECT count(*) AS n FROM runs")[0]["n"] == 0


def test_a_pin_never_creates_nor_initialises_a_database_it_would_then_refuse(
    database_url: str, tmp_path: Path
) -> None:
    """A new database gets a new instance_id, never the pinned one: ``run create`` made
    ./autopack.db and ``serve`` initialised the empty database it was given, then refused
    them, leaving them behind."""
    machine = tmp_path / "machine"
    machine.mkdir()
    made = run_file(machine, [phase("p1", ["pkg/m.py"])])
    pin = "0a6a56af-1d6a-4d06-b64d-a0db705b3580"
    attempts = {
        "run create": (["run", "create", str(made)], clean_env()),
        "serve": (["serve", "--port", str(free_port())], clean_env(DATABASE_URL=database_url)),
    }
    for name, (args, env) in attempts.items():
        result = cli(*args, cwd=machine, env={**env, "AUTOPACK_EXPECTED_INSTANCE_ID": pin})
        assert result.returncode == 2, (name, result.stdout + result.stderr)
        verb = "create database" if name == "run create" else "set up the empty database"
        assert f"refusing to {verb}" in result.stderr, name
        assert f"expects instance_id {pin}" in result.stderr, name
    assert _empty(machine) == [made.name]
    env = clean_env(DATABASE_URL=database_url, AUTOPACK_EXPECTED_INSTANCE_ID=pin)
    listed = cli("run", "list", cwd=machine, env=env)  # a reader: nothing to create
    assert listed.returncode == 2, listed.stdout + listed.stderr
    assert "is an empty database (no tables at all)" in " ".join(listed.stderr.split())
    tables = (
        "SELECT count(*) AS n FROM sqlite_master"
        if database_url.startswith("sqlite")
        else "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'"
    )
    assert rows(database_url, tables) == [{"n": 0}], "the empty database stays empty"


def test_a_server_whose_schema_fell_out_of_date_is_exit_3_for_a_client_naming_no_database(
    database_url: str, tmp_path: Path
) -> None:
    """A client naming its database guards its schema itself (exit 3); one naming none took
    the server's 503 /health as good, and listed, created and drained on a schema missing
    tables."""
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        engine = create_engine(resolve_database_url(database_url))
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE approval_requests"))
        engine.dispose()
        machine = tmp_path / "machine"
        machine.mkdir()
        made = run_file(machine, [phase("p1", ["pkg/m.py"])])
        for args in (["run", "list"], ["run", "create", str(made)], ["doctor"]):
            result = cli(*args, cwd=machine, env=_only_a_server(server.url))
            assert result.returncode == 3, (args, result.stdout + result.stderr)
            assert "schema out of date" in result.stdout + result.stderr, args
            assert "autopack db upgrade" in result.stdout + result.stderr, args
        assert _empty(machine) == [made.name]
    assert rows(database_url, "SELECT count(*) AS n FROM runs") == [{"n": 0}]


def test_config_show_and_doctor_on_a_token_only_machine_say_the_servers_database_is_used(
    database_url: str, tmp_path: Path
) -> None:
    """Its default ``./autopack.db`` does not exist and is used by no command: ``config
    show`` and ``doctor`` must not present it as the database that applies."""
    with Server(clean_env(DATABASE_URL=database_url, **TOKENS), cwd=tmp_path) as server:
        machine = tmp_path / "operator"
        machine.mkdir()
        env = _only_a_server(server.url, AUTOPACK_API_TOKEN=OPERATOR_TOKEN)
        shown = cli("config", "show", cwd=machine, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "DATABASE_URL names no database here" in shown.stdout
        assert f"commands use the one {server.url} serves" in shown.stdout
        as_json = cli("config", "show", "--json", cwd=machine, env=env)
        [row] = [r for r in json.loads(as_json.stdout) if r["name"] == "DATABASE_URL"]
        assert server.url in row["used_instead"]
        doctor = cli("doctor", cwd=machine, env=env)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "no such file: the API server's database is used" in doctor.stdout
        assert _empty(machine) == []


def test_db_identity_on_a_token_only_machine_points_at_doctor_not_at_database_credentials(
    tmp_path: Path,
) -> None:
    """The recipe keeps DATABASE_URL off executor machines: the refusal must not tell
    them to set it, but where they can see the server's instance_id."""
    env = _only_a_server(f"http://127.0.0.1:{free_port()}", AUTOPACK_WORKER_TOKEN=WORKER_TOKEN)
    result = cli("db", "identity", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout
    assert "`autopack doctor` names the database and instance_id" in result.stderr
    assert "set DATABASE_URL" not in result.stderr
    assert _empty(tmp_path) == []
