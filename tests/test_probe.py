"""The legacy probe command: passes on the bundled offline run, fails with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.config import child_env, load_settings
from tests.support import clean_env, cli, free_port, script

RUN = "telemetry-collection-v4"
SEED = "sqlite:///autopack_telemetry_seed.db"


def _env(**extra: str) -> dict[str, str]:
    return clean_env(DATABASE_URL=SEED, AUTOPACK_DEFAULT_API_PORT=str(free_port()), **extra)


def _probe(tmp_path: Path, phase: str, env: dict[str, str]) -> tuple[int, str, str]:
    created = script("create_telemetry_collection_run.py", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    result = script(
        "probe_telemetry_phase.py", "--run-id", RUN, "--phase-id", phase, cwd=tmp_path, env=env
    )
    return result.returncode, result.stdout, result.stderr


def test_probe_passes_on_the_bundled_offline_run(tmp_path: Path) -> None:
    code, stdout, stderr = _probe(
        tmp_path, "telemetry-p1-string-util", _env(TELEMETRY_DB_ENABLED="1")
    )
    assert code == 0, stdout + stderr
    assert f"{tmp_path}/autopack_telemetry_seed.db" in stderr  # the database it used, first
    assert "llm_usage_events: 0 → 2 (+2)" in stdout  # builder + auditor
    assert "token_estimation_v2_events: 0 → 1 (+1)" in stdout
    assert "phase COMPLETE" in stdout


def test_probe_fails_and_says_why_when_telemetry_is_off(tmp_path: Path) -> None:
    code, _stdout, stderr = _probe(tmp_path, "telemetry-p1-string-util", _env())
    assert code == 1
    assert "llm_usage_events: 0 → 0 (+0)" in stderr
    assert "because TELEMETRY_DB_ENABLED is not set" in stderr


def test_probe_of_a_missing_phase_names_the_database(tmp_path: Path) -> None:
    code, _, stderr = _probe(tmp_path, "no-such-phase", _env(TELEMETRY_DB_ENABLED="1"))
    assert code == 1
    assert "phase not found" in stderr and "no-such-phase" in stderr


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
