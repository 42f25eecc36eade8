"""An approved change outlives the executor that was applying it.

A human's approval is given to the attempt after the one that asked. When that attempt
never ends on its own (its executor killed with SIGKILL, its lease reclaimed; or stopped
with SIGTERM, handing the lease back), the next attempt must still apply the approved
change: it was dropped, so the Builder was asked again and the phase waited for a second
approval of the same change (or failed, when the cassette or the retries ran out).

Real parts: PostgreSQL, ``autopack serve`` behind both tokens, executors holding only the
worker token, the operator's CLI, real git, the replay cassette for the LLM.
"""

from __future__ import annotations

import json
import os
import signal
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
def pg_url(pg_admin: str) -> Iterator[str]:
    url = create_pg_database(pg_admin)
    try:
        yield url
    finally:
        drop_pg_database(pg_admin, url)


def _held_check(marker: Path) -> str:
    """A check that runs while ``marker`` exists (the test decides when it ends)."""
    return (
        "python -c \"import os, time; [time.sleep(0.05) for _ in iter(lambda: os.path.exists('"
        f"{marker}'), False)]\""
    )


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_the_next_attempt_applies_a_change_approved_for_an_executor_that_was_stopped(
    pg_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    marker = tmp_path / "hold-the-check"
    served = env_for(
        pg_url,
        AUTOPACK_API_TOKEN=OPERATOR_TOKEN,
        AUTOPACK_WORKER_TOKEN=WORKER_TOKEN,
        AUTOPACK_MAINTENANCE_INTERVAL_SECONDS="0.5",
    )
    with Server(served, tmp_path, autopack_args=["serve"]) as server:
        operator = {**served, "AUTOPACK_API_URL": server.url}
        worker = {k: v for k, v in operator.items() if k != "AUTOPACK_API_TOKEN"}
        create_run(
            run_file(tmp_path, [phase("p1", ["pkg/mod.py"], checks=[_held_check(marker)])]),
            operator,
            tmp_path,
        )
        ws = repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
        # overwriting pkg/keep.py (not a deliverable) needs a human's approval
        tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n", keep_py="KEEP = 2\n"))])
        args = ["run", "--run-id", "exec-run", "-k", "2", "--auditor", "rules"]
        args += ["--cassette", str(tape), "--workspace", str(ws), "--lease-seconds", "5"]

        first = drain_process(*args, env=worker, cwd=tmp_path)
        wait_for(lambda: phase_row(pg_url, "p1")["state"] == "AWAITING_APPROVAL", timeout=90)
        marker.touch()
        [approval] = json.loads(
            cli("approvals", "list", "--json", cwd=tmp_path, env=operator).stdout
        )["items"]
        decided = cli("approvals", "approve", str(approval["id"]), cwd=tmp_path, env=operator)
        assert decided.returncode == 0, decided.stderr
        # the approved change is applied and its check runs: now the executor is stopped
        wait_for(
            lambda: (
                (row := phase_row(pg_url, "p1"))["state"] == "CI_RUNNING" and row["attempts"] == 2
            ),
            timeout=90,
        )
        os.kill(first.pid, stop)
        first.communicate(timeout=60)
        marker.unlink()
        wait_for(lambda: phase_row(pg_url, "p1")["state"] == "QUEUED", timeout=60)

        second = drain_process(*args, env=worker, cwd=tmp_path)
        ended = wait_for(
            lambda: (
                phase_row(pg_url, "p1")["state"] in ("COMPLETE", "FAILED", "AWAITING_APPROVAL")
                or second.poll() is not None
            ),
            timeout=90,
        )
        assert ended
        if second.poll() is None:  # waiting for a second approval: the change was dropped
            second.kill()
        _, stderr = second.communicate(timeout=60)

    history = attempts(pg_url, "p1")
    assert [a["outcome"] for a in history][-1] == "COMPLETE", (history, stderr[-3000:])
    assert history[1]["outcome"] in ("LOST", "FAILED") and history[1]["stop_reason"] in (
        "lease_expired",
        "interrupted",
    )
    assert on_branch(ws, "pkg/keep.py") == "KEEP = 2\n"
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"
    assert len(rows(pg_url, "SELECT id FROM approval_requests")) == 1, "approved once"
    builder_calls = rows(pg_url, "SELECT id FROM llm_usage_events WHERE role = 'builder'")
    assert len(builder_calls) == 1, "the Builder was not asked again for an approved change"
