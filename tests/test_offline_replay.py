"""Issue 13 §3: offline replay survives retries and never looks like spending.

Through the real CLI and a spawned API server, on SQLite and PostgreSQL: a cassette
answers a call by its order among the phase's calls (a resumed or extra attempt gets the
next or, when the cassette allows, the last answer); a miss names the call and what the
cassette has; replayed calls are provider ``replay`` and bill nothing; a check whose
program is missing fails once (``check_unavailable``); a drain with nothing to answer its
run refuses before it claims anything.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.executor_support import (
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    phase_row,
    rows,
    run_file,
)
from tests.fakes.llm_wire import ANTHROPIC_PATH, Reply, WireServer, anthropic_message
from tests.support import cli

GOOD = files(mod_py="VALUE = 42\n")


def flaky_once(tmp_path: Path) -> str:
    """A check that fails the first time and passes after: a retry the recording never saw.
    (Its mark lives outside the workspace: each attempt gets a clean worktree.)"""
    mark = tmp_path / "checked-once"
    return f"test -f {mark} || {{ touch {mark}; exit 1; }}"


def _drain_p1(tmp_path: Path, env: dict[str, str], tape: Path) -> dict[str, Any]:
    result = drain(
        "phase",
        *("--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    summary: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return {**summary, "exit_code": result.returncode, "stderr": result.stderr}


def _recorded(
    tmp_path: Path, env: dict[str, str], answer: str, tape: Path, phase_id: str = "p1"
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Drain one phase live against the Anthropic wire fake answering ``answer``, with
    ``--record tape``: the drain's result and how many calls the fake was asked."""
    with WireServer() as wire:
        wire.respond = lambda seen: Reply(200, anthropic_message(answer))
        done = cli(
            *("drain", "phase", "--run-id", "exec-run", "--phase-id", phase_id),
            *("--auditor", "rules", "--workspace", str(tmp_path / "ws"), "--record", str(tape)),
            env={**env, "ANTHROPIC_BASE_URL": wire.url},
            cwd=tmp_path,
            timeout=60,
        )
        return done, len(wire.seen(ANTHROPIC_PATH))


def test_an_extra_attempt_gets_the_repeated_answer_and_bills_nothing(
    database_url: str, tmp_path: Path
) -> None:
    env = env_for(database_url)
    spec = [phase("p1", ["pkg/mod.py"], checks=[flaky_once(tmp_path)])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    header: dict[str, Any] = {"cassette": {"repeat_last": True}}
    tape = cassette(tmp_path, [header, line("p1", 1, GOOD)])

    summary = _drain_p1(tmp_path, env, tape)
    assert summary["exit_code"] == 0, summary["stderr"][-3000:]
    history = attempts(database_url, "p1")
    assert [(a["outcome"], a["stop_reason"]) for a in history] == [
        ("FAILED", "checks_failed"),
        ("COMPLETE", "completed"),
    ]
    usage = rows(database_url, "SELECT provider, model, cost_usd FROM llm_usage_events")
    assert [(u["provider"], u["model"]) for u in usage] == [("replay", "claude-sonnet-5-5")] * 2
    assert all(u["cost_usd"] > 0 for u in usage)  # what the recorded call would have cost...
    assert rows(database_url, "SELECT cost_usd FROM runs") == [{"cost_usd": 0.0}]  # ...unbilled


def test_a_miss_names_the_call_and_what_the_cassette_has(database_url: str, tmp_path: Path) -> None:
    env = env_for(database_url)
    spec = [phase("p1", ["pkg/mod.py"], checks=[flaky_once(tmp_path)])]
    create_run(run_file(tmp_path, spec), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, GOOD)])  # no header: answers do not repeat

    summary = _drain_p1(tmp_path, env, tape)
    assert summary["exit_code"] == 1
    second = attempts(database_url, "p1")[1]
    assert second["stop_reason"] == "llm_error"
    error = second["error"]
    assert (
        "no recorded answer for call #2 of role builder for phase 'p1' of run 'exec-run'" in error
    )
    assert "builder: 1 answer(s) (recorded at attempt 1)" in error
    assert "does not repeat answers" in error


def test_a_requeued_phase_gets_the_recorded_answer_whatever_its_attempt_number(
    database_url: str, tmp_path: Path
) -> None:
    """Attempt 3, first call of this process: the first recorded answer (attempt=1)."""
    env = env_for(database_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    empty = cassette(tmp_path, [line("p1", 1, '{"files": [], "summary": "done"}')])
    assert _drain_p1(tmp_path, env, empty)["exit_code"] == 1
    assert cli("run", "requeue", "exec-run", "p1", cwd=tmp_path, env=env).returncode == 0

    good = tmp_path / "good"
    good.mkdir()
    summary = _drain_p1(tmp_path, env, cassette(good, [line("p1", 1, GOOD)]))
    assert summary["exit_code"] == 0, summary["stderr"][-3000:]
    history = [(a["attempt"], a["outcome"]) for a in attempts(database_url, "p1")]
    assert history == [(1, "FAILED"), (2, "REQUEUED"), (3, "COMPLETE")]


def test_no_credentials_and_nothing_recorded_for_the_run_refuses_before_claiming(
    database_url: str, tmp_path: Path
) -> None:
    env = env_for(database_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    refused = cli("drain", "run", "--run-id", "exec-run", cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr
    assert "run 'exec-run' cannot be drained" in message
    assert "no LLM credentials are set" in message and "bundled replay cassette" in message
    assert "has nothing for this run (it answers telemetry-collection-v4)" in message
    assert "ANTHROPIC_API_KEY" in message and "OPENAI_BASE_URL" in message
    assert "api_server_spawned" not in message  # refused before any server started
    assert phase_row(database_url, "p1")["attempts"] == 0

    other = cassette(tmp_path, [line("p1", 1, GOOD, run_id="another-run")])
    refused = cli(
        "drain", "run", "--run-id", "exec-run", "--cassette", str(other), cwd=tmp_path, env=env
    )
    assert refused.returncode == 2
    assert f"the replay cassette {other} has nothing for this run (it answers another-run)" in (
        refused.stderr
    )
    assert rows(database_url, "SELECT COUNT(*) AS n FROM phase_attempts") == [{"n": 0}]


def test_anthropic_base_url_without_a_key_is_named_not_called_no_credentials(
    tmp_path: Path,
) -> None:
    """A local Anthropic-compatible server needs no key, so its user set only
    ``ANTHROPIC_BASE_URL``: told "no LLM credentials are set", they saw the URL ignored."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, ANTHROPIC_BASE_URL="http://127.0.0.1:9/proxy")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    refused = cli("drain", "run", "--run-id", "exec-run", cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    said = " ".join(refused.stderr.split())
    assert (
        "ANTHROPIC_BASE_URL is set (http://127.0.0.1:9/proxy) but anthropic needs "
        "ANTHROPIC_API_KEY too" in said
    ), said
    assert phase_row(url, "p1")["attempts"] == 0


def test_an_unknown_run_is_refused_at_once(database_url: str, tmp_path: Path) -> None:
    env = env_for(database_url)
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    for args in (["run", "--run-id", "nope"], ["phase", "--run-id", "nope", "--phase-id", "p"]):
        refused = cli("drain", *args, cwd=tmp_path, env=env)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "nothing to drain: run 'nope' not found in database" in refused.stderr
        assert "autopack run list" in refused.stderr
        assert "api_server_spawned" not in refused.stderr


def test_a_missing_check_program_fails_once_with_check_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    phases = [
        phase("p1", ["pkg/mod.py"], checks=["no-such-tool --version"]),
        phase("p2", ["pkg/two.py"], checks=["python -m no_such_module_xyz -q"]),
    ]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, GOOD), line("p2", 1, files(two_py="TWO = 2\n"))])
    result = drain(
        "run",
        *("--run-id", "exec-run", "--cassette", str(tape), "--auditor", "rules"),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    for phase_id, program in (("p1", "no-such-tool"), ("p2", "no_such_module_xyz")):
        [only] = attempts(url, phase_id)  # max_attempts 3, yet no retry
        assert (only["outcome"], only["stop_reason"]) == ("FAILED", "check_unavailable")
        assert program in only["error"]
        assert phase_row(url, phase_id)["state"] == "FAILED"
    assert not (tmp_path / "ws/pkg/mod.py").exists()  # undone like any failed attempt


@pytest.mark.parametrize("where", ["a FIFO", "a directory", "below a file"])
def test_a_record_path_no_cassette_can_be_written_at_is_refused_before_any_call(
    tmp_path: Path, where: str
) -> None:
    """``--record`` naming a directory or a path below a file: the live call was made and
    paid for, then the append failed and the phase FAILED with ``executor_error``; a FIFO
    waited for a reader forever, the phase held. Refused now before anything is claimed
    or called, exit 2 naming the flag."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, ANTHROPIC_API_KEY="test-key-record")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], max_attempts=1)]), env, tmp_path)
    tape = {"a FIFO": tmp_path / "tape", "a directory": tmp_path, "below a file": tmp_path / "f/t"}
    if where == "a FIFO":
        os.mkfifo(tape[where])
    (tmp_path / "f").write_text("a file\n")
    refused, calls = _recorded(tmp_path, env, GOOD, tape[where])
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, said[-3000:]
    assert "Traceback" not in said
    assert f"--record {tape[where]} " in said, said[-3000:]
    assert calls == 0
    assert phase_row(url, "p1")["state"] == "QUEUED" and attempts(url, "p1") == []


def test_a_record_path_holding_no_cassette_is_refused_and_a_cassette_is_added_to(
    tmp_path: Path,
) -> None:
    """``--record`` appends: naming the run file (for ``--cassette``) made it no YAML, and
    naming the database put the paid-for answers where SQLite's next write of its pages
    dropped them (exit 0, no cassette anywhere). Refused before any call; a cassette
    recorded earlier is still added to."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, ANTHROPIC_API_KEY="test-key-record")
    runfile = run_file(tmp_path, [phase("p1", ["pkg/a.py"]), phase("p2", ["pkg/b.py"])])
    create_run(runfile, env, tmp_path)
    before = runfile.read_bytes()
    tape = tmp_path / "tape.jsonl"

    def record(phase_id: str, where: Path) -> tuple[int, str, int]:
        answer = files(**{"a_py" if phase_id == "p1" else "b_py": "VALUE = 42\n"})
        done, calls = _recorded(tmp_path, env, answer, where, phase_id)
        return done.returncode, " ".join(done.stderr.split()), calls

    for where in (runfile, tmp_path / "autopack.db"):
        code, said, calls = record("p1", where)
        assert code == 2, said[-3000:]
        assert f"--record {where} holds something other than a cassette" in said, said[-3000:]
        assert "Traceback" not in said and calls == 0
    assert phase_row(url, "p1")["state"] == "QUEUED" and attempts(url, "p1") == []
    assert runfile.read_bytes() == before
    for phase_id in ("p1", "p2"):
        code, said, calls = record(phase_id, tape)
        assert code == 0 and calls == 1, said[-3000:]
    recorded = [json.loads(text) for text in tape.read_text().splitlines()]
    assert [r["match"]["phase_id"] for r in recorded] == ["p1", "p2"]


def test_an_answer_holding_a_unicode_line_separator_is_replayed_as_recorded(
    tmp_path: Path,
) -> None:
    """The recorder writes each line as UTF-8 JSON, where U+2028, U+2029 and U+0085 stand
    as they are; the replay split the file at them too (``str.splitlines``), so a cassette
    whose answer held one was "not JSON" at its line and never replayed."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, ANTHROPIC_API_KEY="test-key-record")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), env, tmp_path)
    tape = tmp_path / "tape.jsonl"
    answer = json.dumps(
        {
            "files": [{"path": "pkg/a.py", "content": "VALUE = 42\n"}],
            "summary": "wrote\u2028a.py\u2029\x85",
        },
        ensure_ascii=False,
    )
    recorded, _ = _recorded(tmp_path, env, answer, tape)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert "\u2028" in tape.read_text(encoding="utf-8")  # as the recorder writes it

    replay_url = f"sqlite:///{tmp_path / 'replay.db'}"
    replay_env = env_for(replay_url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"])]), replay_env, tmp_path)
    replayed = cli(
        *("drain", "phase", "--run-id", "exec-run", "--phase-id", "p1", "--auditor", "rules"),
        *("--workspace", str(tmp_path / "replayed"), "--cassette", str(tape)),
        env=replay_env,
        cwd=tmp_path,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert "not JSON" not in replayed.stderr
    assert phase_row(replay_url, "p1")["state"] == "COMPLETE"


def test_recording_onto_a_cassette_without_a_final_newline_keeps_every_line(
    tmp_path: Path,
) -> None:
    """A cassette saved by an editor that drops the final newline (or a header written
    with ``echo -n``): the recorder's line was glued onto its last one, so both were "not
    JSON", the paid-for answer with them, and the next ``--record`` refused the file."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url, ANTHROPIC_API_KEY="test-key-record")
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    tape = tmp_path / "tape.jsonl"
    tape.write_text('{"cassette": {"repeat_last": true}}')  # no final newline
    recorded, _ = _recorded(tmp_path, env, GOOD, tape)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    lines = [json.loads(text) for text in tape.read_text().split("\n") if text.strip()]
    assert lines[0] == {"cassette": {"repeat_last": True}}
    assert [entry["match"]["phase_id"] for entry in lines[1:]] == ["p1"]
