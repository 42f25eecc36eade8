"""What a phase's check leaves behind: no process and no disk full of output.

A check runs code the Builder wrote; whatever it starts must end with it, wherever it
moved (a daemon in a session of its own), and what it prints must not fill the disk
before its timeout comes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopack.executor import checks
from autopack.executor.checks import run_checks


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _gone(pid: int) -> bool:
    """``pid`` has stopped running (a killed orphan is reaped by init, not by us: wait for
    that, a bounded while)."""
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


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
    pids = [int(setsid.read_text()), int(double.read_text())]
    try:
        assert [pid for pid in pids if not _gone(pid)] == [], "a check's daemon outlived it"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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


def test_a_check_dies_with_the_executor_killed_under_it(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the check, in a session of its own, ran on (a hung one
    forever) in a worktree the next executor removes."""
    pid_file = tmp_path / "check.pid"
    runner = (
        "import sys; from pathlib import Path; from autopack.executor.checks import run_checks; "
        f"run_checks(['echo $$ > {pid_file}; exec sleep 60'], Path(sys.argv[1]), timeout=120)"
    )
    executor = subprocess.Popen([sys.executable, "-c", runner, str(tmp_path)])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline and executor.poll() is None, "the check never started"
        time.sleep(0.05)
    check = int(pid_file.read_text())
    executor.kill()
    executor.wait()
    try:
        assert _gone(check), "the check outlived its executor"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(check, signal.SIGKILL)
