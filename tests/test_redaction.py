"""No secret is stored, logged, recorded or answered (redact.py at every exit).

The adversary here is a provider (or a proxy in front of it) whose error body echoes the
request headers, key included. The drain runs for real (a subprocess, the real Anthropic
SDK against a loopback fake, a real database, a ``--record`` cassette), and the key must
not be anywhere afterwards: usage rows, attempt errors, the cassette, the drain's output,
the API's answers. Then the smaller exits: the database URL's password in a config error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack import redact
from autopack.client import ApiClient
from tests.executor_support import create_run, drain, env_for, phase, rows, run_file
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer
from tests.support import Server, clean_env, cli

KEY = "test-key-7f3a9c1e5b2d8e4f"
"""Not shaped like sk-…: only the configured-value and header rules can catch it."""


def test_a_provider_echoing_the_key_leaves_no_trace(database_url: str, tmp_path: Path) -> None:
    env = env_for(database_url, ANTHROPIC_API_KEY=KEY)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    tape = tmp_path / "recorded.jsonl"
    with WireServer() as wire:
        # 400 is not retried by the SDK; the body quotes the Authorization header
        wire.script(ANTHROPIC_PATH, Reply(400, echo_headers=True))
        result = drain(
            "phase",
            *("--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
            *("--workspace", str(tmp_path / "ws"), "--record", str(tape)),
            env={**env, "ANTHROPIC_BASE_URL": wire.url},
            cwd=tmp_path,
        )
        [request] = wire.seen(ANTHROPIC_PATH)
    assert KEY in json.dumps(request.headers), sorted(request.headers)
    assert result.returncode == 1, result.stderr[-3000:]

    [usage] = rows(database_url, "SELECT error_message FROM llm_usage_events")
    [attempt] = rows(database_url, "SELECT error FROM phase_attempts")
    recorded = tape.read_text()
    for where, text in [
        ("llm_usage_events.error_message", usage["error_message"]),
        ("phase_attempts.error", attempt["error"]),
        ("the cassette", recorded),
        ("the drain's stdout", result.stdout),
        ("the drain's stderr", result.stderr),
    ]:
        assert KEY not in text, where
        assert redact.MARK in text or where == "the drain's stderr", where
    assert "authorization" in usage["error_message"]  # redacted, not dropped

    with (
        Server(env, cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        events = client.request("GET", "/telemetry/events", params={"kind": "usage"}).text
        phase_detail = client.request("GET", "/runs/exec-run/phases/p1").text
    assert KEY not in events and redact.MARK in events
    assert KEY not in phase_detail and redact.MARK in phase_detail


def test_a_database_password_is_not_in_the_error(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL="mysql://root:hunter2secret@db.example/x")
    result = cli("db", "identity", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "not supported" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
    assert "root:[REDACTED]@db.example" in result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer SECRET-VALUE-1",
        '{"authorization": "Bearer SECRET-VALUE-1"}',
        "{'x-api-key': 'SECRET-VALUE-1', 'accept': 'json'}",
        '"{\\"api-key\\": \\"SECRET-VALUE-1\\"}"',
        "GET https://host/v1?api_key=SECRET-VALUE-1&x=1",
        "postgresql://user:SECRET-VALUE-1@db/autopack",
        "proxy said: sk-ant-api03-SECRETVALUE1234567890 is invalid",
        "clone https://SECRET-VALUE-1abcdefghijklmnopqrstuvwxyz0123@dev.azure.com/o/_git/r",
        "token github_pat_SECRETVALUE1234567890abcdef in a script",
        "remote https://glpat-SECRETVALUE1234567890@gitlab.example/o/r.git",
    ],
)
def test_header_url_and_key_shapes_are_redacted(text: str) -> None:
    redacted = redact.text(text)
    assert "SECRET-VALUE-1" not in redacted and "SECRETVALUE" not in redacted
    assert redact.MARK in redacted


def test_a_url_password_holding_a_raw_at_sign_is_redacted_whole() -> None:
    """``u:p@ss@host`` showed ``ss``: the password ran only to its first ``@``."""
    redacted = redact.text("cloning https://ana:hunter@2secret@git.example/x.git failed")
    assert redacted == f"cloning https://ana:{redact.MARK}@git.example/x.git failed"


def test_configured_secrets_are_redacted_in_json_shaped_data() -> None:
    redact.add_secrets(["configured-secret-0042"])
    nested = {"a": [{"b": "key configured-secret-0042 used"}], "configured-secret-0042": 1}
    cleaned = redact.data(nested)
    assert "configured-secret-0042" not in json.dumps(cleaned)
    assert cleaned["a"][0]["b"] == f"key {redact.MARK} used"
    assert redact.text("short") == "short"  # nothing shorter than a secret is touched
