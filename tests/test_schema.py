"""The schema guard and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from autopack.db import open_database
from autopack.db.engine import make_engine
from autopack.db.models import Base
from tests.support import Server, clean_env, cli, database_identity


def _identity(url: str, cwd: Path) -> dict[str, object]:
    result = cli("db", "identity", "--json", cwd=cwd, env=clean_env(DATABASE_URL=url))
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_fresh_database_is_initialised_once_and_keeps_its_identity(
    database_url: str, tmp_path: Path
) -> None:
    first = database_identity(database_url, tmp_path)
    second = _identity(database_url, tmp_path)
    assert first["instance_id"] == second["instance_id"]
    assert first["schema_revision"] == first["code_revision"]
    assert first["row_counts"] == {
        "runs": 0,
        "phases": 0,
        "llm_usage_events": 0,
        "token_estimation_v2_events": 0,
    }


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    database = open_database(database_url, role="test", log=False, create=True)
    try:
        with database.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        database.close()


def _drop_approvals_keeping_a_run(url: str) -> None:
    database = open_database(url, role="test", log=False, create=True)
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO runs (id, state, goal, policy, tokens_used, cost_usd, created_at, "
                "updated_at) VALUES ('keep-me', 'QUEUED', 'g', '{}', 0, 0, :now, :now)"
            ),
            {"now": "2026-01-01 00:00:00"},
        )
        connection.execute(text("DROP TABLE approval_requests"))
    database.close()


def test_partial_schema_is_refused_with_exit_3_and_upgrade_repairs_it(
    database_url: str, tmp_path: Path
) -> None:
    before = database_identity(database_url, tmp_path)
    _drop_approvals_keeping_a_run(database_url)
    env = clean_env(DATABASE_URL=database_url)

    refused = cli("db", "identity", cwd=tmp_path, env=env)
    assert refused.returncode == 3
    assert "approval_requests" in refused.stderr
    assert "autopack db upgrade" in refused.stderr

    check = cli("db", "check", "--json", cwd=tmp_path, env=env)
    assert check.returncode == 3
    assert json.loads(check.stdout)["missing_tables"] == ["approval_requests"]

    fixed = cli("db", "upgrade", cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr
    after = _identity(database_url, tmp_path)
    assert after["instance_id"] == before["instance_id"]
    assert after["row_counts"]["runs"] == 1  # type: ignore[index]
    assert cli("db", "check", cwd=tmp_path, env=env).returncode == 0


def test_api_server_refuses_a_partial_schema(database_url: str, tmp_path: Path) -> None:
    database_identity(database_url, tmp_path)
    _drop_approvals_keeping_a_run(database_url)
    server = Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path)
    try:
        assert server.process.wait(timeout=30) == 3
        assert "approval_requests" in server.output()
        assert "autopack db upgrade" in server.output()
    finally:
        server.stop()


def test_a_dropped_column_is_named_and_upgrade_is_not_offered(
    database_url: str, tmp_path: Path
) -> None:
    database_identity(database_url, tmp_path)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE phase_attempts DROP COLUMN feedback"))
    engine.dispose()
    env = clean_env(DATABASE_URL=database_url)
    check = cli("db", "check", "--json", cwd=tmp_path, env=env)
    assert check.returncode == 3
    assert json.loads(check.stdout)["missing_columns"] == {"phase_attempts": ["feedback"]}
    refused = cli("db", "identity", cwd=tmp_path, env=env)
    assert refused.returncode == 3
    assert "table phase_attempts lacks columns: feedback" in refused.stderr
    assert "initialise a new one" in refused.stderr


def test_old_revision_is_refused(database_url: str, tmp_path: Path) -> None:
    database_identity(database_url, tmp_path)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ancient'"))
    engine.dispose()
    result = cli("db", "identity", cwd=tmp_path, env=clean_env(DATABASE_URL=database_url))
    assert result.returncode == 3
    assert "revision ancient" in result.stderr


def test_concurrent_first_starts_initialise_the_database_once(
    database_url: str, tmp_path: Path
) -> None:
    env = clean_env(DATABASE_URL=database_url)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "autopack", "db", "init"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [e for _, e in outputs]
    ids = {re.findall(r"instance_id (\S+)", stdout)[0] for stdout, _ in outputs}
    assert len(ids) == 1


def test_a_database_of_the_previous_revision_is_upgraded_keeping_its_rows(
    database_url: str, tmp_path: Path
) -> None:
    """A 0001 database (before runs had branches) is refused until `db upgrade` adds the
    new columns; its rows and identity stay."""
    from alembic import command

    from autopack.db.schema import CODE_REVISION, _alembic_config

    engine = make_engine(database_url)
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0001")
        connection.execute(
            text(
                "INSERT INTO runs (id, state, goal, policy, tokens_used, cost_usd, created_at, "
                "updated_at) VALUES ('old', 'QUEUED', '', '{}', 0, 0, :now, :now)"
            ),
            {"now": "2026-01-01 00:00:00"},
        )
    engine.dispose()
    env = clean_env(DATABASE_URL=database_url)
    refused = cli("db", "identity", cwd=tmp_path, env=env)
    assert refused.returncode == 3
    assert "revision 0001" in refused.stderr and "autopack db upgrade" in refused.stderr
    assert "initialise a new one" not in refused.stderr, "a pending migration adds them"
    fixed = cli("db", "upgrade", cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr
    after = _identity(database_url, tmp_path)
    assert after["schema_revision"] == CODE_REVISION != "0001"
    assert after["row_counts"]["runs"] == 1  # type: ignore[index]


@pytest.mark.parametrize("versions", [["9999"], ["0002", "0003"]], ids=["newer", "two rows"])
def test_a_revision_no_migration_leads_from_is_named_not_a_traceback(
    database_url: str, tmp_path: Path, versions: list[str]
) -> None:
    """A database a newer Autopack wrote (or one with two version rows): the check names
    it, and `db upgrade`, which it advises, says why it cannot rather than crashing."""
    open_database(database_url, role="test", log=False).close()
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM alembic_version"))
        for version in versions:
            connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": version})
    engine.dispose()
    env = clean_env(DATABASE_URL=database_url)
    checked = cli("db", "check", cwd=tmp_path, env=env)
    assert checked.returncode == 3 and ",".join(versions) in checked.stderr
    upgraded = cli("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 3, upgraded.stderr
    assert "Traceback" not in upgraded.stderr
    assert "cannot migrate from" in upgraded.stderr and "back the database up" in upgraded.stderr


def test_the_code_revision_is_the_head_of_the_shipped_migrations() -> None:
    """The schema check compares with a constant (it no longer imports Alembic to read the
    migrations on every start): a new migration without the constant fails here."""
    from alembic.script import ScriptDirectory

    from autopack.db.schema import CODE_REVISION, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_heads() == [CODE_REVISION]
