"""An executor overtaken: stopped (SIGSTOP) past its lease while its Builder call was out,
the phase completed by another drain meanwhile, then continued. What it then spends and
says must still be true."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.executor_support import (
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    on_branch,
    phase,
    phase_row,
    rows,
    run_file,
)
from tests.fakes.llm_wire import Reply, WireServer
from tests.llm.support import FLAVOURS
from tests.support import cli, wait_for
from tests.test_live_provider_drain import _provider_env


@contextmanager
def _overtaken(
    tmp_path: Path, gate: threading.Event
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A one-phase run drained with a 5 s lease; its Builder call is answered only once
    ``gate`` is set (set it inside the block). Once the call is out, the drain is stopped
    past its lease, another drain completes the phase, and the first is continued: the
    database URL and that drain, still waiting on its call."""
    flavour = FLAVOURS["anthropic"]
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p0", ["pkg/m0.py"])]), env, tmp_path)
    with WireServer() as wire:
        wire.script(
            flavour.path,
            # the stale one: a long answer, written at a model's pace once the gate opens
            Reply(200, flavour.body(files(m0_py="VALUE = 1\n" * 300)), gate=gate, pace_s=0.2),
            Reply(200, flavour.body(files(m0_py="VALUE = 2\n"))),
        )
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        args = [*("run", "--run-id", "exec-run", "--auditor", "rules", "--lease-seconds", "5")]
        args += ["--workspace", str(tmp_path / "ws")]
        stale = drain_process(*args, env={**env, **provider}, cwd=tmp_path)
        try:
            wait_for(lambda: wire.seen(flavour.path), timeout=60)  # waits on the LLM, no lock
            stale.send_signal(signal.SIGSTOP)
            other = drain(*args, env={**env, **provider}, cwd=tmp_path, timeout=120)
            assert other.returncode == 0, other.stderr[-3000:]
        finally:
            stale.send_signal(signal.SIGCONT)
        try:
            yield url, stale
        finally:
            gate.set()


def test_a_call_answering_after_the_lease_expired_is_given_up_and_keeps_its_usage_row(
    tmp_path: Path,
) -> None:
    """The continued executor's call answers: it read the whole answer, though no one
    could use it, and then its usage report was refused (the lease is gone) and the usage
    row was never written, so ``telemetry report`` and ``/metrics`` showed one call fewer,
    and its tokens and cost missing, than the provider answered and billed; nor did the
    run's totals (and budgets) count them. The stream is now closed once the executor
    knows its lease is gone, and what it spent is recorded and counted all the same."""
    answered = threading.Event()
    with _overtaken(tmp_path, answered) as (url, stale):
        answered.set()  # the stale executor's call answers now, its lease long gone
        _, stderr = stale.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "lease_lost" in stderr, stderr[-3000:]
    assert phase_row(url, "p0")["state"] == "COMPLETE"
    calls = rows(
        url,
        "SELECT attempt, role, success, input_tokens FROM llm_usage_events ORDER BY attempt",
    )
    assert [(c["attempt"], c["role"], bool(c["success"])) for c in calls] == [
        (1, "builder", False),  # given up mid-answer
        (2, "builder", True),
    ], calls
    assert calls[0]["input_tokens"] == calls[1]["input_tokens"] > 0, calls
    # ... and counted in the attempt's, the phase's and the run's totals (budgets included)
    spent = [r["tokens_used"] for r in rows(url, "SELECT tokens_used FROM phase_attempts")]
    assert len(spent) == 2 and min(spent) > 0, spent
    assert phase_row(url, "p0")["tokens_used"] == sum(spent)
    assert rows(url, "SELECT tokens_used FROM runs") == [{"tokens_used": sum(spent)}]


def test_run_show_says_a_dead_holders_lease_expired(tmp_path: Path) -> None:
    """An executor killed (SIGKILL) mid-phase: until a claim or the server's maintenance
    reclaims its lease, ``run show`` said the phase was "held by" it, as if it still
    worked on, while the dashboard showed the lease past its end."""
    flavour = FLAVOURS["anthropic"]
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_MAINTENANCE_INTERVAL_SECONDS="3600")
    create_run(run_file(tmp_path, [phase("p0", ["pkg/m0.py"])]), env, tmp_path)
    never = threading.Event()
    with WireServer() as wire:
        wire.script(flavour.path, Reply(200, flavour.body(files(m0_py="X = 1\n")), gate=never))
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        args = [*("run", "--run-id", "exec-run", "--auditor", "rules", "--lease-seconds", "5")]
        args += ["--workspace", str(tmp_path / "ws")]
        killed = drain_process(*args, env={**env, **provider}, cwd=tmp_path)
        try:
            wait_for(lambda: wire.seen(flavour.path), timeout=60)
            live = cli("run", "show", "exec-run", env=env, cwd=tmp_path)
            assert "held by" in live.stdout and "expired" not in live.stdout, live.stdout
        finally:
            killed.kill()
            killed.communicate(timeout=30)
            never.set()
    held = phase_row(url, "p0")
    expires = datetime.fromisoformat(str(held["lease_expires_at"])).replace(tzinfo=UTC)
    wait_for(lambda: datetime.now(UTC) > expires, timeout=30)  # the lease has run out
    owner = held["lease_owner"]
    shown = cli("run", "show", "exec-run", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"held by {owner} whose lease expired" in " ".join(shown.stdout.split()), shown.stdout


def test_a_stale_executor_stopped_says_its_lease_was_no_longer_held(tmp_path: Path) -> None:
    """The continued executor stopped with SIGTERM before its call was answered: its
    hand-back was refused, yet it said the attempts in flight were "handed back (QUEUED,
    no retry spent)"."""
    with _overtaken(tmp_path, threading.Event()) as (url, stale):
        stale.send_signal(signal.SIGTERM)
        _, stderr = stale.communicate(timeout=60)
    assert stale.returncode == 143, stderr[-3000:]
    assert phase_row(url, "p0")["state"] == "COMPLETE"
    assert "handed back" not in stderr, stderr[-3000:]
    assert "stopped by SIGTERM: 1 lease(s) no longer held" in stderr, stderr[-3000:]
    assert on_branch(tmp_path / "ws", "pkg/m0.py") == "VALUE = 2\n"


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_a_run_cancelled_mid_answer_stops_the_call_and_counts_what_it_spent(
    name: str, tmp_path: Path
) -> None:
    """``run cancel`` while the Builder's answer streamed: the executor learnt of it at its
    next heartbeat but read the answer to its end (a long one runs for minutes), writing
    and billing tokens no one could use. The stream is now closed once the lost lease is
    known, and what the call spent is still recorded and counted."""
    flavour = FLAVOURS[name]
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p0", ["pkg/m0.py"])]), env, tmp_path)
    answer = Reply(200, flavour.body(files(m0_py="VALUE = 1\n" * 300)), pace_s=0.2)  # 90 s
    with WireServer() as wire:
        wire.script(flavour.path, answer)
        args = [*("run", "--run-id", "exec-run", "--auditor", "rules", "--lease-seconds", "5")]
        args += ["--workspace", str(tmp_path / "ws")]
        running = drain_process(*args, env={**env, **_provider_env(flavour, wire)}, cwd=tmp_path)
        try:
            assert answer.writing.wait(60), "the answer never started"
            cancelled = cli("run", "cancel", "exec-run", env=env, cwd=tmp_path)
            assert cancelled.returncode == 0, cancelled.stderr[-3000:]
            assert answer.left.wait(45), "the executor read the whole answer"
            _, stderr = running.communicate(timeout=60)
        finally:
            if running.poll() is None:
                running.kill()
    assert "Traceback" not in stderr, stderr[-3000:]
    [call] = rows(url, "SELECT attempt, role, success, input_tokens FROM llm_usage_events")
    assert (call["attempt"], call["role"], bool(call["success"])) == (1, "builder", False)
    [spent] = rows(url, "SELECT tokens_used FROM phase_attempts")
    assert spent["tokens_used"] > 0
    assert rows(url, "SELECT tokens_used FROM runs") == [{"tokens_used": spent["tokens_used"]}]
