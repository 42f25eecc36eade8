"""``uvicorn autopack.main:app`` reports the identity of the database it was given."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import empty_sqlite
from tests.support import Server, clean_env, cli, database_identity


def test_server_reports_the_identity_of_its_database(database_url: str, tmp_path: Path) -> None:
    expected = database_identity(database_url, tmp_path)
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        body = server.wait_healthy()
    assert body["status"] == "ok"
    assert body["database"]["instance_id"] == expected["instance_id"]
    assert body["database"]["fingerprint"] == expected["fingerprint"]
    assert body["database"]["in_sync"] is True


@pytest.mark.parametrize("path", ["/health", "/runs", "/metrics", "/docs", "/ui"])
def test_head_on_any_get_route_answers_like_get_without_a_body(tmp_path: Path, path: str) -> None:
    """Load balancers and ``curl -I`` probe with HEAD: it is a GET's headers on every
    route (it was a 405 on all of them, then on all but /health: FastAPI's routes declare
    one method each)."""
    url = empty_sqlite(tmp_path / "autopack.db")
    with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
        got = httpx.get(f"{server.url}{path}", timeout=10)
        head = httpx.head(f"{server.url}{path}", timeout=10)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_needs_the_gets_token_and_stays_405_without_a_get(tmp_path: Path) -> None:
    """A HEAD served as a GET needs the GET's token; a path without a GET stays a 405."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = clean_env(DATABASE_URL=url, AUTOPACK_API_TOKEN="t" * 32)
    with Server(env, cwd=tmp_path) as server:
        anonymous = httpx.head(f"{server.url}/runs", timeout=10)
        bearer = {"Authorization": "Bearer " + "t" * 32}
        allowed = httpx.head(f"{server.url}/runs", headers=bearer, timeout=10)
        no_get = httpx.head(f"{server.url}/claims", headers=bearer, timeout=10)
    assert anonymous.status_code == 401
    assert allowed.status_code == 200 and allowed.content == b""
    assert no_get.status_code == 405 and no_get.headers["allow"] == "POST"


def test_two_servers_on_two_databases_report_different_ids(
    database_url: str, second_database_url: str, tmp_path: Path
) -> None:
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as one,
        Server(clean_env(DATABASE_URL=second_database_url), cwd=tmp_path) as two,
    ):
        first, second = one.wait_healthy(), two.wait_healthy()
    assert first["database"]["instance_id"] != second["database"]["instance_id"]


@pytest.mark.postgres
def test_health_reveals_no_password_user_or_host(pg_admin: str, tmp_path: Path) -> None:
    from tests.conftest import create_pg_database, drop_pg_database

    url = create_pg_database(pg_admin)
    secret_url = make_url(url).set(password="hunter2").render_as_string(hide_password=False)
    try:
        with Server(clean_env(DATABASE_URL=secret_url), cwd=tmp_path) as server:
            text = json.dumps(server.wait_healthy())
        assert "hunter2" not in text
        assert "127.0.0.1" not in text and "postgres@" not in text
        name = make_url(url).database
        assert name is not None and name in text
    finally:
        drop_pg_database(pg_admin, url)


def test_server_given_an_expected_instance_id_refuses_another_database(
    database_url: str, tmp_path: Path
) -> None:
    database_identity(database_url, tmp_path)
    env = clean_env(DATABASE_URL=database_url, AUTOPACK_EXPECTED_INSTANCE_ID="not-this-one")
    server = Server(env, cwd=tmp_path)
    try:
        assert server.process.wait(timeout=30) != 0
        assert "AUTOPACK_EXPECTED_INSTANCE_ID expects instance_id not-this-one" in server.output()
    finally:
        server.stop()


def test_uvicorn_given_an_invalid_setting_says_which_without_a_traceback(tmp_path: Path) -> None:
    url = empty_sqlite(tmp_path / "autopack.db")
    for name, value in (("AUTOPACK_API_THREADS", "0"), ("AUTOPACK_LOG_FORMAT", "xml")):
        server = Server(clean_env(DATABASE_URL=url, **{name: value}), cwd=tmp_path)
        try:
            assert server.process.wait(timeout=60) == 3
            output = server.output()
        finally:
            server.stop()
        assert "startup_refused" in output and f"{name}={value!r}" in output, output
        assert "Traceback" not in output, output


def test_identity_check_script_matches_and_mismatches(
    database_url: str, second_database_url: str, tmp_path: Path
) -> None:
    """Every way of naming the server is checked: ``--api-url`` after the command, before
    it, and ``AUTOPACK_API_URL`` (the last two were ignored: exit 0 beside a server on
    another database)."""
    from tests.support import script

    env = clean_env(DATABASE_URL=database_url)
    with (
        Server(env, cwd=tmp_path) as same,
        Server(clean_env(DATABASE_URL=second_database_url), cwd=tmp_path) as other,
    ):
        other_id = other.wait_healthy()["database"]["instance_id"]
        for url, checked in ((same.url, True), (other.url, False)):
            named = [
                script("db_identity_check.py", "--api-url", url, cwd=tmp_path, env=env),
                cli("--api-url", url, "db", "identity", cwd=tmp_path, env=env),
                cli("db", "identity", cwd=tmp_path, env={**env, "AUTOPACK_API_URL": url}),
            ]
            for way, result in enumerate(named):
                if checked:
                    assert result.returncode == 0, (way, result.stderr)
                    assert "uses this database" in result.stdout, way
                    continue
                assert result.returncode == 2, (way, result.stdout[-2000:])
                combined = result.stdout + result.stderr
                assert database_identity(database_url, tmp_path)["instance_id"] in combined
                assert other_id in combined, way


def test_identity_check_never_prints_the_api_urls_password(tmp_path: Path) -> None:
    """``AUTOPACK_API_URL`` is a setting (a ``.env`` line) and may carry a password: the
    JSON report redacted it, the table's ✘ and ✔ lines printed it."""
    from tests.support import free_port

    url = empty_sqlite(tmp_path / "autopack.db")
    database_identity(url, tmp_path)  # set up
    nowhere = f"http://ops:hunter2-secret@127.0.0.1:{free_port()}"
    for extra in ((), ("--json",)):
        result = cli(
            "db",
            "identity",
            *extra,
            cwd=tmp_path,
            env=clean_env(DATABASE_URL=url, AUTOPACK_API_URL=nowhere),
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "no Autopack API answers" in result.stdout + result.stderr, extra
        assert "hunter2" not in result.stdout + result.stderr, extra
        assert "Traceback" not in result.stderr
