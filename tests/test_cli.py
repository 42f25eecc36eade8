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
