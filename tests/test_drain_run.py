"""``autopack drain run``: real concurrency, and no orphaned server however it is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.executor_support import (
    branch_files,
    cassette,
    cli_drain,
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    line,
    phase,
    phase_row,
    rows,
    run_file,
)
from tests.fakes.llm_wire import Reply, WireServer
from tests.llm.support import FLAVOURS
from tests.support import Pid, alive, cli, gone, wait_for


def _phases(count: int) -> list[dict[str, object]]:
    return [phase(f"p{i}", [f"pkg/m{i}.py"]) for i in range(count)]


def _tape(tmp_path: Path, count: int, latency_ms: float) -> Path:
    return cassette(
        tmp_path,
        [
            line(f"p{i}", 1, files(**{f"m{i}_py": f"VALUE = {i}\n"}), latency_ms=latency_ms)
            for i in range(count)
        ],
    )


def _setup(tmp_path: Path, count: int) -> tuple[str, dict[str, str]]:
    """A SQLite run of ``count`` phases; replayed latencies are waited for (speed 1)."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_REPLAY_SPEED="1")
    create_run(run_file(tmp_path, _phases(count)), env, tmp_path)
    return url, env


def _run_args(tmp_path: Path, tape: Path, *extra: str) -> list[str]:
    """``drain run`` of the test run answered by ``tape``, rules auditor, workspace ``ws``."""
    return [
        "run",
        *("--run-id", "exec-run", "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(tmp_path / "ws"), *extra),
    ]


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_concurrency_really_overlaps_phases_and_never_exceeds_k(tmp_path: Path) -> None:
    url, env = _setup(tmp_path, 8)
    tape = _tape(tmp_path, 8, latency_ms=1200)
    result = drain(*_run_args(tmp_path, tape, "-k", "4"), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["run_state"] == "DONE_SUCCESS"
    spans = [
        (
            datetime.fromisoformat(str(r["started_at"])),
            datetime.fromisoformat(str(r["finished_at"])),
        )
        for r in rows(url, "SELECT started_at, finished_at FROM phase_attempts")
    ]
    assert len(spans) == 8
    assert 2 <= _max_overlap(spans) <= 4


def test_sixteen_phases_at_once_on_sqlite_lose_nothing(tmp_path: Path) -> None:
    """16 attempts finishing together: results, usage and telemetry all land at once.

    (A request-scoped transaction once held SQLite's write lock across a thread hop; under
    this burst the API stopped answering for the busy timeout and attempts crashed.)
    """
    url, env = _setup(tmp_path, 32)
    tape = _tape(tmp_path, 32, latency_ms=500)
    result = drain(*_run_args(tmp_path, tape, "-k", "16"), env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["run_state"] == "DONE_SUCCESS"
    assert len(summary["attempts"]) == 32, "no attempt may crash or be retried"
    assert (summary["telemetry_written"], summary["telemetry_failures"]) == (64, 0)
    assert rows(url, "SELECT COUNT(*) AS n FROM llm_usage_events") == [{"n": 32}]


def _spawned_pid(process: subprocess.Popen[str], seen: list[str]) -> Pid:
    assert process.stderr is not None
    for text in process.stderr:
        seen.append(text)
        found = re.search(r"api_server_spawned .*pid=(\d+)", text)
        if found:
            return alive(int(found.group(1)))
    raise AssertionError("the executor never reported its server: " + "".join(seen))


@pytest.mark.parametrize("how", ["sigterm", "sigint-twice"])
def test_interrupted_drain_leaves_no_server_behind(how: str, tmp_path: Path) -> None:
    url, env = _setup(tmp_path, 2)
    tape = _tape(tmp_path, 2, latency_ms=60_000)
    process = drain_process(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    seen: list[str] = []
    server = _spawned_pid(process, seen)
    deadline = time.monotonic() + 60
    while phase_row(url, "p0")["state"] != "EXECUTING":  # mid-attempt, waiting on the "LLM"
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        for text in process.stderr:  # the first Ctrl-C only stops claiming; say so, then abort
            seen.append(text)
            if "stopping" in text:
                break
        process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == (143 if how == "sigterm" else 130)
    assert gone(server), f"API server {server.pid} outlived the drain ({how})"
    for phase_id in ("p0", "p1"):
        row = phase_row(url, phase_id)
        assert (row["state"], row["lease_owner"]) == ("QUEUED", None), row


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_drain_stopped_while_its_server_starts_stops_it_and_leaves_no_log(
    how: signal.Signals, tmp_path: Path
) -> None:
    """Stopped in its first seconds, while the API server it spawned was not yet healthy,
    the drain left that server to notice its parent was gone on its own, and its log in
    the temp directory for good (one more per interrupted drain)."""
    _, env = _setup(tmp_path, 1)
    logs = Path(tempfile.gettempdir())
    process = drain_process(*_run_args(tmp_path, _tape(tmp_path, 1, 0)), env=env, cwd=tmp_path)
    pattern = f"autopack-api-{process.pid}-*.log"
    wait_for(lambda: list(logs.glob(pattern)), timeout=60)  # the child is starting
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + how, stderr[-3000:]
    assert "api_server_spawned" not in stderr, "not stopped while the server started"
    assert list(logs.glob(pattern)) == [], stderr[-3000:]


def test_the_log_of_the_server_a_drain_starts_is_its_users_alone(tmp_path: Path) -> None:
    """The API server a drain starts logged to a file created 0644 in the temp directory,
    at a name known in advance (``autopack-api-PID-PORT.log``) and opened following a
    symbolic link there: every user of the machine could read it, and one could have it
    overwrite a file of the drain's user. It is created as ``mkstemp`` creates files:
    0600, never through a link, under a name no one can guess."""
    _, env = _setup(tmp_path, 1)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    tape = _tape(tmp_path, 1, latency_ms=3000)
    process = drain_process(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    [log] = wait_for(lambda: list(scratch.glob(f"autopack-api-{process.pid}-*.log")), timeout=60)
    mode = stat.S_IMODE(log.stat().st_mode)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert mode == 0o600, oct(mode)
    assert re.fullmatch(rf"autopack-api-{process.pid}-\d+-\w+\.log", log.name), log.name


def test_one_ctrl_c_finishes_the_attempt_in_flight_and_reports(tmp_path: Path) -> None:
    url, env = _setup(tmp_path, 2)
    process = drain_process(
        *_run_args(tmp_path, _tape(tmp_path, 2, latency_ms=3000)), env=env, cwd=tmp_path
    )
    seen: list[str] = []
    _spawned_pid(process, seen)
    deadline = time.monotonic() + 60
    while phase_row(url, "p0")["state"] != "EXECUTING":
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]  # 128 + SIGINT, after the summary
    assert "stopped by Ctrl-C" in stderr and "Traceback" not in stderr
    assert "p0" in stdout and "COMPLETE" in stdout  # the summary table is printed
    assert phase_row(url, "p0")["state"] == "COMPLETE"
    assert phase_row(url, "p1")["state"] == "QUEUED"
    assert branch_files(tmp_path / "ws") == ["pkg/m0.py"]


def test_interrupted_drain_phase_hands_the_phase_back_at_once(tmp_path: Path) -> None:
    url, env = _setup(tmp_path, 1)
    tape = _tape(tmp_path, 1, latency_ms=60_000)
    args = _run_args(tmp_path, tape)
    process = drain_process("phase", "--phase-id", "p0", *args[1:], env=env, cwd=tmp_path)
    seen: list[str] = []
    server = _spawned_pid(process, seen)
    assert process.stderr is not None
    for text in process.stderr:  # the attempt has begun (it is waiting on the "LLM")
        seen.append(text)
        if "p0 attempt 1 started" in text:
            break
    assert phase_row(url, "p0")["state"] == "EXECUTING", "".join(seen)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode != 0
    assert gone(server)
    # Not EXECUTING until the lease expires: QUEUED now, the attempt says why.
    assert phase_row(url, "p0")["state"] == "QUEUED"
    [attempt] = rows(url, "SELECT outcome, stop_reason FROM phase_attempts")
    assert attempt == {"outcome": "FAILED", "stop_reason": "interrupted"}


def test_killed_api_server_stops_the_drain_clearly_and_loses_nothing(tmp_path: Path) -> None:
    url, env = _setup(tmp_path, 2)
    tape = cassette(
        tmp_path,
        [
            line(f"p{i}", attempt, files(**{f"m{i}_py": f"VALUE = {i}\n"}), latency_ms=latency)
            for i in range(2)
            for attempt, latency in ((1, 8000), (2, 0))
        ],
    )
    args = _run_args(tmp_path, tape, "-k", "2", "--lease-seconds", "5")
    process = drain_process(*args, env=env, cwd=tmp_path)
    seen: list[str] = []
    server = _spawned_pid(process, seen)
    deadline = time.monotonic() + 60
    while {phase_row(url, p)["state"] for p in ("p0", "p1")} != {"EXECUTING"}:
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    os.kill(server.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 2, stderr[-3000:]
    assert "nothing is lost" in stderr and "run the same command again" in stderr

    again = drain(*args, "--replay-speed", "0", env=env, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["run_state"] == "DONE_SUCCESS"
    history = rows(url, "SELECT phase_id, outcome, stop_reason FROM phase_attempts ORDER BY id")
    assert sorted((h["phase_id"], h["outcome"], h["stop_reason"]) for h in history) == [
        ("p0", "COMPLETE", "completed"),
        ("p0", "LOST", "lease_expired"),
        ("p1", "COMPLETE", "completed"),
        ("p1", "LOST", "lease_expired"),
    ]


def _all_executing(
    database_url: str, tmp_path: Path, count: int, max_attempts: int = 3
) -> tuple[dict[str, str], Path, subprocess.Popen[str], list[str], Pid]:
    """A ``drain run -k COUNT`` of COUNT phases, once all of them are EXECUTING (their
    answers take a minute): its env, tape, process, the stderr seen so far and its
    spawned server's pid."""
    env = env_for(database_url, AUTOPACK_REPLAY_SPEED="1")
    phases = [phase(f"p{i}", [f"pkg/m{i}.py"], max_attempts=max_attempts) for i in range(count)]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = _tape(tmp_path, count, latency_ms=60_000)
    process = drain_process(*_run_args(tmp_path, tape, "-k", str(count)), env=env, cwd=tmp_path)
    seen: list[str] = []
    server = _spawned_pid(process, seen)
    deadline = time.monotonic() + 60
    while {phase_row(database_url, f"p{i}")["state"] for i in range(count)} != {"EXECUTING"}:
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    return env, tape, process, seen, server


def test_sigterm_mid_attempt_hands_every_lease_back_without_spending_a_retry(
    database_url: str, tmp_path: Path
) -> None:
    """Issue 13 §4: SIGTERM leaves no lease held by a dead worker, prints the summary and
    exits 143; the next drain finds the phases QUEUED and their one attempt unspent."""
    env, tape, process, _, server = _all_executing(database_url, tmp_path, 2, max_attempts=1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "leases_handed_back" in stderr
    assert "run exec-run" in stdout and "interrupted" in stdout  # the summary, printed
    assert "stopped by SIGTERM" in stderr
    assert gone(server)
    for phase_id in ("p0", "p1"):
        row = phase_row(database_url, phase_id)
        assert (row["state"], row["lease_owner"], row["lease_token"]) == ("QUEUED", None, None)
    history = rows(database_url, "SELECT outcome, stop_reason FROM phase_attempts")
    assert history == [{"outcome": "FAILED", "stop_reason": "interrupted"}] * 2

    again = drain(
        *_run_args(tmp_path, tape, "-k", "2", "--replay-speed", "0"), env=env, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    outcomes = rows(database_url, "SELECT outcome FROM phase_attempts ORDER BY id")
    assert [o["outcome"] for o in outcomes][2:] == ["COMPLETE", "COMPLETE"]  # no LOST


@pytest.mark.parametrize("how", ["sigterm", "sigint-twice"])
def test_signals_repeated_while_leases_are_handed_back_leave_none_held(
    how: str, database_url: str, tmp_path: Path
) -> None:
    """A user pressing Ctrl-C a third time, or a supervisor repeating its SIGTERM, while the
    executor hands its leases back: the signal cut the hand-back short, the other phases
    stayed EXECUTING under a dead worker until their leases expired and no summary was
    printed. The API server is stopped (SIGSTOP) so that the hand-back is provably in
    progress when the signals repeat; it is continued once one was noted."""
    _, _, process, seen, server = _all_executing(database_url, tmp_path, 3)
    again = signal.SIGTERM if how == "sigterm" else signal.SIGINT
    assert process.stderr is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        if how == "sigint-twice":
            process.send_signal(signal.SIGINT)
            for text in process.stderr:  # the first Ctrl-C only stops claiming
                seen.append(text)
                if "stopping" in text:
                    break
        reader = threading.Thread(target=lambda: seen.extend(process.stderr or ()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20  # well within the hand-back's 30 s read timeout
        while not any("already_stopping" in text for text in seen):
            assert time.monotonic() < deadline and process.poll() is None, "".join(seen)
            process.send_signal(again)  # the hand-back begins, waits on the server; again
            time.sleep(0.1)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    process.wait(timeout=60)  # the summary fits in the pipe; stderr is the reader's
    reader.join(timeout=10)
    assert process.stdout is not None
    stdout, told = process.stdout.read(), "".join(seen)
    assert process.returncode == (143 if how == "sigterm" else 130), told[-3000:]
    assert "Traceback" not in told and "leases_handed_back count=3" in told, told[-3000:]
    assert "run exec-run" in stdout and "interrupted" in stdout  # the summary, printed
    for i in range(3):
        row = phase_row(database_url, f"p{i}")
        assert (row["state"], row["lease_owner"]) == ("QUEUED", None), told[-3000:]


def test_an_attempt_ending_its_own_way_after_sigterm_is_reported_as_recorded(
    tmp_path: Path,
) -> None:
    """SIGTERM during the Auditor's call: the lease is handed back (``interrupted``), and
    the answer then arrives within the grace the workers get; the attempt, its lease
    refused, ended ``lease_lost``, and the summary said so although the database says
    ``interrupted``. The summary says what the database recorded."""
    flavour = FLAVOURS["anthropic"]
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p0", ["pkg/m0.py"])]), env, tmp_path)
    verdict = json.dumps({"approved": True, "issues": [], "summary": "fine"})
    audited = threading.Event()
    with WireServer() as wire:
        wire.script(
            flavour.path,
            Reply(200, flavour.body(files(m0_py="VALUE = 0\n"))),
            Reply(200, flavour.body(verdict), gate=audited),
        )
        provider = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": wire.url}
        process = drain_process(
            *("run", "--run-id", "exec-run", "--auditor", "llm", "--json"),
            *("--workspace", str(tmp_path / "ws")),
            env={**env, **provider},
            cwd=tmp_path,
        )
        seen: list[str] = []
        wait_for(lambda: len(wire.seen(flavour.path)) == 2, timeout=60)  # the Auditor is asked
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        for text in process.stderr:  # handed back; now the Auditor answers
            seen.append(text)
            if "leases_handed_back" in text:
                break
        audited.set()
        stdout, stderr = process.communicate(timeout=60)
    told = "".join(seen) + stderr
    assert process.returncode == 143, told[-3000:]
    assert "lease_lost" in told, "the attempt did not end within the grace: " + told[-3000:]
    [attempt] = rows(url, "SELECT outcome, stop_reason FROM phase_attempts")
    assert attempt == {"outcome": "FAILED", "stop_reason": "interrupted"}
    [reported] = json.loads(stdout)["attempts"]
    assert (reported["outcome"], reported["stop_reason"]) == ("FAILED", "interrupted"), reported
    assert branch_files(tmp_path / "ws") == []


def test_a_second_drain_says_done_before_and_leaves_no_server_log(tmp_path: Path) -> None:
    """A drain of a finished run calls no LLM, so it needs no credentials: without any (and
    no cassette) it was refused with "no LLM credentials are set", exit 2."""
    _, env = _setup(tmp_path, 2)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    tape = _tape(tmp_path, 2, latency_ms=0)
    first = drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    uncredentialed = ["run", "--run-id", "exec-run", "--workspace", str(tmp_path / "ws")]
    second = cli_drain(*uncredentialed, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done before this drain") == 2, second.stdout
    assert "COMPLETE │ 0" not in second.stdout
    assert list(scratch.glob("autopack-api-*.log")) == [], "a healthy server's log is deleted"


def test_a_drain_of_a_failed_phase_says_it_failed_before_and_how_to_retry_it(
    tmp_path: Path,
) -> None:
    """A phase FAILED (a bad API key, say); the user fixes the cause and drains again. The
    drain did nothing and its table said ``FAILED │ 0`` with no reason and no way on: a
    drain never retries a FAILED phase, only a requeue does, and nothing said so."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    check = "test -f pkg/ok.py"
    create_run(
        run_file(tmp_path, [phase("p1", ["pkg/a.py"], checks=[check], max_attempts=1)]),
        env,
        tmp_path,
    )
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    first = drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    assert first.returncode == 1 and phase_row(url, "p1")["state"] == "FAILED"
    again = cli_drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert "failed before this drain" in again.stdout, again.stdout
    assert "FAILED │ 0" not in again.stdout
    hint = " ".join(again.stderr.split())
    assert f"`autopack run requeue exec-run p1 --database-url {url}`" in hint, hint
    assert json.loads(drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path).stdout)[
        "failed_before"
    ] == ["p1"]

    requeued = cli("run", "requeue", "exec-run", "p1", cwd=tmp_path, env=env)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    tape = cassette(fixed, [line("p1", 2, files(a_py="A = 1\n", ok_py="OK = 1\n"))])
    done = cli_drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed before" not in done.stdout + done.stderr
    assert phase_row(url, "p1")["state"] == "COMPLETE"


def test_force_on_a_complete_phase_says_it_did_nothing(tmp_path: Path) -> None:
    """The README said "--force requeues"; on a COMPLETE phase it did nothing and said
    only "done before this drain", so the user believed the phase had run again."""
    _, env = _setup(tmp_path, 1)
    tape = _tape(tmp_path, 1, latency_ms=0)
    assert drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path).returncode == 0
    args = ("phase", *_run_args(tmp_path, tape, "--phase-id", "p0", "--force")[1:])
    forced = cli_drain(*args, env=env, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    said = " ".join(forced.stderr.split())
    assert "--force did not requeue p0: it is COMPLETE" in said, said
    assert "0 attempt(s)" in forced.stdout


def test_a_phase_another_drain_completed_meanwhile_is_named_so(tmp_path: Path) -> None:
    """Two drains of one run from two terminals: each one's table showed the phases the
    other completed as ``COMPLETE │ 0`` with an empty reason, as if nothing had run them."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    marker = tmp_path / "go"
    hold = (
        'python -c "import os, time; [time.sleep(0.05) for _ in '
        f"iter(lambda: not os.path.exists('{marker}'), False)]\""
    )
    phases = [phase("p1", ["pkg/a.py"], checks=[hold]), phase("p2", ["pkg/b.py"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(
        tmp_path, [line("p1", 1, files(a_py="A = 1\n")), line("p2", 1, files(b_py="B = 2\n"))]
    )
    first = drain_process(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    wait_for(lambda: phase_row(url, "p1")["state"] == "CI_RUNNING", timeout=60)
    other = drain(
        "phase", *_run_args(tmp_path, tape, "--phase-id", "p2")[1:], env=env, cwd=tmp_path
    )
    assert other.returncode == 0, other.stderr[-3000:]
    marker.write_text("")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert "done by another drain meanwhile" in " ".join(stdout.split()), stdout
    assert "COMPLETE │ 0" not in stdout


def test_idle_workers_wake_for_a_new_tier_and_the_drain_ends_with_its_last_result(
    tmp_path: Path,
) -> None:
    """A worker with nothing to claim while its siblings hold the rest is woken by them.

    Tier 1 is a fast phase and a slow one, tier 2 two phases. The worker done first has
    nothing to claim (the slow phase is held, tier 2 waits for it) and sleeps for the poll,
    set to 60 s here: the sibling that finishes tier 1 wakes it to take half of tier 2,
    and the last one done wakes it to end the drain. (Before, it slept the whole poll —
    every drain's tail and every tier change cost up to a poll, 1 s by default — or asked
    the server every 50 ms while a tier was blocked.)
    """
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, AUTOPACK_REPLAY_SPEED="1", AUTOPACK_POLL_SECONDS="60")
    body = json.loads(run_file(tmp_path, []).read_text())
    body["tiers"] = [
        {
            "tier_id": "T1",
            "name": "first",
            "phases": [phase("a", ["pkg/a.py"]), phase("b", ["pkg/b.py"])],
        },
        {
            "tier_id": "T2",
            "name": "second",
            "phases": [phase("c", ["pkg/c.py"]), phase("d", ["pkg/d.py"])],
        },
    ]
    (tmp_path / "two-tiers.json").write_text(json.dumps(body))
    create_run(tmp_path / "two-tiers.json", env, tmp_path)
    latency = {"a": 0, "b": 1000, "c": 1000, "d": 1000}
    tape = cassette(
        tmp_path,
        [line(p, 1, files(**{f"{p}_py": "X = 1\n"}), latency_ms=ms) for p, ms in latency.items()],
    )
    result = drain(*_run_args(tmp_path, tape, "-k", "2"), env=env, cwd=tmp_path, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["run_state"] == "DONE_SUCCESS"
    assert summary["wall_seconds"] < 30, "an idle worker slept through the poll"
    second_tier = [
        (
            datetime.fromisoformat(str(r["started_at"])),
            datetime.fromisoformat(str(r["finished_at"])),
        )
        for r in rows(
            url, "SELECT started_at, finished_at FROM phase_attempts WHERE phase_id IN ('c', 'd')"
        )
    ]
    assert _max_overlap(second_tier) == 2, "tier 2 ran on one worker: the other slept"


def test_sigterm_during_checks_says_interrupted_as_the_database_records_it(
    tmp_path: Path,
) -> None:
    """SIGTERM kills the running check, so the attempt saw its check fail; but the lease
    was handed back first and the database records ``interrupted``. The progress line and
    the summary must say what was recorded, not ``checks_failed`` (they used to)."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    started = tmp_path / "check-started"
    code = f"import pathlib, time; pathlib.Path(r'{started}').touch(); time.sleep(600)"
    check = f'python -c "{code}"'
    create_run(run_file(tmp_path, [phase("p0", ["pkg/m0.py"], checks=[check])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p0", 1, files(m0_py="VALUE = 0\n"))])
    process = drain_process(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    seen: list[str] = []
    _spawned_pid(process, seen)
    deadline = time.monotonic() + 60
    while not started.exists():  # the check is running: the attempt waits on it
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    [attempt] = rows(url, "SELECT outcome, stop_reason FROM phase_attempts")
    assert attempt == {"outcome": "FAILED", "stop_reason": "interrupted"}
    told = "".join(seen) + stderr + stdout
    assert "checks_failed" not in told, told[-3000:]
    assert "✘ p0 attempt 1: interrupted" in told, told[-3000:]
    assert re.search(r"│ p0 +│ QUEUED +│ 1 +│ interrupted", stdout), stdout


def test_a_phase_skipped_because_this_drains_phase_failed_says_why(tmp_path: Path) -> None:
    """p2 depends on p1; p1 failed in this drain, so p2 was SKIPPED as blocked. The
    summary said "skipped by another drain meanwhile" when there was no other drain."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    phases = [
        phase("p1", ["pkg/a.py"], checks=["python -c 'raise SystemExit(1)'"], max_attempts=1),
        phase("p2", ["pkg/b.py"], depends_on=["p1"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(a_py="A = 1\n"))])
    result = cli_drain(*_run_args(tmp_path, tape), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    said = " ".join(result.stdout.split())
    assert "another drain" not in said, said
    assert "skipped meanwhile: blocked by p1 (FAILED)" in said, said


def test_a_worker_id_no_claim_can_carry_is_refused_naming_it_not_a_hang(tmp_path: Path) -> None:
    """Each worker built its claim before its error handling: a --worker-id longer than a
    claim takes (200) killed every worker thread with a traceback, and the drain waited
    for them for ever (even on a run with nothing left to do)."""
    env = env_for(f"sqlite:///{tmp_path / 'autopack.db'}")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/m.py"])]), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, files(m_py="VALUE = 1\n"))])
    result = drain(
        *("run", "--run-id", "exec-run", "--worker-id", "w" * 300, "--auditor", "rules"),
        *("--cassette", str(tape), "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "worker_id: String should have at most 200 characters" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


EXEC_AUTOPACK = "os.execv(sys.executable, [sys.executable, '-m', 'autopack', *sys.argv[1:]])"
CONTROLLING = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); " + EXEC_AUTOPACK
)
"""In a new session, make standard input (the terminal) its controlling one, then run
``autopack``: what a login shell does for the commands it starts."""


def _in_a_terminal(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """``autopack drain ARGS`` with a pseudo-terminal as its controlling terminal, as a
    person runs it over SSH: the process and the terminal's master side."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", CONTROLLING, "drain", *args],
        cwd=cwd,
        env={**env, "AUTOPACK_LOG_LEVEL": "INFO"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    return process, master


def test_a_closed_terminal_hands_every_lease_back(tmp_path: Path) -> None:
    """An SSH session dropped (the terminal closed: SIGHUP, then every write fails): the
    drain died at once by SIGHUP's default, its phases EXECUTING under a dead worker until
    their leases expired, each attempt then spent as LOST."""
    url, env = _setup(tmp_path, 2)
    tape = _tape(tmp_path, 2, latency_ms=60_000)
    process, master = _in_a_terminal(_run_args(tmp_path, tape, "-k", "2"), env, tmp_path)
    os.set_blocking(master, False)
    shown = bytearray()  # read as it comes: a full terminal would block the drain's writes
    deadline = time.monotonic() + 60
    while {phase_row(url, f"p{i}")["state"] for i in range(2)} != {"EXECUTING"}:
        assert time.monotonic() < deadline and process.poll() is None, shown.decode()[-3000:]
        with contextlib.suppress(BlockingIOError):
            shown += os.read(master, 65536)
        time.sleep(0.05)
    server = alive(int(re.findall(rb"api_server_spawned .*pid=(\d+)", shown)[0]))
    os.close(master)  # the terminal hangs up
    assert process.wait(timeout=60) != 0
    assert gone(server)
    for i in range(2):
        row = phase_row(url, f"p{i}")
        assert (row["state"], row["lease_owner"]) == ("QUEUED", None), shown.decode()[-3000:]
    history = rows(url, "SELECT outcome, stop_reason FROM phase_attempts")
    assert history == [{"outcome": "FAILED", "stop_reason": "interrupted"}] * 2


def test_a_drain_under_nohup_outlives_its_terminal(tmp_path: Path) -> None:
    """``nohup autopack drain …`` ignores SIGHUP: the handler that hands the leases back
    when the terminal closes must not undo that and stop the drain."""
    url, env = _setup(tmp_path, 1)
    tape = _tape(tmp_path, 1, latency_ms=2_000)
    nohup = "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    process = subprocess.Popen(
        [sys.executable, "-c", nohup + EXEC_AUTOPACK, "drain", *_run_args(tmp_path, tape)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while phase_row(url, "p0")["state"] != "EXECUTING":
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    assert phase_row(url, "p0")["state"] == "COMPLETE"
