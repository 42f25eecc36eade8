"""Writing a validated change into the run's workspace: all files or none, and undoable.

Every file is first written to a temporary sibling, then moved over its target with
``os.replace`` (atomic on POSIX). If any step fails, files already replaced are restored.
An attempt whose checks or audit fail is reverted the same way, so the workspace only ever
holds the output of completed phases. A git workspace gets one commit per completed phase.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from autopack.builder.change import Change

_GIT_LOCK = threading.Lock()


@dataclass
class AppliedChange:
    """What :func:`apply_change` did, with enough kept to undo it."""

    workspace: Path
    paths: list[str]
    previous: dict[str, bytes | None] = field(default_factory=dict, repr=False)
    """Content of each touched path before the change (None: it did not exist)."""

    def revert(self) -> None:
        """Put every touched file back as it was (deleting files that did not exist)."""
        for path, previous in self.previous.items():
            target = self.workspace / path
            if previous is None:
                target.unlink(missing_ok=True)
            else:
                _atomic_write(target, previous)


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".autopack", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def apply_change(workspace: Path, change: Change) -> AppliedChange:
    """Write every planned file and delete every planned deletion, or nothing at all."""
    applied = AppliedChange(workspace=workspace, paths=[])
    try:
        for write in change.writes:
            target = workspace / write.path
            applied.previous[write.path] = target.read_bytes() if target.is_file() else None
            _atomic_write(target, write.content.encode())
            applied.paths.append(write.path)
        for path in change.deletes:
            target = workspace / path
            applied.previous[path] = target.read_bytes() if target.is_file() else None
            target.unlink(missing_ok=True)
            applied.paths.append(path)
    except BaseException:
        applied.revert()
        raise
    return applied


def is_git_repository(workspace: Path) -> bool:
    return (workspace / ".git").exists()


def commit_phase(workspace: Path, paths: list[str], message: str) -> str | None:
    """Commit ``paths`` in a git workspace (one commit per completed phase); the new sha."""
    if not paths or not is_git_repository(workspace):
        return None

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=workspace, capture_output=True, text=True, check=False
        )

    with _GIT_LOCK:  # phases of one executor finish concurrently in the same repository
        identity: list[str] = []
        if git("config", "user.email").returncode != 0:
            identity = ["-c", "user.name=Autopack", "-c", "user.email=autopack@localhost"]
        git("add", "-A", "--", *paths).check_returncode()
        result = git(*identity, "commit", "-q", "-m", message, "--", *paths)
        if result.returncode != 0:
            if "nothing to commit" in result.stdout + result.stderr:
                return None
            raise RuntimeError(f"git commit failed: {result.stderr.strip() or result.stdout}")
        return git("rev-parse", "HEAD").stdout.strip()
