"""Running a phase's checks (e.g. ``python -m pytest -q tests/x``) in its workspace.

Each command runs in a shell with the workspace as working directory, a timeout that kills
its whole process group, and ``python``/``pytest`` resolving to the executor's own
interpreter. Credentials are removed from the environment: a check runs code the LLM wrote.
An executor can refuse checks outside an allow-list
(:class:`~autopack.executor.check_policy.CheckPolicy`) before any work starts on the phase.

A check whose program is not there (the shell's exit 127 "not found", or ``python -m X``
with no module X) is not the Builder's failure and no retry can fix it: :func:`run_checks`
raises :class:`CheckUnavailable`, a ``Finish`` with stop reason ``check_unavailable``,
not retryable, naming the program. Running checks are tracked so that a stopping
executor can kill them (:func:`terminate_running_checks`): each runs in its own session,
which a signal to the executor does not reach.

Nothing a check starts outlives it: its shell runs under
:mod:`autopack.executor.check_shell`, which kills everything the check started when the
shell ends, wherever it moved and whatever its environment (a daemon that left the group
with ``setsid``, or a test's server started with ``env={...}``, kept running in the
attempt's worktree after the phase and the drain had ended), and when the executor is
killed. Every process still carrying the check's marker is killed too
(:mod:`autopack.executor.check_reaper`, the fallback where that cannot work). Its output
may fill at most :data:`MAX_OUTPUT_BYTES` of disk: one that prints without end
(``yes``) is killed there, not left to fill the disk before its timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from autopack.contract import CheckResult
from autopack.executor import check_shell
from autopack.executor.check_reaper import CHECK_MARKER, ensure_reaper, kill_marked, new_marker
from autopack.executor.git import local_environment
from autopack.executor.outcome import Finish
from autopack.states import PhaseState

DEFAULT_TIMEOUT_SECONDS = 300.0
TAIL_CHARS = 4000
COMMAND_NOT_FOUND = 127
"""POSIX shells' exit status for a command that does not exist."""
MAX_OUTPUT_BYTES = 128 * 1024 * 1024
"""A check that prints more is killed: its output is a file on the executor's disk."""
_POLL_SECONDS = 0.2
_WRAPPER_GRACE_SECONDS = 5.0
"""How long a stopped check's wrapper may take to kill what the check started."""

_RUNNING: dict[subprocess.Popen[bytes], str] = {}
_STOPPED: set[subprocess.Popen[bytes]] = set()
"""Running checks :func:`terminate_running_checks` killed (not failed: interrupted)."""
_RUNNING_LOCK = threading.Lock()


class CheckUnavailable(Finish):
    """A check's program is missing: the attempt fails once, ``check_unavailable``, with no
    retry (no answer from the Builder can install a program). ``results`` are every check's
    results, for the attempt's record."""

    def __init__(self, missing: list[tuple[CheckResult, str]], results: list[CheckResult]) -> None:
        named = "; ".join(f"`{check.command}`: {program}" for check, program in missing)
        tails = "\n".join(f"$ {check.command}\n{check.output_tail[-500:]}" for check, _ in missing)
        super().__init__(
            PhaseState.FAILED,
            "check_unavailable",
            error=f"a check's program is not available ({named}); install it where the "
            f"executor runs (checks run with {sys.executable}) or change the run's checks\n"
            + tails,
            retryable=False,
        )
        self.missing = [program for _, program in missing]
        self.results = results


class ChecksInterrupted(Finish):
    """The executor was stopped (SIGTERM, a second Ctrl-C) and killed a running check: the
    attempt ends ``interrupted``, as the executor's hand-back of its lease says, not
    ``checks_failed`` (the Builder's code did not fail; it was not let finish). The checks
    after it are not run. ``results`` are the checks that ran, for the attempt's record."""

    def __init__(self, results: list[CheckResult], command: str) -> None:
        super().__init__(
            PhaseState.FAILED, "interrupted", error=f"the executor was stopped at `{command}`"
        )
        self.results = results
        self.command = command


def missing_program(check: CheckResult, workspace: Path) -> str | None:
    """What is missing when ``check`` could not run its program, else None.

    The shell's "not found" (exit 127) names the command; ``python -m X`` that Python
    answers with "No module named X" (exit 1) names the module, unless X would live in the
    workspace (then writing it is the Builder's job, and a retry can fix it).
    """
    lines = check.output_tail.strip().splitlines()
    if check.exit_code == COMMAND_NOT_FOUND:
        for line in reversed(lines):
            if line.rstrip().endswith("not found"):
                parts = line.split(": ")
                if len(parts) >= 3:
                    return f"{parts[-2].strip()} (command not found)"
        return f"{check.command.split()[0]} (command not found)"
    if check.exit_code != 1:
        return None
    try:
        words = shlex.split(check.command)
    except ValueError:
        return None
    if "-m" not in words[:-1] or not words or not Path(words[0]).name.startswith("python"):
        return None
    module = words[words.index("-m") + 1]
    top = module.split(".")[0]
    if (workspace / top).exists() or (workspace / f"{top}.py").exists():
        return None
    for line in lines:
        if line.endswith(f": No module named {top}") or line.endswith(
            f": No module named {module}"
        ):
            return f"Python module {top} (`python -m {module}`: No module named {top})"
    return None


def terminate_running_checks(stopped: threading.Event) -> None:
    """Kill every running check (the executor is being stopped), and set ``stopped``: each
    killed one's :func:`run_check` raises :class:`ChecksInterrupted`, as does every later
    one given ``stopped`` (a check starting just after the stop ran on until the process
    exited)."""
    with _RUNNING_LOCK:
        stopped.set()
        running = list(_RUNNING.items())
        _STOPPED.update(process for process, _ in running)
    for process, marker in running:
        _kill(process, marker)


def _kill(process: subprocess.Popen[bytes], marker: str) -> None:
    """Stop the check: its :mod:`~autopack.executor.check_shell` kills everything the check
    started, then exits; whatever still carries the check's marker is killed here.

    The check may have stopped its wrapper (``kill -STOP $PPID``): a stopped process keeps
    SIGTERM pending, and waiting for it hung the executor past every timeout. So it is
    continued too, and killed outright when it has not exited within
    :data:`_WRAPPER_GRACE_SECONDS` (stopped again, or stuck reaping)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
    try:
        process.wait(timeout=_WRAPPER_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
    kill_marked(marker)


def _check_env(scratch: Path) -> dict[str, str]:
    """The executor's environment minus credentials, with caches kept out of the workspace
    (a git workspace must only ever change by the phase's own files)."""
    env = local_environment(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    env["PYTEST_ADDOPTS"] = f"-p no:cacheprovider {env.get('PYTEST_ADDOPTS', '')}".strip()
    env.pop("PYTHONPATH", None)
    return env


def run_check(
    command: str, workspace: Path, timeout: float, stopped: threading.Event | None = None
) -> CheckResult:
    """Run one check; raises :class:`ChecksInterrupted` when the executor killed it, or
    had been ``stopped`` before it could start."""
    with tempfile.TemporaryDirectory(prefix="autopack-check-") as scratch:
        ensure_reaper()
        return _run(command, workspace, timeout, new_marker(), Path(scratch), stopped)


def _wait(process: subprocess.Popen[bytes], log: BinaryIO, timeout: float) -> str | None:
    """Wait for the check's shell: None when it ended by itself, "timeout" at ``timeout``,
    "output" once it printed more than :data:`MAX_OUTPUT_BYTES`."""
    deadline = time.monotonic() + timeout
    while not _ended(process, max(0.0, min(_POLL_SECONDS, deadline - time.monotonic()))):
        if os.fstat(log.fileno()).st_size > MAX_OUTPUT_BYTES:
            return "output"
        if time.monotonic() >= deadline:
            return "timeout"
    return None


def _ended(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether ``process`` ended within ``seconds``. Linux says so the moment it does (a
    pidfd); ``Popen.wait`` polls, up to 50 ms apart (a 22 ms check took 64)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or reaped already
        pidfd = os.pidfd_open(process.pid)
        try:
            ended = select.poll()  # not select(): an executor may hold fds past FD_SETSIZE
            ended.register(pidfd, select.POLLIN)
            ended.poll(seconds * 1000)
        finally:
            os.close(pidfd)
        seconds = 0.0
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _run(
    command: str,
    workspace: Path,
    timeout: float,
    marker: str,
    scratch: Path,
    stopped: threading.Event | None,
) -> CheckResult:
    """Run ``command``; its result once its shell has ended (or been killed at ``timeout``).

    The output goes to a file, not a pipe: a pipe is read until every process holding it
    has closed it, and a process the check started in a session of its own (a test's
    server, a daemon) escapes the process group that is killed, so reading it waited for
    that process, past the timeout, forever for a server. Whatever the check left running
    is killed when its shell ends (:mod:`~autopack.executor.check_shell`, which alone carries
    no marker: see there), or when :func:`_kill` stops it.
    """
    started = time.monotonic()
    shell = [sys.executable, "-I", "-S", check_shell.__file__, str(os.getpid())]
    shell += [f"{CHECK_MARKER}={marker}", command]
    with (scratch / "output").open("w+b") as log:
        with _RUNNING_LOCK:  # started and killable, or refused: a stop comes before or after
            if stopped is not None and stopped.is_set():
                raise ChecksInterrupted([], command)
            process = subprocess.Popen(
                shell,
                cwd=workspace,
                env=_check_env(scratch),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _RUNNING[process] = marker
        try:
            cut_short = _wait(process, log, timeout)
        finally:
            _kill(process, marker)
            process.wait()
            with _RUNNING_LOCK:
                _RUNNING.pop(process, None)
                killed = process in _STOPPED
                _STOPPED.discard(process)
        output = _tail(log)
    timed_out = cut_short == "timeout"
    if timed_out:
        output += f"\n[autopack] check timed out after {timeout:g}s and was killed"
    elif cut_short == "output":
        output += f"\n[autopack] check printed more than {MAX_OUTPUT_BYTES >> 20} MiB; killed"
    result = CheckResult(
        command=command,
        exit_code=None if cut_short else process.returncode,
        passed=cut_short is None and process.returncode == 0,
        timed_out=timed_out,
        duration_s=round(time.monotonic() - started, 3),
        output_tail=output[-TAIL_CHARS:].replace("\x00", "\\x00"),  # text columns hold no NUL
    )
    if killed:
        raise ChecksInterrupted([result], command)
    return result


def _tail(log: BinaryIO) -> str:
    """The last :data:`TAIL_CHARS` characters of the output file (UTF-8 at most 4 bytes
    each; anything undecodable replaced)."""
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - 4 * TAIL_CHARS))
    return log.read().decode(errors="replace")[-TAIL_CHARS:]


def run_checks(
    commands: Sequence[str],
    workspace: Path,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    *,
    stopped: threading.Event | None = None,
) -> list[CheckResult]:
    """Run every check (all of them, so the Builder gets all the feedback at once).

    Raises :class:`CheckUnavailable` when a check's program is missing, and
    :class:`ChecksInterrupted` (the checks that ran) when the executor stopped one.
    """
    results: list[CheckResult] = []
    for command in commands:
        try:
            results.append(run_check(command, workspace, timeout, stopped))
        except ChecksInterrupted as exc:
            raise ChecksInterrupted(results + exc.results, command) from None
    missing = [
        (check, program)
        for check in results
        if not check.passed and (program := missing_program(check, workspace)) is not None
    ]
    if missing:
        raise CheckUnavailable(missing, results)
    return results


RESULT_CHECKS_BYTES = 4 * 1024 * 1024
"""What a result's check results may take as the client sends them (JSON, each character
outside ASCII escaped: a control character six bytes). The API reads at most
``MAX_BODY_BYTES`` (16 MiB) of a request: 720 checks each ending in 4,000 control
characters made the executor's own result a 413, the phase handed back and the drain
stopped at every try."""


def within_a_result(checks: list[CheckResult]) -> list[CheckResult]:
    """``checks`` with their output tails shortened alike (their ends kept: where a check
    says what failed) until all of them fit :data:`RESULT_CHECKS_BYTES`. The feedback and
    the commands are kept whole (bounded on their own)."""

    def size(results: list[CheckResult]) -> int:
        return len(json.dumps([c.model_dump(mode="json") for c in results]))

    keep = TAIL_CHARS
    while keep > 0 and size(checks) > RESULT_CHECKS_BYTES:
        keep //= 2
        checks = [
            c.model_copy(update={"output_tail": c.output_tail[-keep:] if keep else ""})
            for c in checks
        ]
    return checks
