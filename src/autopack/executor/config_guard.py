"""A repository's git configuration, put back as it was after a phase's checks.

Checks run the LLM's code (its tests), in a checkout of the executor's repository. Git
configuration names commands git runs by itself (``core.fsmonitor``, ``core.sshCommand``,
filter, diff and merge drivers); written by a check (``git config core.fsmonitor
./steal.sh``, shared by every worktree), such a command ran in each of Autopack's own
git commands after it, in this attempt's commit and in every later phase and run using
the repository: outside the check's lifetime, where its reaper never looks. So the
configuration files are read before the checks and, when the checks changed them, written
back, and the attempt fails with ``git_config_changed_by_checks`` naming what changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autopack.executor.git import git, out
from autopack.paths import write_atomic


@dataclass
class ConfigChanges:
    """What the checks changed (settings as ``key=value``, ``+`` added, ``-`` removed)."""

    changed: list[str] = field(default_factory=list)


def _config_files(checkout: Path) -> list[Path]:
    """The repository's own configuration and this checkout's (``config.worktree``)."""
    common, own = out(
        "rev-parse", "--path-format=absolute", "--git-common-dir", "--git-dir", cwd=checkout
    ).splitlines()
    return [Path(common) / "config", Path(own) / "config.worktree"]


def _settings(content: bytes | None, checkout: Path) -> set[str]:
    if not content:
        return set()
    listed = git("config", "--file", "-", "--list", cwd=checkout, input=content, check=False)
    if listed.returncode != 0:  # not a config git can read: show it as it is
        return {content.decode(errors="replace")}
    return set(listed.stdout.decode(errors="replace").splitlines())


_FIRST_SEEN: dict[Path, bytes | None] = {}
"""Each configuration file as this executor first found it, before any of its checks ran
there. Not as it was when each attempt's checks started: with attempts in flight
together, a check's change was the later attempt's "before", written back once the first
attempt had put it right."""
_LOCK = threading.Lock()


def _content(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


@contextmanager
def config_restored(checkout: Path) -> Iterator[ConfigChanges]:
    """Put the repository's configuration back as this executor first found it, whatever
    happens in the block; the :class:`ConfigChanges` says what differed after it."""
    files = _config_files(checkout)
    with _LOCK:
        before = {path: _FIRST_SEEN.setdefault(path, _content(path)) for path in files}
    changes = ConfigChanges()
    try:
        yield changes
    finally:
        with _LOCK:
            for path, content in before.items():
                now = _content(path)
                if now == content:
                    continue
                old, new = _settings(content, checkout), _settings(now, checkout)
                changes.changed += [f"+{s}" for s in sorted(new - old)]
                changes.changed += [f"-{s}" for s in sorted(old - new)]
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    write_atomic(path, content)
