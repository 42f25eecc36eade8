"""Which local repositories this machine's drains used for each run, so the run's code is
found again without repeating ``--workspace``.

A drain given ``--workspace DIR`` (or one that used the default workspace of another
directory) left the run's branch there; ``autopack run export RUN DIR`` or the next drain
then looked only in the default ``autopack-workspaces/RUN_ID`` and refused, asking for
the same ``--workspace`` again. A local path means something on one machine only, so it
is remembered on that machine, under the cache directory, not in the shared database
(another machine's path is not a place to look, and a worker's token cannot steer where
an operator's commands read or write).

An entry is only a candidate: it stands in for the default workspace when it holds the
run's accepted head commit, so an entry left by a run of the same id in another database,
or a repository moved or deleted since, is never taken for the run's code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from autopack.executor.git import git
from autopack.logs import log_event
from autopack.paths import read_text_file

logger = logging.getLogger("autopack.executor.repository")


def holds(workspace: Path, commit: str) -> bool:
    """Is ``commit`` in the repository at ``workspace``?"""
    if not workspace.is_dir():
        return False
    found = git("cat-file", "-e", f"{commit}^{{commit}}", cwd=workspace, check=False)
    return found.returncode == 0


def recall(default: Path, run_id: str, head: str, cache_dir: Path) -> Path:
    """The default workspace, or, when it lacks the run's accepted head, the repository
    this machine last used for the run that holds it (a ``--workspace`` given to an
    earlier drain, or the default workspace of another directory)."""
    if holds(default, head):
        return default
    for remembered in recalled(cache_dir, run_id):
        if remembered != default and holds(remembered, head):
            log_event(logger, "workspace_recalled", run_id=run_id, path=remembered)
            return remembered
    return default


def _record(cache_dir: Path, run_id: str) -> Path:
    # Run ids are letters, digits, '.', '_' and '-' starting with a letter or digit
    # (rundef): a file name as they are.
    return cache_dir.expanduser() / "workspaces" / run_id


def recalled(cache_dir: Path, run_id: str) -> list[Path]:
    """The repositories remembered for ``run_id``, the newest first."""
    try:
        lines = read_text_file(_record(cache_dir, run_id)).splitlines()
    except (OSError, UnicodeDecodeError):  # none yet, unreadable (a FIFO: no hang): none
        return []
    return [Path(line) for line in reversed(lines) if line.strip()]


def remember(cache_dir: Path, run_id: str, workspace: Path) -> None:
    """Add ``workspace`` (absolute) to the run's entries, once. A line appended in one
    write, so drains remembering at the same time never interleave; a cache that cannot
    be written costs only the convenience, never the drain."""
    if workspace in recalled(cache_dir, run_id):
        return
    record = _record(cache_dir, run_id)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO there is refused (ENXIO) instead of waiting for a reader;
        # O_NOFOLLOW: a symlink there (a check can write the cache) is refused (ELOOP),
        # never a line appended to the file it leads to
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW
        descriptor = os.open(record, flags, 0o644)
        try:
            os.write(descriptor, f"{workspace}\n".encode())
        finally:
            os.close(descriptor)
    except OSError:
        return
