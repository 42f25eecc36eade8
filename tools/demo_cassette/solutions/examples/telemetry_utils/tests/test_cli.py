import json
from pathlib import Path

import pytest

from examples.telemetry_utils.cli import main


def test_slugify_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slugify", "Hello World", "--separator", "_"]) == 0
    assert capsys.readouterr().out.strip() == "hello_world"


def test_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("one two two\n")
    assert main(["stats", str(sample), "--top", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["top_words"] == [["two", 2]]


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err
