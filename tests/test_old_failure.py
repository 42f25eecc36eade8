"""The legacy tool's probe failure (PROBE_FAILURE_ANALYSIS.md), reproduced and beaten.

The working directory holds a ``.env`` naming ``sqlite:///autopack.db`` and an initialised
``autopack.db`` with no runs, served by a stale API server on the default port. The user
types the legacy commands with ``DATABASE_URL=sqlite:///autopack_telemetry_seed.db``. The
old executor attached to (or spawned) a server on the wrong database and got a 404; this
one must drain the phase in the right database, and refuse, naming both databases, when
told to use the stale server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.executor_support import phase_row, rows
from tests.support import Server, clean_env, cli, free_port, script

RUN = "telemetry-collection-v4"


@pytest.fixture
def legacy_dir(tmp_path: Path) -> Iterator[tuple[Path, Server]]:
    """A directory in the state the failure report describes, with its stale server."""
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///autopack.db\n")
    stale_env = clean_env()  # resolves through .env: the directory's autopack.db
    assert cli("db", "init", cwd=tmp_path, env=stale_env).returncode == 0
    stale = Server(stale_env, cwd=tmp_path, port=free_port())
    with stale:
        yield tmp_path, stale


def _legacy_env(stale: Server, **extra: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL="sqlite:///autopack_telemetry_seed.db",
        AUTOPACK_DEFAULT_API_PORT=str(stale.port),  # the stale server sits on "the" port
        **extra,
    )


def test_legacy_commands_drain_the_phase_in_the_right_database(
    legacy_dir: tuple[Path, Server],
) -> None:
    cwd, stale = legacy_dir
    env = _legacy_env(stale, TELEMETRY_DB_ENABLED="1")
    created = script("create_telemetry_collection_run.py", cwd=cwd, env=env)
    assert created.returncode == 0, created.stderr

    drained = script(
        "drain_one_phase.py",
        "--run-id",
        RUN,
        "--phase-id",
        "telemetry-p1-string-util",
        cwd=cwd,
        env=env,
    )
    assert drained.returncode == 0, drained.stderr
    assert "api_server_ignored" in drained.stderr and stale.url in drained.stderr

    seed = f"sqlite:///{cwd / 'autopack_telemetry_seed.db'}"
    assert phase_row(seed, "telemetry-p1-string-util", RUN)["state"] == "COMPLETE"
    assert rows(seed, "SELECT COUNT(*) AS n FROM llm_usage_events")[0]["n"] > 0
    assert rows(seed, "SELECT COUNT(*) AS n FROM token_estimation_v2_events")[0]["n"] > 0
    stale_db = f"sqlite:///{cwd / 'autopack.db'}"
    assert rows(stale_db, "SELECT COUNT(*) AS n FROM runs")[0]["n"] == 0
    assert stale.wait_healthy()["database"]["public_url"] == stale_db


def test_pointing_at_the_stale_server_is_refused_and_nothing_runs(
    legacy_dir: tuple[Path, Server],
) -> None:
    cwd, stale = legacy_dir
    env = _legacy_env(stale)
    assert script("create_telemetry_collection_run.py", cwd=cwd, env=env).returncode == 0
    refused = script(
        "drain_one_phase.py",
        "--run-id",
        RUN,
        "--phase-id",
        "telemetry-p2-number-util",
        "--api-url",
        stale.url,
        cwd=cwd,
        env=env,
    )
    assert refused.returncode == 2
    stale_id = stale.wait_healthy()["database"]["instance_id"]
    ours = json.loads(cli("db", "identity", "--json", cwd=cwd, env=env).stdout)
    for needle in (
        stale_id,
        ours["instance_id"],
        "autopack_telemetry_seed.db",
        f"{cwd}/autopack.db",
        stale.url,
    ):
        assert needle in refused.stderr, needle
    # the legacy symptom: lookups answered "not found" (instance ids are random hex, so
    # a bare "404" may be part of one)
    assert "NotFound" not in refused.stderr and "HTTP 404" not in refused.stderr
    seed = f"sqlite:///{cwd / 'autopack_telemetry_seed.db'}"
    assert phase_row(seed, "telemetry-p2-number-util", RUN)["state"] == "QUEUED"


def test_batch_drain_controller_help_names_the_options_it_passes_on(tmp_path: Path) -> None:
    """The README runs it with ``--api-url URL``; its ``--help`` listed only --run-id and
    --batch-size, so a user reading it could not know that --api-url (or any other
    ``autopack drain run`` option) is accepted."""
    shown = script("batch_drain_controller.py", "--help", cwd=tmp_path, env=clean_env())
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "--api-url URL" in text and "--concurrency K" in text
    assert "autopack drain run --help" in text
