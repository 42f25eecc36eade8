"""What a phase's check leaves behind: no process, no disk full of output, no loop.

A check runs code the Builder wrote; whatever it starts must end with it, wherever it
moved (a daemon in a session of its own) and whatever its environment (a test's server
started with ``env={...}`` carries no marker), and what it prints must not fill the disk
before its timeout comes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autopack.control.leases import FREE_LOSSES
from autopack.executor import checks
from autopack.executor.checks import run_checks
from tests.conftest import empty_sqlite
from tests.executor_support import (
    RUN_ID,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    rows,
    run_file,
)
from tests.support import cli, gone, kill, written_pid


def _daemon(pid_file: Path) -> str:
    """Shell: a daemon with an empty environment (so no marker) in a session of its own,
    which writes its pid to ``pid_file`` (its environment is cleared by then)."""
    return f"env -i setsid sh -c 'echo $$ > {pid_file}; exec sleep 300' >/dev/null 2>&1 </dev/null"


def _waits_for(pid_file: Path) -> str:
    return f"while [ ! -s {pid_file} ]; do sleep 0.05; done"


def _cleared(pid_file: Path) -> str:
    """Shell: start :func:`_daemon` in the background and wait for its pid."""
    return f"{_daemon(pid_file)} & {_waits_for(pid_file)}"


_POPEN_ENV = """
import subprocess, sys
server = subprocess.Popen(
    ["sleep", "300"], env={}, start_new_session=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
open(sys.argv[1], "w").write(str(server.pid))
"""


def _assert_gone(pid_file: Path, outlived: str = "a check's cleared-environment daemon") -> None:
    """The process whose pid ``pid_file`` holds is gone (killed here either way)."""
    pid = written_pid(pid_file)
    try:
        assert gone(pid), f"{outlived} outlived it"
    finally:
        kill(pid)


@pytest.mark.parametrize("how", ["env -i setsid", "python Popen env={}", "double fork env -i"])
def test_a_daemon_with_a_cleared_environment_does_not_outlive_its_check(
    tmp_path: Path, how: str
) -> None:
    """A process started with a cleared or replaced environment carries no marker: one that
    also left the check's process group ran on after the phase, in a worktree the next
    attempt reuses or removes. Tests commonly pass ``env=`` when they start a server."""
    pid_file = tmp_path / "daemon.pid"
    (tmp_path / "server.py").write_text(_POPEN_ENV)
    command = {
        "env -i setsid": _cleared(pid_file),
        "python Popen env={}": f"python server.py {pid_file}",
        "double fork env -i": f"({_daemon(pid_file)} &); {_waits_for(pid_file)}",
    }[how]
    [result] = run_checks([command], tmp_path, timeout=30)
    assert result.passed, result.output_tail
    _assert_gone(pid_file)


def test_a_check_stopped_by_its_executor_takes_its_cleared_environment_daemon(
    tmp_path: Path,
) -> None:
    """A stopping executor (SIGTERM, a second Ctrl-C) kills its running checks: that reached
    the check's process group and its marked processes, not such a daemon.

    The killed check did not fail: the attempt is ``interrupted`` (it ended
    ``checks_failed``, and that could be recorded before the executor's hand-back), and the
    checks after it do not start."""
    pid_file = tmp_path / "daemon.pid"
    after = tmp_path / "second-check-ran"

    def stop_once_started() -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        checks.terminate_running_checks(stop)

    stop = threading.Event()
    stopper = threading.Thread(target=stop_once_started)
    stopper.start()
    commands = ["true", f"{_cleared(pid_file)}; exec sleep 60", f"touch {after}"]
    with pytest.raises(checks.ChecksInterrupted) as stopped:
        run_checks(commands, tmp_path, timeout=60, stopped=stop)
    stopper.join()
    assert stopped.value.stop_reason == "interrupted"
    assert [c.command for c in stopped.value.results] == commands[:2]
    first, killed = stopped.value.results
    assert first.passed and not killed.passed and not killed.timed_out, killed
    assert not after.exists()
    _assert_gone(pid_file)


def test_no_check_starts_after_its_executor_was_stopped(tmp_path: Path) -> None:
    """A stop kills the checks running at that moment; a check starting just after it (the
    next of a phase's checks, another worker's first) ran until the process exited."""
    stop = threading.Event()
    checks.terminate_running_checks(stop)  # nothing is running yet
    with pytest.raises(checks.ChecksInterrupted) as stopped:
        run_checks([f"touch {tmp_path / 'ran'}"], tmp_path, stopped=stop)
    assert stopped.value.results == [] and stopped.value.stop_reason == "interrupted"
    assert not (tmp_path / "ran").exists()


def test_a_drained_phase_leaves_no_daemon_with_a_cleared_environment(tmp_path: Path) -> None:
    """The same through the real drain: the phase completes, and its check's daemon is gone."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    pid_file = tmp_path / "daemon.pid"
    spec = [phase("serve", ["pkg/serve.py"], checks=[_cleared(pid_file)])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    tape = cassette(tmp_path, [line("serve", 1, files(serve_py="S = 1\n"))])
    result = drain(
        *("run", "--run-id", RUN_ID, "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["phase_states"] == {"serve": "COMPLETE"}
    _assert_gone(pid_file)


_STOPS_ITS_EXECUTOR = """
import os, signal

def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

def argv(pid):
    return open(f"/proc/{pid}/cmdline").read().split("\\0")

pid = os.getppid()  # the shell, then Autopack's check runner, then the executor
while "python" not in argv(pid)[0] or any("check_shell" in arg for arg in argv(pid)):
    pid = parent(pid)
os.kill(pid, signal.SIGTERM)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_phase_whose_check_stops_its_executor_ends(tmp_path: Path) -> None:
    """A check that stops the Python process running it (SIGTERM, as a test signalling
    its parent would) had its attempt handed back without spending a retry: under a
    supervisor restarting the executor, the phase was tried for ever, a Builder call
    each time. Such stops now count with lost attempts: after the free ones, each spends
    a retry, and the phase fails saying why."""
    url, stopped = _stopping_its_executor(tmp_path)
    for _ in range(FREE_LOSSES + 1):  # a supervisor starting the executor again
        stopped()
    [row] = rows(url, "SELECT state, last_failure_reason FROM phases WHERE phase_id = 'loop'")
    assert row["state"] == "FAILED", row
    assert "again while its checks ran" in row["last_failure_reason"]


def _stopping_its_executor(tmp_path: Path) -> tuple[str, Callable[[], None]]:
    """A run whose phase ``loop`` (``max_attempts: 1``) has a check stopping its executor,
    and a drain of it that the check stops."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    (tmp_path / "stop_executor.py").write_text(_STOPS_ITS_EXECUTOR)
    check = f"{sys.executable} {tmp_path / 'stop_executor.py'}"
    spec = [phase("loop", ["pkg/loop.py"], checks=[check], max_attempts=1)]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    answers = [line("loop", n, files(loop_py="L = 1\n")) for n in range(1, 10)]
    tape = cassette(tmp_path, answers)

    def stopped() -> None:
        result = drain(
            *("run", "--run-id", RUN_ID, "--auditor", "rules", "--cassette", str(tape)),
            *("--workspace", str(tmp_path / "ws")),
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 143, result.stderr[-3000:]

    return url, stopped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_requeued_phase_gets_its_free_stops_again(tmp_path: Path) -> None:
    """The stops a phase's free ones were spent on still counted after ``run requeue``
    gave it a fresh retry window: the first executor stopped in its checks (or lost) then
    spent a retry, and a phase of ``max_attempts: 1`` FAILED at once. Counted since the
    requeue, it gets its free stops again."""
    url, stopped = _stopping_its_executor(tmp_path)
    for _ in range(FREE_LOSSES + 1):
        stopped()
    state = "SELECT state FROM phases WHERE phase_id = 'loop'"
    assert rows(url, state) == [{"state": "FAILED"}]
    requeued = cli("run", "requeue", RUN_ID, "loop", cwd=tmp_path, env=env_for(url))
    assert requeued.returncode == 0, requeued.stderr
    stopped()
    assert rows(url, state) == [{"state": "QUEUED"}]


def test_a_stop_after_the_checks_passed_is_no_stop_in_them(tmp_path: Path) -> None:
    """The phase stayed ``CI_RUNNING`` after its checks, through the auditor's call: a
    provider refusing that call (a 401, handed back) counted as a stop the phase's code
    may have caused, and a user re-running the drain while fixing the key spent the
    phase's retries. The phase is ``EXECUTING`` again once its checks passed."""
    url = empty_sqlite(tmp_path / "autopack.db")
    env = env_for(url)
    spec = [phase("audited", ["pkg/audited.py"], checks=["true"])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    refused = line("audited", 1, "", role="auditor")
    del refused["response"]
    refused["error"] = {"status": 401, "message": "invalid x-api-key"}
    tape = cassette(tmp_path, [line("audited", 1, files(audited_py="A = 1\n")), refused])
    result = drain(
        *("run", "--run-id", RUN_ID, "--auditor", "llm", "--cassette", str(tape)),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "invalid x-api-key" in result.stderr, result.stderr[-3000:]
    # replay sent no key: the recording's was refused, and that is what to fix
    said = " ".join(result.stderr.split())
    assert "the replay cassette recorded this refusal" in said and "set a working" in said, said
    [row] = rows(url, "SELECT state FROM phases WHERE phase_id = 'audited'")
    assert row["state"] == "QUEUED"
    [attempt] = rows(url, "SELECT stop_reason, details FROM phase_attempts")
    assert attempt["stop_reason"] == "interrupted"
    assert json.loads(attempt["details"])["stopped_in"] == "EXECUTING", attempt


def test_daemons_a_check_started_do_not_outlive_it(tmp_path: Path) -> None:
    """``setsid`` and a double fork take a process out of the check's process group, which
    is all that was killed: the daemon kept running in the attempt's worktree after the
    phase, the drain and the executor had ended."""
    setsid, double = tmp_path / "setsid.pid", tmp_path / "double.pid"
    command = (
        f"setsid sh -c 'echo $$ > {setsid}; exec sleep 60' >/dev/null 2>&1 </dev/null & "
        f"(sh -c 'echo $$ > {double}; exec setsid sleep 60' >/dev/null 2>&1 &); "
        f"while [ ! -s {setsid} ] || [ ! -s {double} ]; do sleep 0.05; done"
    )
    [result] = run_checks([command], tmp_path, timeout=30)
    assert result.passed, result.output_tail
    pids = [written_pid(setsid), written_pid(double)]
    try:
        assert [pid for pid in pids if not gone(pid)] == [], "a check's daemon outlived it"
    finally:
        for pid in pids:
            kill(pid)


def test_a_check_printing_without_end_is_stopped_before_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output goes to a file; ``yes`` writes half a gigabyte a second, so a five-minute
    timeout let one check fill the executor's disk first."""
    monkeypatch.setattr(checks, "MAX_OUTPUT_BYTES", 4 * 1024 * 1024)
    started = time.monotonic()
    [result] = run_checks(["yes"], tmp_path, timeout=20)
    assert time.monotonic() - started < 15, "the check ran until its timeout"
    assert not result.passed and not result.timed_out and result.exit_code is None
    assert "printed more than 4 MiB" in result.output_tail


def _executor_running(command: str, tmp_path: Path, started: Path) -> subprocess.Popen[bytes]:
    """An executor process running the check ``command``, once the check has written
    ``started`` (a pid)."""
    runner = (
        "import sys; from pathlib import Path; from autopack.executor.checks import run_checks; "
        f"run_checks([{command!r}], Path(sys.argv[1]), timeout=120)"
    )
    executor = subprocess.Popen([sys.executable, "-c", runner, str(tmp_path)])
    deadline = time.monotonic() + 30
    while not started.exists() or not started.read_text().strip():
        assert time.monotonic() < deadline and executor.poll() is None, "the check never started"
        time.sleep(0.05)
    return executor


@pytest.mark.parametrize("daemon", [False, True], ids=["shell", "cleared-env daemon"])
def test_a_check_dies_with_the_executor_killed_under_it(tmp_path: Path, daemon: bool) -> None:
    """SIGKILL runs no cleanup: the check, in a session of its own, ran on (a hung one
    forever) in a worktree the next executor removes; so did a daemon it started without
    the marker in its environment."""
    pid_file = tmp_path / "check.pid"
    command = (
        f"{_cleared(pid_file)}; exec sleep 60" if daemon else f"echo $$ > {pid_file}; exec sleep 60"
    )
    executor = _executor_running(command, tmp_path, pid_file)
    executor.kill()
    executor.wait()
    _assert_gone(pid_file, "the check, its executor killed,")


def test_a_check_that_stopped_its_wrapper_ends_with_the_executor_killed_under_it(
    tmp_path: Path,
) -> None:
    """``kill -STOP $PPID``, then the executor is SIGKILLed: the wrapper kept the SIGTERM
    its parent's death sends pending and stayed stopped forever, and with it the daemon
    the check had started without the marker (only the wrapper can find that one)."""
    daemon, wrapper = tmp_path / "daemon.pid", tmp_path / "wrapper.pid"
    command = f"{_cleared(daemon)}; echo $PPID > {wrapper}; kill -STOP $PPID; exec sleep 60"
    executor = _executor_running(command, tmp_path, wrapper)
    stopped, deadline = int(wrapper.read_text()), time.monotonic() + 30
    while Path(f"/proc/{stopped}/stat").read_text().split(")")[-1].split()[0] != "T":
        assert time.monotonic() < deadline, "the check never stopped its wrapper"
        time.sleep(0.05)
    executor.kill()
    executor.wait()
    try:
        _assert_gone(wrapper, "the stopped wrapper, its executor killed,")
    finally:
        _assert_gone(daemon)


def test_a_check_runs_while_the_executor_holds_more_than_fd_setsize_files(
    tmp_path: Path,
) -> None:
    """A long-lived executor may hold fds numbered past select()'s 1024 (connections,
    worktree locks): waiting for a check must not depend on the fd's number."""
    held: list[int] = []
    with contextlib.ExitStack() as stack:
        while not held or held[-1] < 1100:
            held.append(stack.enter_context(open(os.devnull, "rb")).fileno())
        (result,) = run_checks(["echo ran"], tmp_path)
    assert result.passed and "ran" in result.output_tail, result


@pytest.mark.parametrize("again", [False, True], ids=["stopped once", "stopped again and again"])
def test_a_check_that_stops_its_wrapper_still_ends_at_its_timeout(
    tmp_path: Path, again: bool
) -> None:
    """``kill -STOP $PPID`` stopped the process the check runs under: it kept the
    executor's SIGTERM pending and the executor waited for it forever, past the timeout.
    Run in a process of its own, so that a hang fails the test instead of the suite."""
    wrapper = tmp_path / "wrapper.pid"
    stopper = f"echo $PPID > {wrapper}; kill -STOP $PPID"
    if again:  # in the check's group: stops the wrapper until the wrapper kills it
        stopper = f"echo $PPID > {wrapper}; (while :; do kill -STOP $PPID; done) & sleep 60"
    program = (
        "import sys; from pathlib import Path; from autopack.executor.checks import run_checks; "
        "(r,) = run_checks([sys.argv[1]], Path(sys.argv[2]), timeout=2); print(r.timed_out)"
    )
    try:
        ran = subprocess.run(
            [sys.executable, "-c", program, stopper, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:  # the stopped wrapper of a hung run: gone with the test either way
        with contextlib.suppress(ValueError, OSError):  # no pid written
            kill(written_pid(wrapper))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip() == "True", ran.stdout
