"""Writing a validated change into an attempt's own worktree.

Each file is written to a temporary sibling and moved over its target with ``os.replace``
(atomic on POSIX), so a check never reads half a file. Modes follow what a person would
expect: a new file gets the normal mode for the umask, an overwritten file keeps its own
(an executable script stays executable). Nothing here ever undoes a write: the worktree
belongs to this attempt alone, and a failed attempt's worktree is set aside whole
(:mod:`autopack.executor.worktrees`), never "reverted" in a tree someone else uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from autopack.builder.change import Change
from autopack.paths import resolved, write_atomic


@dataclass
class AppliedChange:
    """What :func:`apply_change` did: the paths it touched and what they held before."""

    paths: list[str] = field(default_factory=list)
    previous: dict[str, bytes | None] = field(default_factory=dict, repr=False)
    """Content of each touched path before the change (None: it did not exist); the
    Auditor's diff is made from it."""


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)


def apply_change(worktree: Path, change: Change) -> AppliedChange:
    """Write every planned file and delete every planned deletion in ``worktree``."""
    applied = AppliedChange()
    for write in change.writes:
        target = worktree / write.path
        applied.previous[write.path] = target.read_bytes() if target.is_file() else None
        _write(target, write.content.encode())
        applied.paths.append(write.path)
    for path in change.deletes:
        target = worktree / path
        applied.previous[path] = target.read_bytes() if target.is_file() else None
        target.unlink(missing_ok=True)
        applied.paths.append(path)
    return applied


def replaced_since(worktree: Path, change: Change) -> list[str]:
    """The files ``change`` wrote that are no longer regular files at their own path in
    ``worktree`` (removed, or a symlink or directory now, or below one), as the phase's
    checks may leave them. The commit records the paths as they are on disk: a check that
    removed a file recorded a deletion of completed work no one approved, and one that
    put ``pkg/a.py -> /etc/passwd`` there committed a link out of the workspace. So are
    the files it deleted that are there again: a check that wrote one (or linked it to
    /etc/passwd) had that committed as the phase's work, the approved deletion never
    made and the branch holding what no answer wrote."""
    replaced = [path for path in change.deletes if os.path.lexists(worktree / path)]
    for write in change.writes:
        target = worktree / write.path
        if (
            not target.is_file()
            or target.is_symlink()
            or resolved(worktree, write.path) != write.path
        ):
            replaced.append(write.path)
    return replaced
