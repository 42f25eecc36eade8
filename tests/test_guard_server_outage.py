"""An API server restarted while a phase's checks end is no check's doing.

When a phase's checks end, the run's branch is compared with what it was before them: it
may only have moved forward to a head the control plane accepted (another phase that
completed meanwhile). Asking the control plane for that head gave up after the client's
ten seconds of retries, while posting the result waits for the server far longer; so a
server down for longer than that (a restart, an upgrade) made the attempt move the branch
back off the other phase's accepted commit and fail ``git_refs_changed_by_checks``,
posted once the server was back: a retry spent on nothing the checks did (the phase
FAILED on its last one), and completed work taken off the branch meanwhile.

Real parts: PostgreSQL, ``autopack serve`` behind both tokens (stopped and started again
on its port), two executor processes holding the worker token, real git, checks run by
the shell, the replay cassette for the LLM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain_process,
    env_for,
    files,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    run_file,
)
from tests.support import Server, free_port, wait_for
from tests.test_auth import OPERATOR_TOKEN, WORKER_TOKEN
from tests.test_stopped_attempts_hand_on import _held_check

pytestmark = pytest.mark.postgres

ASKED = re.compile(r"^(\S+) WARNING autopack.client api_retry call=\"?GET /runs/exec-run\b", re.M)


def _asked_for(log: Path) -> float:
    """Seconds between the first and the last retry of the guard's question, so far."""
    times = [
        datetime.fromisoformat(t.replace("Z", "+00:00")) for t in ASKED.findall(log.read_text())
    ]
    return (times[-1] - times[0]).total_seconds() if times else 0.0


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    url = create_pg_database(pg_admin)
    try:
        yield url
    finally:
        drop_pg_database(pg_admin, url)


@pytest.fixture
def holder_log(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], Path]]:
    """Drains whose log is a file (read while they run); killed after the test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started, tmp_path / "holder.log"
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _behind_tokens(pg_url: str) -> tuple[int, dict[str, str], str, dict[str, str]]:
    """A free port, the environment of a server there behind both tokens, its URL, and
    the environment of an executor holding only the worker token."""
    port = free_port()
    served = env_for(pg_url, AUTOPACK_API_TOKEN=OPERATOR_TOKEN, AUTOPACK_WORKER_TOKEN=WORKER_TOKEN)
    api = f"http://127.0.0.1:{port}"
    return (
        port,
        served,
        api,
        env_for(pg_url, AUTOPACK_API_URL=api, AUTOPACK_WORKER_TOKEN=WORKER_TOKEN),
    )


def test_a_server_restarted_as_checks_end_neither_fails_the_attempt_nor_moves_the_branch_back(
    pg_url: str, tmp_path: Path, holder_log: tuple[list[subprocess.Popen[bytes]], Path]
) -> None:
    started, log = holder_log
    port, served, api, worker = _behind_tokens(pg_url)
    marker = tmp_path / "hold-the-check"
    marker.touch()
    spec = [
        phase("p1", ["pkg/one.py"], checks=[_held_check(marker)], max_attempts=1),
        phase("p2", ["pkg/two.py"]),
    ]
    ws = repository(tmp_path / "ws")
    tape = cassette(
        tmp_path,
        [line("p1", 1, files(one_py="ONE = 1\n")), line("p2", 1, files(two_py="TWO = 2\n"))],
    )
    args = ["run", "--run-id", "exec-run", "-k", "1", "--auditor", "rules", "--cassette"]
    args += [str(tape), "--workspace", str(ws), "--lease-seconds", "300", "--json"]
    with Server(served, tmp_path, port=port, autopack_args=["serve"]):
        create_run(run_file(tmp_path, spec), {**served, "AUTOPACK_API_URL": api}, tmp_path)
        with log.open("wb") as stderr:
            command = [sys.executable, "-m", "autopack", "drain", *args]
            started.append(subprocess.Popen(command, cwd=tmp_path, env=worker, stderr=stderr))
        wait_for(lambda: phase_row(pg_url, "p1")["state"] == "CI_RUNNING", timeout=90)
        # another executor completes p2 while p1's check runs: the branch moves forward
        other = drain_process(*args, env=worker, cwd=tmp_path)
        wait_for(lambda: on_branch(ws, "pkg/two.py") is not None, timeout=90)
        other.send_signal(signal.SIGTERM)
        other.communicate(timeout=60)
    # the server is down for longer than a client retries a read, as p1's check ends and
    # its guard asks for the accepted head
    marker.unlink()
    wait_for(lambda: "accepted_head_unknown" in log.read_text() or _asked_for(log) > 12, 60)
    with Server(served, tmp_path, port=port, autopack_args=["serve"]):
        assert started[0].wait(timeout=120) == 0, log.read_text()[-3000:]

    [first] = attempts(pg_url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("COMPLETE", "completed"), first
    assert [check["passed"] for check in first["check_results"]] == [True]
    assert phase_row(pg_url, "p1")["state"] == "COMPLETE"
    assert "branch_put_back" not in log.read_text(), log.read_text()[-3000:]
    assert on_branch(ws, "pkg/two.py") == "TWO = 2\n" and on_branch(ws, "pkg/one.py") == "ONE = 1\n"


def test_a_worker_token_rotated_under_a_drain_stops_it_without_a_traceback(
    pg_url: str, tmp_path: Path, holder_log: tuple[list[subprocess.Popen[bytes]], Path]
) -> None:
    """The server came back with new tokens while a phase's checks ran: the heartbeat's
    401 killed its thread with a traceback, and the attempt went on without a lease it
    could renew. Now the lease is lost (said once), and the drain ends exit 2 naming
    the refused token."""
    started, log = holder_log
    port, served, api, worker = _behind_tokens(pg_url)
    marker = tmp_path / "hold-the-check"
    marker.touch()
    ws = repository(tmp_path / "ws")
    tape = cassette(tmp_path, [line("p1", 1, files(one_py="ONE = 1\n"))])
    args = ["run", "--run-id", "exec-run", "--auditor", "rules", "--cassette", str(tape)]
    args += ["--workspace", str(ws), "--lease-seconds", "6"]
    spec = [phase("p1", ["pkg/one.py"], checks=[_held_check(marker)])]
    with Server(served, tmp_path, port=port, autopack_args=["serve"]):
        create_run(run_file(tmp_path, spec), {**served, "AUTOPACK_API_URL": api}, tmp_path)
        with log.open("wb") as stderr:
            command = [sys.executable, "-m", "autopack", "drain", *args]
            started.append(subprocess.Popen(command, cwd=tmp_path, env=worker, stderr=stderr))
        wait_for(lambda: phase_row(pg_url, "p1")["state"] == "CI_RUNNING", timeout=90)
    rotated = {**served, "AUTOPACK_WORKER_TOKEN": "worker-token-rotated-0123456789"}
    with Server(rotated, tmp_path, port=port, autopack_args=["serve"]):
        # the new server expires the lease no heartbeat could renew
        wait_for(lambda: phase_row(pg_url, "p1")["state"] == "QUEUED", timeout=90)
        marker.unlink()
        assert started[0].wait(timeout=120) == 2, log.read_text()[-3000:]
    said = log.read_text()
    assert "Traceback" not in said and "Exception in thread" not in said, said[-3000:]
    assert "token" in said.split("✘")[-1], said[-3000:]
