"""Attach-or-spawn: the handshake, the order of candidates, and no orphaned servers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import create_pg_database, drop_pg_database, empty_sqlite
from tests.executor_support import RUN_ID, cassette, env_for, files, line, phase, run_file
from tests.support import Server, alive, clean_env, cli, free_port, gone, running


def _holder(mode: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.programs.hold_api_server", mode],
        cwd=cwd,
        env={**env, "PYTHONPATH": f"{Path(__file__).parents[1]}:{env['PYTHONPATH']}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(process: subprocess.Popen[str]) -> dict[str, object]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        _, stderr = process.communicate(timeout=30)
        raise AssertionError(f"holder exited {process.returncode} before reporting: {stderr}")
    report: dict[str, object] = json.loads(line)
    return report


def _spawn_env(database_url: str) -> dict[str, str]:
    # A default port nobody listens on: the executor must start its own server.
    return clean_env(DATABASE_URL=database_url, AUTOPACK_DEFAULT_API_PORT=str(free_port()))


def test_spawned_server_uses_our_database_despite_a_dotenv_and_relative_path(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///autopack.db\n")
    env = _spawn_env("sqlite:///autopack_telemetry_seed.db")
    holder = _holder("wait", env, tmp_path)
    try:
        report = _first_line(holder)
        assert report["origin"] == "spawned"
        health = httpx.get(f"{report['url']}/health", timeout=5).json()
        assert (
            health["database"]["public_url"] == f"sqlite:///{tmp_path}/autopack_telemetry_seed.db"
        )
        assert not (tmp_path / "autopack.db").exists()
    finally:
        holder.terminate()
        holder.communicate(timeout=30)


@pytest.mark.parametrize("mode", ["normal", "exception", "sigint", "sigterm", "sigkill"])
def test_no_orphaned_server_on_any_exit_path(mode: str, database_url: str, tmp_path: Path) -> None:
    holder = _holder("wait" if mode.startswith("sig") else mode, _spawn_env(database_url), tmp_path)
    report = _first_line(holder)
    assert isinstance(report["pid"], int) and running(report["pid"])
    child = alive(report["pid"])
    if mode.startswith("sig"):
        holder.send_signal(getattr(signal, mode.upper()))
    _, stderr = holder.communicate(timeout=60)
    if mode == "exception":
        assert "boom inside the executor" in stderr
    assert gone(child), f"API server {child.pid} outlived its executor ({mode})"


def test_explicit_url_with_another_database_is_refused_naming_both(
    database_url: str, second_database_url: str, tmp_path: Path
) -> None:
    with Server(clean_env(DATABASE_URL=second_database_url), cwd=tmp_path) as stale:
        other_id = stale.wait_healthy()["database"]["instance_id"]
        env = {**_spawn_env(database_url), "AUTOPACK_API_URL": stale.url}
        holder = _holder("normal", env, tmp_path)
        stdout, stderr = holder.communicate(timeout=60)
    assert holder.returncode != 0 and stdout == ""
    assert "IdentityMismatch" in stderr
    assert other_id in stderr and stale.url in stderr


def test_matching_server_on_default_port_is_reused(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(DATABASE_URL=database_url, AUTOPACK_DEFAULT_API_PORT=str(port))
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path, port=port) as server:
        holder = _holder("normal", env, tmp_path)
        report = _first_line(holder)
        holder.communicate(timeout=30)
    assert report == {"url": server.url, "origin": "default_port", "pid": None}


def test_mismatching_server_on_default_port_is_ignored_with_a_warning(
    database_url: str, second_database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(DATABASE_URL=database_url, AUTOPACK_DEFAULT_API_PORT=str(port))
    with Server(clean_env(DATABASE_URL=second_database_url), cwd=tmp_path, port=port) as stale:
        holder = _holder("normal", env, tmp_path)
        report = _first_line(holder)
        _, stderr = holder.communicate(timeout=60)
    assert report["origin"] == "spawned" and report["url"] != stale.url
    assert "api_server_ignored" in stderr and stale.url in stderr


def test_a_port_taken_between_probe_and_bind_is_retried_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many executors on one machine each spawn a server on a probed free port; when another
    server takes it first, ours fails to bind while that one answers the handshake (with
    another database): that is a taken port, retried, not an identity mismatch."""
    from autopack import connect
    from autopack.client import ApiClient
    from autopack.config import Settings
    from autopack.db import open_database

    theirs = empty_sqlite(tmp_path / "theirs.db")
    ours = open_database(empty_sqlite(tmp_path / "ours.db"), role="test", log=False)
    with Server(clean_env(DATABASE_URL=theirs), tmp_path) as foreign:
        ports = iter([foreign.port])
        monkeypatch.setattr(connect, "free_port", lambda: next(ports, None) or free_port())
        settings = Settings(database_url=ours.identity.url)
        child = connect._spawn(settings, ours.identity, timeout=60)
        try:
            assert child.url != foreign.url
            with ApiClient(child.url, token=connect.client_token(settings)) as client:
                assert client.health().database.instance_id == ours.identity.instance_id
        finally:
            child.stop()
            ours.close()


def test_a_server_restarted_on_another_database_mid_drain_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    """A drain attached through AUTOPACK_API_URL; the server behind that URL came back on
    another database. The drain stopped, but its error named only the server's database
    by where it is: the drain's own was an instance_id and a fingerprint, so the person
    could not tell which file the drain meant."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")}
    for url in urls.values():
        init = cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=url))
        assert init.returncode == 0, init.stderr
    made = run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])])
    created = cli("run", "create", str(made), cwd=tmp_path, env=clean_env(DATABASE_URL=urls["a"]))
    assert created.returncode == 0, created.stderr
    answers = [line(p, 1, files(a_py="x = 1"), latency_ms=5000) for p in ("p1", "p2")]
    with Server(clean_env(DATABASE_URL=urls["a"]), cwd=tmp_path) as first:
        env = env_for(
            urls["a"],
            AUTOPACK_API_URL=first.url,
            AUTOPACK_LLM_PROVIDER="replay",
            AUTOPACK_REPLAY_CASSETTE=str(cassette(tmp_path, answers)),
            AUTOPACK_REPLAY_SPEED="1",
        )
        drain = subprocess.Popen(
            [sys.executable, "-m", "autopack", "drain", "run", "--run-id", RUN_ID],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert drain.stdout is not None
        seen = []
        for text in drain.stdout:  # the attempt is under way on database a
            seen.append(text)
            if "attempt 1 started" in text:
                break
        else:
            pytest.fail("".join(seen))
        first.stop()
        with Server(clean_env(DATABASE_URL=urls["b"]), cwd=tmp_path, port=first.port):
            output, _ = drain.communicate(timeout=60)
    assert drain.returncode == 2, output
    refused = next(text for text in output.splitlines() if "✘ IdentityMismatch" in text)
    assert f"{tmp_path / 'b'}.db" in refused and f"{tmp_path / 'a'}.db" in refused, refused


def test_a_postgresql_database_named_in_its_query_is_the_one_every_message_names(
    pg_admin: str, tmp_path: Path
) -> None:
    """libpq opens the database ``?dbname=`` names over the path's: a server on
    ``…/a?dbname=b`` read ``b`` while its ``/health`` (and every mismatch message) named
    ``a``, and one on ``…/?dbname=a`` named no database at all."""
    url = create_pg_database(pg_admin)
    name = str(make_url(url).database)
    try:
        in_query = make_url(url).set(database="").update_query_dict({"dbname": name})
        env = clean_env(DATABASE_URL=in_query.render_as_string(hide_password=False))
        with Server(env, cwd=tmp_path, autopack_args=["serve"]) as server:
            assert server.wait_healthy()["database"]["public_url"] == f"postgresql://***@***/{name}"
        other = f"{name}_other"  # never made: nothing is opened, nothing initialised
        twice = make_url(url).update_query_dict({"dbname": other})
        env = clean_env(DATABASE_URL=twice.render_as_string(hide_password=False))
        listed = cli("run", "list", cwd=tmp_path, env=env)
        assert listed.returncode == 2, listed.stdout + listed.stderr
        assert f"{name!r} in the path and {other!r} in ?dbname=" in listed.stderr
        assert "Traceback" not in listed.stderr
    finally:
        drop_pg_database(pg_admin, url)
