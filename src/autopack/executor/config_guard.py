"""A repository's git configuration, put back as it was after a phase's checks.

Checks run the LLM's code (its tests), in a checkout of the executor's repository. Git
configuration names commands git runs by itself (``core.fsmonitor``, ``core.sshCommand``,
filter, diff and merge drivers); written by a check (``git config core.fsmonitor
./steal.sh``, shared by every worktree), such a command ran in each of Autopack's own
git commands after it, in this attempt's commit and in every later phase and run using
the repository: outside the check's lifetime, where its reaper never looks. So the
configuration files are read before the checks and, when the checks changed them, written
back (as the drain first found them), and the attempt fails with
``git_config_changed_by_checks`` naming what changed.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autopack.executor.git import git, out
from autopack.paths import read_regular, write_atomic


@dataclass
class ConfigChanges:
    """What the checks changed (settings as ``key=value``, ``+`` added, ``-`` removed)."""

    changed: list[str] = field(default_factory=list)


def _config_files(checkout: Path) -> tuple[list[Path], list[Path]]:
    """The repository's own configuration (shared by every checkout: ``config``, and the
    ``shallow`` and ``info/grafts`` files that say where history ends) and this checkout's
    (``config.worktree``), and
    the files that say which repository the checkout is: its ``.git`` file and its
    ``commondir`` (and the repository's own: git reads one in any git directory). A check
    that pointed one at a repository of its own (whose config names an fsmonitor) had
    Autopack's git, and the user's, run that repository's commands."""
    common, own = out(
        "rev-parse", "--path-format=absolute", "--git-common-dir", "--git-dir", cwd=checkout
    ).splitlines()
    # ``shallow`` and ``info/grafts`` cut or rewrite history for every git reading the
    # repository (Autopack's own ignores grafts; a real shallow clone needs its file)
    shared = [Path(common) / name for name in ("config", "commondir", "shallow", "info/grafts")]
    return shared, [Path(own) / "config.worktree", Path(own) / "commondir", checkout / ".git"]


# What is at a path: None (nothing), or ("file", content), ("link", target), ("dir", b""),
# or ("other", what it is) for a FIFO, socket or device.
_State = tuple[str, bytes] | None


def _state(path: Path) -> _State:
    """What is at ``path``, never waiting: a check that put a FIFO where ``shallow`` goes
    had the executor wait on it for ever, holding the lock every attempt's checks take."""
    if path.is_symlink():  # a link, even to an identical file, is not the file
        return ("link", os.fsencode(os.readlink(path)))
    if path.is_dir():
        return ("dir", b"")
    try:
        return ("file", read_regular(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return ("other", str(exc.strerror).encode())


def _put_back(path: Path, state: _State, parent: str) -> None:
    """Make ``path`` hold ``state`` again, only where it was: when its directory now
    resolves elsewhere (the checkout replaced by a link to a person's project), its
    ``.git`` there is theirs, and was removed whole to put back the checkout's file."""
    if os.path.realpath(path.parent) != parent:
        return
    if state is not None and state[0] == "other":  # a FIFO before the checks: git's to judge
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif state is None or state[0] != "file":
        path.unlink(missing_ok=True)
    if state is not None and state[0] == "link":
        os.symlink(os.fsdecode(state[1]), path)
    elif state is not None:
        write_atomic(path, state[1])


def _settings(state: _State, checkout: Path) -> set[str]:
    if state is None or not state[1]:
        return set()
    kind, content = state
    listed = git("config", "--file", "-", "--list", cwd=checkout, input=content, check=False)
    if kind != "file" or listed.returncode != 0:  # not a config git can read: as it is
        shown = "" if kind in ("file", "other") else f"{kind} "
        return {f"{shown}{content.decode(errors='replace')}"}
    return set(listed.stdout.decode(errors="replace").splitlines())


_FIRST_SEEN: dict[Path, _State] = {}
"""Each shared file as this executor first found it, before any of its checks ran there.
Not as it was when each attempt's checks started: with attempts in flight together, a
check's change was the later attempt's "before", written back once the first attempt had
put it right. (A checkout's own files are its attempt's alone while its checks run.)"""
_LOCK = threading.Lock()


@contextmanager
def config_restored(checkout: Path) -> Iterator[ConfigChanges]:
    """Put the repository's configuration back as this executor first found it (the
    checkout's own, as it was on entry), whatever happens in the block; the
    :class:`ConfigChanges` says what differed after it."""
    shared, own = _config_files(checkout)
    with _LOCK:
        found = {path: _FIRST_SEEN.setdefault(path, _state(path)) for path in shared}
    found |= {path: _state(path) for path in own}
    before = {path: state for path, state in found.items() if state != ("dir", b"")}
    parents = {path: os.path.realpath(path.parent) for path in before}
    changes = ConfigChanges()
    try:
        yield changes
    finally:
        with _LOCK:
            changed = {path: _state(path) for path in before if _state(path) != before[path]}
            for path in changed:  # first: what git reads below must be the repository's own
                if path.parent.is_dir():  # else the repository is gone (check_present says so)
                    _put_back(path, before[path], parents[path])
        for path, now in changed.items():
            old, new = _settings(before[path], checkout), _settings(now, checkout)
            changes.changed += [f"+{s}" for s in sorted(new - old)]
            changes.changed += [f"-{s}" for s in sorted(old - new)]
