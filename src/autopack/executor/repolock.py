"""The lock executors sharing a repository take turns on, and what a stopped holder costs.

Git takes a lock per ref and fails (it does not wait) when another process holds it, and
a fetch checks every worktree's HEAD while another thread moves one. The attempts of one
executor (threads) and the executors sharing one machine's cache (processes) therefore
take turns, on ``autopack.lock`` in the repository's git directory: each git step takes
milliseconds, the attempts' long parts (LLM calls, checks) hold nothing.

The lock only spares git steps failures git would report (its own locks keep refs and
worktrees whole). So a holder that keeps it far longer than any git step (an executor
stopped by SIGSTOP or Ctrl-Z mid-step) is waited for :data:`PATIENCE_SECONDS` once, then
gone on without while it stays stopped, with a warning naming its pid: waiting for it
stopped every executor on the machine, their leases renewed all along, until it was
resumed. A holder this machine sees
running (a long fetch) is waited for as long as it runs: going on beside it would turn its
slow step into another's ``git_error``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autopack.errors import ConfigError
from autopack.logs import log_event
from autopack.paths import file_kind

logger = logging.getLogger("autopack.executor.repository")
PATIENCE_SECONDS = 60.0


class RepositoryLock:
    """Re-entrant within a process (threads take turns), a file lock between processes."""

    def __init__(self, directory: Callable[[], Path]) -> None:
        self._directory = directory
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._gone: str | None = None
        """The stopped holder this process already went on without: it is not waited for
        again (waited for at every git step, one stopped executor cost every other on
        the machine a minute per step, minutes per attempt, for as long as it stayed
        stopped)."""

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def _file(self) -> int:
        """The lock file, never through a symlink: its holder's pid is written into it, so
        a link in its place (a check can write the repository's git directory) had the
        file it led to truncated and overwritten by every executor using the repository."""
        if self._fd is None:
            path = self._directory() / "autopack.lock"
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o644)
            except OSError as exc:
                if exc.errno == errno.EISDIR:  # a directory made there: a traceback
                    raise ConfigError(
                        f"{path} is a directory, not a regular file: remove it"
                    ) from None
                if exc.errno == errno.ELOOP:
                    raise ConfigError(
                        f"{path} is a symbolic link, not Autopack's lock file: remove it"
                    ) from None
                raise ConfigError(  # a read-only repository: a traceback at the drain's start
                    f"cannot open Autopack's lock file {path}: {exc.strerror} (the "
                    "repository's git directory must be writable by this executor)"
                ) from None
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):  # a FIFO: truncating it failed every git step
                os.close(fd)
                raise ConfigError(f"{path} is {file_kind(mode)}, not a regular file: remove it")
            self._fd = fd
        return self._fd

    def _acquire(self) -> None:
        """Take the file lock (and write who holds it in it), or go on without it once its holder
        has kept it :data:`PATIENCE_SECONDS`."""
        fd = self._file()
        deadline = time.monotonic() + PATIENCE_SECONDS
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                gone = self._gone
                if gone is not None and gone == _holder_of(fd) and not _running(gone):
                    return
                if time.monotonic() >= deadline:
                    holder = _holder_of(fd)
                    if _running(holder):
                        deadline = time.monotonic() + PATIENCE_SECONDS
                        continue
                    log_event(
                        logger,
                        "repository_lock_skipped",
                        logging.WARNING,
                        path=self._directory() / "autopack.lock",
                        holder=holder,
                        waited_seconds=PATIENCE_SECONDS,
                        hint="is that process stopped (SIGSTOP, Ctrl-Z)? going on without it",
                    )
                    self._gone = holder
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_holder()}\n".encode(), 0)
            return


_CANNOT_LOCK = re.compile(r"Unable to create '([^']+\.lock)': File exists")


def stale_git_lock(message: str, inside: Path) -> Path | None:
    """The lock file git's ``message`` says it could not create, when it lies in ``inside``
    and no git step has held it for :data:`PATIENCE_SECONDS`, else None.

    Asked of a cache clone only Autopack's git writes, under this lock, so such a file is
    what a git killed mid-update left (SIGKILL, the OOM killer): it failed every later
    fetch there, a try of an attempt each time another machine moved the branch, and a
    drain's start, until someone found and removed it by hand."""
    found = _CANNOT_LOCK.search(message)
    if found is None:
        return None
    path = Path(os.path.normpath(found.group(1)))
    try:
        if not path.resolve().is_relative_to(inside.resolve()):
            return None
        held = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # its git ended meanwhile: nothing is in the way now
        return path
    except OSError:
        return None
    return path if held > PATIENCE_SECONDS else None


def _holder_of(fd: int) -> str:
    """Who holds the lock, as the lock file says (see :func:`_holder`)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def _stat(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` from the state on (the name before it may hold spaces), or []."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()
    except (ValueError, OSError):
        return []


def _holder() -> str:
    """What the lock file says of its holder: pid and start time, so that another
    container's pid 1 is not taken for this one's."""
    started = _stat(os.getpid())[19:20]
    return " ".join([str(os.getpid()), *started])


def _running(holder: str) -> bool:
    """Whether the lock file's ``holder`` is a process here that is not stopped (state
    ``T``/``t``). One this machine cannot see (another container's), with another start
    time, or dead, is not running."""
    pid, _, started = holder.partition(" ")
    stat = _stat(pid)
    return len(stat) > 19 and stat[19] == started and stat[0] not in ("T", "t", "Z", "X")
