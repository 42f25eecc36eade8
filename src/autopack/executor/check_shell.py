"""The process a check's shell runs under: whatever the check starts ends with it.

:mod:`autopack.executor.checks` runs each check as this file run as a program
(``python -I -S check_shell.py EXECUTOR_PID MARKER COMMAND``: standard library only, no
site, so a check costs some 17 ms of CPU more than a bare shell). It runs
``/bin/sh -c COMMAND`` in a process group of its own, with ``MARKER``
(``AUTOPACK_CHECK_ID=...``) added to its environment, and exits as the shell did, once
nothing the shell started is left.

A daemon the check started escapes its process group (``setsid``, a double fork) and,
started with a cleared or replaced environment (``env -i``, a test's
``Popen(..., env={...})``), the marker too. So on Linux this process is a child
subreaper (``PR_SET_CHILD_SUBREAPER``): every process the check orphans becomes its
child, not init's, whatever its session or environment. When the shell ends, it kills
the shell's process group, then each of its children, again and again (a killed
process's children become its own), until it has none.

SIGTERM (the check's timeout or output cap, the executor stopping) kills the shell's
group, and the rest follows as above. So does the executor's death, even by SIGKILL:
the kernel sends SIGTERM then (``PR_SET_PDEATHSIG``). This process does not carry the
marker, so the executor's reaper (:mod:`autopack.executor.check_reaper`), which kills
every marked process then, does not kill it before it has killed the unmarked ones.

Without ``prctl`` (not Linux) this process only kills the shell's process group. If it is
itself killed with SIGKILL, what the check orphaned goes to init: the marker is what finds
it then (if it carries it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_shell: list[int] = []
"""The shell's pid, until it is reaped (then its process group may be another's)."""


def _prctl(option: int, value: int) -> None:
    """Linux's ``prctl``; nothing where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)


def _kill_shell_group(*_: object) -> None:
    """Kill the shell and its process group (the SIGTERM handler, too)."""
    for shell in _shell:
        with contextlib.suppress(OSError):  # all gone
            os.killpg(shell, signal.SIGKILL)


def _children() -> list[int]:
    """This process's children (with their own children, orphaned here, as they die)."""
    me = str(os.getpid())
    found = []
    pids = [e for e in os.listdir("/proc") if e.isdigit()] if os.path.isdir("/proc") else []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:  # or gone
            if stat.read().rsplit(")", 1)[1].split()[1] == me:
                found.append(int(pid))
    return found


def _kill_children() -> int:
    """Kill this process's children (an unreaped child's pid is not reused); how many."""
    killed = 0
    for child in _children():
        with contextlib.suppress(PermissionError):  # a set-uid program's
            os.kill(child, signal.SIGKILL)
            killed += 1
    return killed


def _reap_all(shell: int) -> int:
    """Kill and reap every child until there is none; the shell's wait status."""
    status, flags = 0, os.WNOHANG
    while True:
        try:
            pid, code = os.waitpid(-1, flags)
        except ChildProcessError:
            return status
        if pid == 0:  # children left, all running: kill them, then wait for one to end
            if not _kill_children():  # none found (no /proc), or none ours to kill: leave them
                return status
            flags = 0
            continue
        flags = os.WNOHANG
        if pid == shell:
            status = code


def _exit_as(status: int) -> None:
    """Exit with the shell's exit status, or die by the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the shell's crash, not this one's
    with contextlib.suppress(OSError):  # SIGKILL's cannot change, and needs no change
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    os._exit(128 - code)  # a signal whose default is to be ignored


def main() -> None:
    executor, marker, command = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    name, _, value = marker.partition("=")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until the shell's pid is known
    signal.signal(signal.SIGTERM, _kill_shell_group)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    shell = os.posix_spawn(
        "/bin/sh",
        ["/bin/sh", "-c", command],
        {**os.environ, name: value},
        setpgroup=0,
        setsigmask=(),
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # which Python ignores
    )
    _shell.append(shell)
    if os.getppid() != executor:  # it died before PR_SET_PDEATHSIG could tell
        _kill_shell_group()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    while True:  # until the shell ends (left unreaped, so its group stays its own)
        ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if ended is None or ended.si_pid == shell:  # None: only with WNOHANG
            break
        os.waitpid(ended.si_pid, 0)  # an orphan of the check's that ended: reap it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # everything is being killed anyway
    _kill_shell_group()
    _shell.clear()
    _exit_as(_reap_all(shell))


if __name__ == "__main__":
    main()
