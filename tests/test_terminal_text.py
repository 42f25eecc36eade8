"""Text from outside Autopack reaches the operator's terminal shown, never obeyed.

A provider's (or a proxy's) error page and the output of a check (code the LLM wrote) are
printed by the drain's progress lines and summary and by ``run phase``. Markup was
escaped, but control characters went through: ``ESC ] 0 ;`` retitled the terminal,
``ESC [ 2 J`` erased what it showed, ``ESC ] 52 ;`` writes the clipboard in many
terminals. They are shown as ``\\x1b`` instead, as file names' already were refused.
"""

from __future__ import annotations

from pathlib import Path

from tests.executor_support import (
    cassette,
    cli_drain,
    create_run,
    env_for,
    files,
    line,
    phase,
    run_file,
)
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer, anthropic_message
from tests.support import cli

HOSTILE = "\x1b]0;PWNED\x07 \x1b[2J \x9b2K \x1b]52;c;UFdORUQ=\x07"


def _obeyed(text: str) -> bool:
    return any(code in text for code in ("\x1b", "\x9b", "\x07"))


def test_a_providers_error_page_cannot_drive_the_terminal(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        wire.script(ANTHROPIC_PATH, Reply(400, f"<html>bad gateway {HOSTILE}</html>"))
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        drained = cli_drain(
            *("run", "--run-id", "exec-run", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **provider},
            cwd=tmp_path,
        )
    shown = cli("run", "phase", "exec-run", "p1", env=env, cwd=tmp_path)
    assert drained.returncode == 1, drained.stderr[-3000:]
    for text in (drained.stdout, drained.stderr, shown.stdout):
        assert "bad gateway" in text and "\\x1b]0;PWNED" in text, text[-2000:]
        assert not _obeyed(text), repr(text[-2000:])


def test_a_checks_output_cannot_drive_the_terminal(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    check = "printf 'failing \\033]0;PWNED\\007 \\033[2J \\033]52;c;UFdORUQ=\\007\\n'; exit 1"
    spec = phase("p1", ["pkg/a.py"], checks=[check], max_attempts=1)
    create_run(run_file(tmp_path, [spec]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    drained = cli_drain(
        *("phase", "--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "off", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    shown = cli("run", "phase", "exec-run", "p1", env=env, cwd=tmp_path)
    assert drained.returncode == 1, drained.stderr[-3000:]
    assert "failing \\x1b]0;PWNED" in shown.stdout, shown.stdout[-2000:]
    for text in (drained.stdout, drained.stderr, shown.stdout):
        assert not _obeyed(text), repr(text[-2000:])


def test_what_a_server_says_to_doctor_is_shown_not_obeyed(tmp_path: Path) -> None:
    """doctor printed its checks' details as markup: "[/x]" in a server's refusal (or in
    a path) was a MarkupError traceback, and a control character reached the terminal."""
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    assert cli("db", "init", env=env, cwd=tmp_path).returncode == 0
    with WireServer() as wire:
        wire.models_status = 401
        wire.models_refusal = f"bad key [/x] {HOSTILE}"
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        doctor = cli("doctor", env={**env, **provider}, cwd=tmp_path)
    assert doctor.returncode == 2, doctor.stderr[-3000:]
    assert "Traceback" not in doctor.stderr
    assert "bad key [/x] \\x1b]0;PWNED" in doctor.stderr, doctor.stderr[-2000:]
    assert not _obeyed(doctor.stdout + doctor.stderr), repr(doctor.stderr[-2000:])


def test_a_usage_count_that_is_no_integer_prints_no_library_warning(tmp_path: Path) -> None:
    """A count of 5.5 tokens: the answer was refused as malformed, but first pydantic
    printed a UserWarning with its own source lines from inside the SDK."""
    sqlite_url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(sqlite_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], max_attempts=1)]), env, tmp_path)
    with WireServer() as wire:
        body = anthropic_message(files(a_py="A = 1\n"), usage_extra={"input_tokens": 5.5})
        wire.script(ANTHROPIC_PATH, Reply(200, body))
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        drained = cli_drain(
            *("run", "--run-id", "exec-run", "--auditor", "off"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **provider},
            cwd=tmp_path,
        )
    assert drained.returncode == 1, drained.stderr[-3000:]
    assert "response is malformed" in drained.stderr, drained.stderr[-3000:]
    assert "Warning" not in drained.stderr and "pydantic" not in drained.stderr, drained.stderr


def test_config_show_shows_a_settings_value_not_obeys_it(tmp_path: Path) -> None:
    """A value from a .env file (or the environment) was printed as markup: "[/x]" was a
    MarkupError traceback, "[red]" coloured the table, and a control character reached
    the terminal."""
    (tmp_path / ".env").write_text(f"AUTOPACK_BUILDER_MODEL=m [/x] [red] {HOSTILE}\n")
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    shown = cli("config", "show", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "Traceback" not in shown.stderr
    assert "m [/x] [red] \\x1b]0;PWNED" in shown.stdout, shown.stdout[-3000:]
    assert not _obeyed(shown.stdout + shown.stderr), repr(shown.stdout[-2000:])
