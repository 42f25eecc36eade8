"""What an attempt hands on to the next outlives an executor stopped in between.

A change a human approved is applied by the attempt after the one that asked; the larger
budget a cut-off answer earned is the next attempt's. When that next attempt never ends
on its own (its executor killed with SIGKILL, its lease reclaimed; or stopped with
SIGTERM, handing the lease back), the attempt after it must still get them: they went to
the attempt right after only, so the Builder was asked again and the phase waited for a
second approval of the same change, or was cut off again at the budget that had been too
small already.

Real parts: PostgreSQL, ``autopack serve`` behind both tokens, executors holding only the
worker token, the operator's CLI, real git, the replay cassette for the LLM.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from collections.abc import Iterator
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
    rows,
    run_file,
)
from tests.support import Server, cli, wait_for
from tests.test_auth import OPERATOR_TOKEN, WORKER_TOKEN

pytestmark = pytest.mark.postgres


@pytest.fixture
def served(pg_admin: str, tmp_path: Path) -> Iterator[tuple[str, Server]]:
    """A new PostgreSQL database served by ``autopack serve`` behind both tokens."""
    url = create_pg_database(pg_admin)
    env = env_for(
        url,
        AUTOPACK_API_TOKEN=OPERATOR_TOKEN,
        AUTOPACK_WORKER_TOKEN=WORKER_TOKEN,
        AUTOPACK_MAINTENANCE_INTERVAL_SECONDS="0.5",
        AUTOPACK_MAX_CONTINUATIONS="0",
    )
    try:
        with Server(env, tmp_path, autopack_args=["serve"]) as server:
            yield url, server
    finally:
        drop_pg_database(pg_admin, url)


def _clients(url: str, server: Server) -> tuple[dict[str, str], dict[str, str]]:
    """The operator's environment and an executor's (the worker token only)."""
    operator = env_for(
        url,
        AUTOPACK_API_URL=server.url,
        AUTOPACK_API_TOKEN=OPERATOR_TOKEN,
        AUTOPACK_MAX_CONTINUATIONS="0",
    )
    worker = {**operator, "AUTOPACK_WORKER_TOKEN": WORKER_TOKEN}
    del worker["AUTOPACK_API_TOKEN"]
    return operator, worker


def _held_check(marker: Path) -> str:
    """A check that runs while ``marker`` exists (the test decides when it ends)."""
    return (
        "python -c \"import os, time; [time.sleep(0.05) for _ in iter(lambda: os.path.exists('"
        f"{marker}'), False)]\""
    )


def _stop_in_checks(drain: subprocess.Popen[str], url: str, attempt: int, stop: int) -> None:
    """Stop ``drain`` while attempt ``attempt`` runs its checks; wait until the phase is
    queued again (handed back, or its lease reclaimed)."""
    wait_for(
        lambda: (
            (row := phase_row(url, "p1"))["state"] == "CI_RUNNING" and row["attempts"] == attempt
        ),
        timeout=90,
    )
    os.kill(drain.pid, stop)
    drain.communicate(timeout=60)
    wait_for(lambda: phase_row(url, "p1")["state"] == "QUEUED", timeout=60)


STOPS = pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])


def _drain_args(tape: Path, ws: Path) -> list[str]:
    return [
        *("run", "--run-id", "exec-run", "-k", "2", "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(ws), "--lease-seconds", "5", "--escalation-factor", "2"),
    ]


def _until_settled(drain: subprocess.Popen[str], url: str) -> str:
    """Wait for ``drain`` to end, or stop it when the phase waits for a human again (it
    would wait with it); its stderr."""
    wait_for(
        lambda: drain.poll() is not None or phase_row(url, "p1")["state"] == "AWAITING_APPROVAL",
        timeout=90,
    )
    if drain.poll() is None:
        drain.kill()
    return drain.communicate(timeout=60)[1]


@STOPS
def test_the_next_attempt_applies_a_change_approved_for_an_executor_that_was_stopped(
    served: tuple[str, Server], tmp_path: Path, stop: signal.Signals
) -> None:
    url, server = served
    operator, worker = _clients(url, server)
    marker = tmp_path / "hold-the-check"
    spec = [phase("p1", ["pkg/mod.py"], checks=[_held_check(marker)])]
    create_run(run_file(tmp_path, spec), operator, tmp_path)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
    # overwriting pkg/keep.py (not a deliverable) needs a human's approval
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n", keep_py="KEEP = 2\n"))])

    first = drain_process(*_drain_args(tape, ws), env=worker, cwd=tmp_path)
    wait_for(lambda: phase_row(url, "p1")["state"] == "AWAITING_APPROVAL", timeout=90)
    marker.touch()
    listed = cli("approvals", "list", "--json", cwd=tmp_path, env=operator)
    [approval] = json.loads(listed.stdout)["items"]
    decided = cli("approvals", "approve", str(approval["id"]), cwd=tmp_path, env=operator)
    assert decided.returncode == 0, decided.stderr
    _stop_in_checks(first, url, 2, stop)  # while the approved change's check runs
    marker.unlink()

    stderr = _until_settled(drain_process(*_drain_args(tape, ws), env=worker, cwd=tmp_path), url)
    history = attempts(url, "p1")
    assert [a["outcome"] for a in history][-1] == "COMPLETE", (history, stderr[-3000:])
    assert (history[1]["outcome"], history[1]["stop_reason"]) in (
        ("LOST", "lease_expired"),
        ("FAILED", "interrupted"),
    )
    assert on_branch(ws, "pkg/keep.py") == "KEEP = 2\n"
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"
    assert len(rows(url, "SELECT id FROM approval_requests")) == 1, "approved once"
    builder_calls = rows(url, "SELECT id FROM llm_usage_events WHERE role = 'builder'")
    assert len(builder_calls) == 1, "the Builder was not asked again for an approved change"


@STOPS
def test_the_budget_a_cut_off_answer_earned_outlives_a_retry_whose_executor_was_stopped(
    served: tuple[str, Server], tmp_path: Path, stop: signal.Signals
) -> None:
    url, server = served
    operator, worker = _clients(url, server)
    marker = tmp_path / "hold-the-check"
    marker.touch()
    spec = [phase("p1", ["pkg/mod.py"], checks=[_held_check(marker)])]
    create_run(run_file(tmp_path, spec), operator, tmp_path)
    ws = repository(tmp_path / "ws")
    good = files(mod_py="x = 1\n")
    cut = line("p1", 1, '{"files": [{"path": "pkg/m', stop_reason="max_tokens", output_tokens=4000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first_tape = cassette(tmp_path / "a", [cut, line("p1", 2, good)])
    second_tape = cassette(tmp_path / "b", [line("p1", 3, good)])

    first = drain_process(*_drain_args(first_tape, ws), env=worker, cwd=tmp_path)
    _stop_in_checks(first, url, 2, stop)  # the retry with the doubled budget
    marker.unlink()
    stderr = _until_settled(
        drain_process(*_drain_args(second_tape, ws), env=worker, cwd=tmp_path), url
    )

    cut_off, stopped, last = attempts(url, "p1")
    assert (cut_off["outcome"], cut_off["stop_reason"]) == ("FAILED", "truncated")
    assert stopped["outcome"] in ("LOST", "FAILED"), stopped
    assert last["outcome"] == "COMPLETE", stderr[-3000:]
    assert last["max_tokens"] == math.ceil(cut_off["max_tokens"] * 2), (
        "the third attempt was given the budget that had been cut off already"
    )
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"


def test_a_phase_of_one_attempt_outlives_its_executor_killed(
    served: tuple[str, Server], tmp_path: Path
) -> None:
    """``max_attempts: 1`` and the executor killed (SIGKILL: a spot machine reclaimed, the
    OOM killer) in its checks: the lost attempt spent the phase's only try, and the phase
    FAILED with the run. It is queued again, and the next executor completes it."""
    url, server = served
    operator, worker = _clients(url, server)
    marker = tmp_path / "hold-the-check"
    marker.touch()
    spec = [phase("p1", ["pkg/mod.py"], checks=[_held_check(marker)], max_attempts=1)]
    create_run(run_file(tmp_path, spec), operator, tmp_path)
    ws = repository(tmp_path / "ws")
    tape = cassette(tmp_path, [line("p1", n, files(mod_py="x = 1\n")) for n in (1, 2)])
    first = drain_process(*_drain_args(tape, ws), env=worker, cwd=tmp_path)
    _stop_in_checks(first, url, 1, signal.SIGKILL)
    marker.unlink()
    second = drain_process(*_drain_args(tape, ws), env=worker, cwd=tmp_path)
    assert second.wait(timeout=120) == 0, second.communicate()[1][-3000:]
    lost, done = attempts(url, "p1")
    assert (lost["outcome"], lost["stop_reason"]) == ("LOST", "lease_expired")
    assert done["outcome"] == "COMPLETE"
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"
