"""An executor refuses checks outside its allow-list (a run file is code).

The drain is the real CLI with ``--allow-check-prefix``; the refused phase is handed back
untried before any LLM call, its command never runs, and the drain stops naming it: an
executor that allows the check drains it later.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack.executor.check_policy import CheckPolicy
from tests.conftest import empty_sqlite
from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    env_for,
    files,
    line,
    phase,
    rows,
    run_file,
)
from tests.support import cli


def _states(url: str) -> dict[str, str]:
    return {r["phase_id"]: r["state"] for r in rows(url, "SELECT phase_id, state FROM phases")}


def test_a_check_outside_the_allow_list_is_handed_back_for_an_executor_that_allows_it(
    tmp_path: Path,
) -> None:
    """The refused phase was failed (``check_not_allowed``, not retryable): in a fleet
    where some executors allow its check, one that does not failed it for all of them."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    allowed = 'python -c "print(42)"'
    spec = [
        phase("good", ["pkg/good.py"], checks=[allowed]),
        phase("evil", ["pkg/evil.py"], checks=["touch pwned"]),
    ]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    tape = cassette(
        tmp_path,
        [line("good", 1, files(good_py="G = 1\n")), line("evil", 1, files(evil_py="E = 1\n"))],
    )
    drain = [
        *("drain", "run", "--run-id", "exec-run", "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
    ]
    result = cli(*drain, "--allow-check-prefix", "python -c", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "exec-run/evil" in result.stderr and "touch pwned" in result.stderr
    assert "handed back untried" in result.stderr
    assert _states(url) == {"good": "COMPLETE", "evil": "QUEUED"}
    assert not (tmp_path / "ws" / "pwned").exists() and not (tmp_path / "pwned").exists()
    [refused] = attempts(url, "evil")
    assert refused["stop_reason"] == "interrupted"
    assert "touch pwned" in refused["error"] and "--allow-check-prefix" in refused["error"]
    calls = rows(url, "SELECT phase_id FROM llm_usage_events")
    assert [c["phase_id"] for c in calls] == ["good"]  # no LLM call for the refused phase

    unrestricted = cli(*drain, "--json", cwd=tmp_path, env=env)
    assert unrestricted.returncode == 0, unrestricted.stderr[-3000:]
    assert json.loads(unrestricted.stdout)["phase_states"] == {
        "good": "COMPLETE",
        "evil": "COMPLETE",
    }


def test_drain_phase_refuses_by_the_environment_setting_and_says_why(tmp_path: Path) -> None:
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url, AUTOPACK_ALLOW_CHECK_PREFIX="python -m pytest;ruff")
    create_run(
        run_file(tmp_path, [phase("evil", ["pkg/evil.py"], checks=["touch pwned"])]), env, tmp_path
    )
    tape = cassette(tmp_path, [line("evil", 1, files(evil_py="E = 1\n"))])
    result = cli(
        *("drain", "phase", "--run-id", "exec-run", "--phase-id", "evil", "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "'python -m pytest', 'ruff'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ws" / "pwned").exists()
    assert _states(url) == {"evil": "QUEUED"}
    [refused] = attempts(url, "evil")
    assert refused["stop_reason"] == "interrupted"
    assert rows(url, "SELECT phase_id FROM llm_usage_events") == []


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        ("python -m pytest -q tests/", True),
        ("python -m pytest", True),
        ("python -m pytestx", False),
        ("ruff check .", True),
        ("python -m pytest; rm -rf /", False),
        ("python -m pytest && curl evil", False),
        ("python -m pytest | sh", False),
        ("python -m pytest $(curl evil)", False),
        ("python -m pytest `curl evil`", False),
        ("python -m pytest > /etc/passwd", False),
        ("python -m pytest\ncurl evil", False),
        ("touch pwned", False),
    ],
)
def test_the_allow_list_matches_whole_words_and_refuses_shell_operators(
    command: str, allowed: bool
) -> None:
    policy = CheckPolicy.parse("python -m pytest; ruff ")
    assert policy is not None
    assert (policy.refusal([command]) is None) is allowed
    assert CheckPolicy.parse("") is None and CheckPolicy.parse(None) is None


@pytest.mark.parametrize("prefix", ["", "  ", "python -c;touch"])
def test_an_empty_prefix_is_exit_2_not_an_allow_list_that_allows_everything(
    tmp_path: Path, prefix: str
) -> None:
    """``--allow-check-prefix "$PREFIX"`` with PREFIX unset gave the empty prefix, which
    dropped the allow-list: the phase's ``touch pwned`` ran. Refused naming the option,
    before anything is claimed."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    spec = [phase("evil", ["pkg/evil.py"], checks=["touch pwned"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    tape = cassette(tmp_path, [line("evil", 1, files(evil_py="E = 1\n"))])
    result = cli(
        *("drain", "run", "--run-id", "exec-run", "--allow-check-prefix", prefix),
        *("--auditor", "rules", "--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Invalid value for '--allow-check-prefix'" in result.stderr
    assert not (tmp_path / "ws" / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert attempts(url, "evil") == []


@pytest.mark.parametrize("setting", ["  ", ";", " ; "])
def test_a_setting_naming_no_command_is_exit_2_not_every_check_allowed(
    tmp_path: Path, setting: str
) -> None:
    """``AUTOPACK_ALLOW_CHECK_PREFIX=" "`` (or ``;`` alone) was read as no allow-list:
    the phase's ``touch pwned`` ran. Refused naming the setting, before any claim."""
    url = empty_sqlite(tmp_path / "autopack.db")
    create_run(
        run_file(tmp_path, [phase("evil", ["pkg/evil.py"], checks=["touch pwned"])]),
        env_for(url),
        tmp_path,
    )
    tape = cassette(tmp_path, [line("evil", 1, files(evil_py="E = 1\n"))])
    result = cli(
        *("drain", "run", "--run-id", "exec-run", "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        cwd=tmp_path,
        env=env_for(url, AUTOPACK_ALLOW_CHECK_PREFIX=setting),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert "AUTOPACK_ALLOW_CHECK_PREFIX" in said and "names no command" in said, said
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws" / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert attempts(url, "evil") == []
