"""The legacy probe command: passes on the bundled offline run; never dead-ends (issue 13
§2): what could only end in "nothing was recorded" is refused before anything runs, with
the fix, and ``--force`` re-probes a COMPLETE phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.config import child_env, load_settings
from autopack.db import open_database
from tests.conftest import empty_sqlite
from tests.cp_support import claimed, finish
from tests.executor_support import create_run, env_for, phase, rows, run_file
from tests.support import clean_env, cli, free_port, script

RUN = "telemetry-collection-v4"
SEED = "sqlite:///autopack_telemetry_seed.db"
PHASE_P1 = "SELECT state, attempts FROM phases WHERE phase_id = 'telemetry-p1-string-util'"


def _env(**extra: str) -> dict[str, str]:
    return clean_env(DATABASE_URL=SEED, AUTOPACK_DEFAULT_API_PORT=str(free_port()), **extra)


def _probe(tmp_path: Path, phase: str, env: dict[str, str], *extra: str) -> tuple[int, str, str]:
    created = script("create_telemetry_collection_run.py", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    result = script(
        "probe_telemetry_phase.py",
        *("--run-id", RUN, "--phase-id", phase, *extra),
        cwd=tmp_path,
        env=env,
    )
    return result.returncode, result.stdout, result.stderr


def test_probe_passes_on_the_bundled_offline_run(tmp_path: Path) -> None:
    code, stdout, stderr = _probe(
        tmp_path, "telemetry-p1-string-util", _env(TELEMETRY_DB_ENABLED="1")
    )
    assert code == 0, stdout + stderr
    assert f"{tmp_path}/autopack_telemetry_seed.db" in stderr  # the database it used, first
    assert "✔ llm_usage_events: 0 → 2 (+2)" in stdout  # builder + auditor
    assert "✔ token_estimation_v2_events: 0 → 1 (+1)" in stdout
    assert "phase COMPLETE" in stdout
    assert "· builder output tokens: " in stdout  # a figure, not a check


def test_probe_with_telemetry_off_refuses_before_anything_runs(tmp_path: Path) -> None:
    env = _env()
    code, stdout, stderr = _probe(tmp_path, "telemetry-p1-string-util", env)
    assert code == 2
    assert "telemetry is off (TELEMETRY_DB_ENABLED from default)" in stderr
    assert "Run it with TELEMETRY_DB_ENABLED=1 (the phase was not touched)" in stderr
    assert "✔" not in stdout
    phase = rows(f"sqlite:///{tmp_path}/autopack_telemetry_seed.db", PHASE_P1)[0]
    assert (phase["state"], phase["attempts"]) == ("QUEUED", 0)


def test_probe_of_a_missing_phase_names_the_database(tmp_path: Path) -> None:
    code, _, stderr = _probe(tmp_path, "no-such-phase", _env(TELEMETRY_DB_ENABLED="1"))
    assert code == 2
    assert "nothing to probe" in stderr and "no-such-phase" in stderr
    assert f"{tmp_path}/autopack_telemetry_seed.db" in stderr


def test_a_complete_phase_is_refused_then_forced_and_probed_again(
    database_url: str, tmp_path: Path
) -> None:
    env = clean_env(
        DATABASE_URL=database_url,
        AUTOPACK_DEFAULT_API_PORT=str(free_port()),
        TELEMETRY_DB_ENABLED="1",
    )
    code, stdout, stderr = _probe(tmp_path, "telemetry-p1-string-util", env)
    assert code == 0, stdout + stderr

    code, stdout, stderr = _probe(tmp_path, "telemetry-p1-string-util", env)
    assert code == 2
    assert "is already COMPLETE: nothing would run" in stderr
    assert "`--force` requeues it" in stderr  # the script's option too, not the CLI's name
    assert "✔" not in stdout

    code, stdout, stderr = _probe(tmp_path, "telemetry-p1-string-util", env, "--force")
    assert code == 0, stdout + stderr
    assert "requeued telemetry-collection-v4/telemetry-p1-string-util (was COMPLETE)" in stderr
    assert stderr.count("NO LLM CREDENTIALS") == 1, stderr  # "one loud warning" was two
    assert "✔ llm_usage_events: 2 → 4 (+2)" in stdout
    assert "✔ token_estimation_v2_events: 1 → 2 (+1)" in stdout
    [run] = rows(database_url, "SELECT state FROM runs")
    assert run["state"] == "RUNNING"  # the run reopened; the other nine phases still wait


def test_children_keep_the_telemetry_flag_wherever_they_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("TELEMETRY_DB_ENABLED=0\n")
    monkeypatch.setenv("TELEMETRY_DB_ENABLED", "yes")
    settings = load_settings().settings
    result = cli("config", "show", "--json", cwd=elsewhere, env=child_env(settings))
    shown = {row["name"]: row for row in json.loads(result.stdout)}
    assert shown["TELEMETRY_DB_ENABLED"]["value"] == "True"
    assert shown["TELEMETRY_DB_ENABLED"]["source"] == "env"


def test_force_on_a_run_no_answer_covers_is_refused_before_the_requeue(tmp_path: Path) -> None:
    """Without credentials the drain refuses a run the bundled cassette does not know, but
    `probe --force` requeued the phase first: the finished run reopened, a retry window
    was reset, and then nothing ran."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    database = open_database(url, role="test", log=False)
    try:
        finish(database, claimed(database, run_id="exec-run"), "FAILED", retryable=False)
    finally:
        database.close()
    before = rows(url, "SELECT state, attempts FROM phases") + rows(url, "SELECT state FROM runs")
    result = cli(
        "probe", "--run-id", "exec-run", "--phase-id", "p1", "--force", cwd=tmp_path, env=env
    )
    assert result.returncode == 2, result.stderr
    assert "cannot be drained" in result.stderr and "requeued" not in result.stderr
    after = rows(url, "SELECT state, attempts FROM phases") + rows(url, "SELECT state FROM runs")
    assert after == before == [{"state": "FAILED", "attempts": 1}, {"state": "DONE_FAILED_PHASES"}]
