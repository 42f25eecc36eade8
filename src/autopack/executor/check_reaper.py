"""Nothing a check starts outlives it, nor the executor that ran it: the marker, a fallback.

What a check starts is killed by the process its shell runs under
(:mod:`autopack.executor.check_shell`). In case that cannot (it was killed itself), every
check's shell has :data:`CHECK_MARKER` = ``EXECUTOR.CHECK`` (two random tokens) in its
environment: every process inheriting it is that check's, wherever it moved (a daemon
that left the check's process group with ``setsid`` or a double fork), unless it was
started with an environment of its own (``env -i``, ``Popen(env={...})``).
:func:`kill_marked` kills them when the check's shell ends.

An executor killed with SIGKILL runs no cleanup: its checks (in sessions of their own,
which its signals never reached) ran on, a hung one forever, in a worktree the next
executor removes. So each executor process starts one reaper (:func:`ensure_reaper`, this
module run as a program) whose standard input is a pipe only the executor holds: when the
executor dies, however, the pipe closes and the reaper kills every process carrying the
executor's token, continues every check's wrapper a check may have stopped, then exits.
Without ``/proc`` (not Linux) neither can find anything.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from autopack.executor.git import local_environment

CHECK_MARKER = "AUTOPACK_CHECK_ID"
EXECUTOR_TOKEN = secrets.token_hex(8)
"""This process's part of every marker it hands out."""

_reaper: list[subprocess.Popen[bytes]] = []
_reaper_lock = threading.Lock()


def new_marker() -> str:
    """A marker for one check of this executor."""
    return f"{EXECUTOR_TOKEN}.{secrets.token_hex(8)}"


def _carrying(prefix: str, where: str) -> list[int]:
    """The processes of this user whose ``/proc/PID/<where>`` (``environ``: the marker in
    their environment; ``cmdline``: as an argument) holds a marker starting with ``prefix``."""
    needle = f"{CHECK_MARKER}={prefix}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            items = (entry / where).read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if any(item.startswith(needle) for item in items.split(b"\0")):
            found.append(int(entry.name))
    return found


def kill_marked(prefix: str) -> None:
    """Kill every process whose marker starts with ``prefix``, until none is left (one may
    fork while we look)."""
    for _ in range(100):
        found = [pid for pid in _carrying(prefix, "environ") if pid != os.getpid()]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def continue_wrappers(prefix: str) -> None:
    """Continue every check's :mod:`~autopack.executor.check_shell` (its marker is an
    argument, not in its environment) whose marker starts with ``prefix``.

    A check can stop its wrapper (``kill -STOP $PPID``); the SIGTERM the executor's death
    sends it then stays pending, and the wrapper, with what the check started without the
    marker, stayed stopped forever. Continued, it kills and reaps them, then exits."""
    for pid in _carrying(prefix, "cmdline"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)


def ensure_reaper() -> None:
    """Start this executor's reaper, once (see the module's docstring)."""
    with _reaper_lock:
        if _reaper and _reaper[0].poll() is None:
            return
        _reaper[:] = [
            subprocess.Popen(
                [sys.executable, "-m", "autopack.executor.check_reaper", EXECUTOR_TOKEN],
                # no credentials: it outlives the executor, and the checks can read the
                # environment of a process of their user that holds no secret of its own
                env=local_environment(os.environ),
                stdin=subprocess.PIPE,  # its write end stays here: the pipe is not inherited
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the executor's group is not its end
            )
        ]
        atexit.register(_stop_reaper, _reaper[0])


def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
    """At a normal exit: close the pipe (the reaper's cue) and wait for it to finish."""
    if reaper.stdin is not None:
        reaper.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=10)


def main() -> None:
    """Wait for the executor's end (its pipe closing), then kill what its checks left."""
    token = sys.argv[1]
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    kill_marked(f"{token}.")  # first: a marked process may be what stops a wrapper
    continue_wrappers(f"{token}.")


if __name__ == "__main__":
    main()
