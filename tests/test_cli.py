"""Mistyped commands get Typer's usage message and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import cli


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["drain", "run"], "Missing option '--run-id'"),
        (["drain", "run", "--run-id", "r", "--auditor", "maybe"], "use llm, rules or off"),
        (["run", "show"], "Missing argument"),
        (["db", "nonsense"], "No such command"),
        *[
            (["drain", command, *ids, flag, value], flag)
            for command, ids in [
                ("phase", ["--run-id", "r", "--phase-id", "p"]),
                ("run", ["--run-id", "r"]),
            ]
            for flag, value in [
                # each of these failed every attempt of the phase (executor_error, a
                # check that times out at once, a cap already passed) instead of exit 2
                ("--check-timeout", "nan"),
                ("--check-timeout", "inf"),
                ("--check-timeout", "0"),
                ("--check-timeout", "-1"),
                ("--replay-speed", "inf"),
                ("--approval-timeout", "nan"),
                ("--approval-timeout", "-5"),
                ("--phase-token-cap", "-1"),
                ("--phase-cost-cap", "nan"),
                ("--phase-cost-cap", "-1"),
                ("--escalation-factor", "inf"),
            ]
        ],
    ],
)
def test_usage_errors_name_the_problem_without_a_traceback(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "autopack.db").exists(), "a usage error must not touch a database"
