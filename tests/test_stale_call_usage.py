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
            Reply(200, flavour.body(files(m0_py="VALUE = 1\n")), gate=gate),  # the stale one
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


def test_a_call_answered_after_the_lease_expired_keeps_its_usage_row(tmp_path: Path) -> None:
    """The continued executor's call answered: the usage report was refused (the lease is
    gone) and the usage row was never written, so ``telemetry report`` and ``/metrics``
    showed one call fewer, and its tokens and cost missing, than the provider answered and
    billed; nor did the run's totals (and budgets) count them."""
    answered = threading.Event()
    with _overtaken(tmp_path, answered) as (url, stale):
        answered.set()  # the stale executor's call is answered now, its lease long gone
        _, stderr = stale.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "lease_lost" in stderr, stderr[-3000:]
    assert phase_row(url, "p0")["state"] == "COMPLETE"
    calls = rows(
        url,
        "SELECT attempt, role, success, input_tokens, output_tokens FROM llm_usage_events "
        "ORDER BY attempt",
    )
    assert [(c["attempt"], c["role"]) for c in calls] == [(1, "builder"), (2, "builder")], calls
    assert calls[0]["output_tokens"] == calls[1]["output_tokens"] > 0, calls
    # ... and counted in the attempt's, the phase's and the run's totals (budgets included)
    spent = rows(url, "SELECT attempt, tokens_used FROM phase_attempts ORDER BY attempt")
    assert spent[0]["tokens_used"] == spent[1]["tokens_used"] > 0, spent
    total = 2 * spent[0]["tokens_used"]
    assert phase_row(url, "p0")["tokens_used"] == total
    assert rows(url, "SELECT tokens_used FROM runs") == [{"tokens_used": total}]


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
