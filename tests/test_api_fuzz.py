"""schemathesis against a real server, on SQLite and on PostgreSQL: no 5xx, and every
answer as the OpenAPI document says (status, content type, headers, body schema).

The server has tokens and schemathesis sends the operator's (its ``ignored_auth`` check
also sends none and a wrong one). Phases: coverage (boundary values of every schema),
fuzzing, and stateful (following the document's links: create a run, claim, report).
The seed and the example count are fixed here so a failure reproduces exactly:
``schemathesis --config-file tests/schemathesis.toml run URL/openapi.json --seed SEED
--max-examples EXAMPLES -H "Authorization: Bearer TOKEN"``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, Server, clean_env

pytestmark = pytest.mark.slow  # a minute or more per backend: started first

SEED = 20261129
EXAMPLES = 10
"""Per operation and phase: with the coverage phase's boundary cases, about a thousand
requests per backend in under a minute."""
TOKEN = "schemathesis-operator-token-0123"


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a dev dependency: make install"
    return found


def test_no_server_error_and_no_schema_violation(database_url: str, tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL=database_url,
        AUTOPACK_API_TOKEN=TOKEN,
        AUTOPACK_WORKER_TOKEN="schemathesis-worker-token-01234",
    )
    with Server(env, cwd=tmp_path) as server:
        command = [
            _schemathesis(),
            "--config-file",
            str(REPO / "tests" / "schemathesis.toml"),
            "--no-color",
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--seed",
            str(SEED),
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--phases",
            "coverage,fuzzing,stateful",
            "--request-timeout",
            "30",
        ]
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
        )
        server_log = server.output()
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12_000:]
    assert "Test cases:" in report and "Seed: " + str(SEED) in report
    assert "Traceback" not in server_log and "request_failed" not in server_log, server_log[-5000:]
