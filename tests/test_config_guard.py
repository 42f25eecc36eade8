"""The repository's git configuration, put back after checks (executor/config_guard.py)."""

from __future__ import annotations

from pathlib import Path

from autopack.executor.config_guard import config_restored
from tests.executor_support import git, repository


def test_overlapping_checks_put_back_the_configuration_they_first_found(tmp_path: Path) -> None:
    """Attempt A's check configures an fsmonitor; attempt B's checks start meanwhile; A's
    end first. Taken when B's checks started, B's "before" held A's change, and B wrote it
    back after A had put the configuration right."""
    ws = repository(tmp_path / "ws", {"a.txt": "a\n"})
    first, second = config_restored(ws), config_restored(ws)
    a = first.__enter__()
    git("config", "core.fsmonitor", "./steal.sh", cwd=ws)  # A's check
    b = second.__enter__()
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert "fsmonitor" not in git("config", "--list", "--local", cwd=ws)
    assert a.changed == ["+core.fsmonitor=./steal.sh"]
    assert b.changed == []
