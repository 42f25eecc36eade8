"""The executor end to end: real CLI, real spawned API server, real database, replayed LLM.

Each test writes a tiny run and a cassette of Builder answers, drains with
``autopack drain``, and checks what the user would check: exit code, phase state, the
attempt history, the run's branch in the workspace repository, and the telemetry rows.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.executor_support import (
    attempts,
    branch_files,
    cassette,
    cli_drain,
    create_run,
    drain,
    drain_process,
    env_for,
    files,
    git,
    line,
    on_branch,
    phase,
    phase_row,
    repository,
    rows,
    run_file,
)
from tests.support import cli

GOOD = files(mod_py="def answer() -> int:\n    return 42\n")
CHECK = 'python -c "from pkg.mod import answer; assert answer() == 42"'


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'autopack.db'}"


def _phase_args(tmp_path: Path, tape: Path) -> list[str]:
    """``drain phase`` of p1 answered by ``tape``, rules auditor, workspace ``tmp_path/ws``."""
    return [
        "phase",
        *("--run-id", "exec-run", "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
    ]


def _drain_phase(tmp_path: Path, env: dict[str, str], tape: Path, *extra: str) -> dict[str, object]:
    result = drain(
        *_phase_args(tmp_path, tape),
        *extra,
        env=env,
        cwd=tmp_path,
    )
    summary: dict[str, object] = json.loads(result.stdout) if result.stdout else {}
    summary["exit_code"] = result.returncode
    summary["stderr"] = result.stderr
    return summary


def _setup(tmp_path: Path, url: str, **phase_kwargs: Any) -> dict[str, str]:
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"], **phase_kwargs)]), env, tmp_path)
    return env


def test_empty_files_is_corrected_by_a_retry(tmp_path: Path, sqlite_url: str) -> None:
    env = _setup(tmp_path, sqlite_url, checks=[CHECK])
    tape = cassette(
        tmp_path, [line("p1", 1, '{"files": [], "summary": "done"}'), line("p1", 2, GOOD)]
    )
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 0, summary["stderr"]
    history = attempts(sqlite_url, "p1")
    assert [(a["outcome"], a["stop_reason"]) for a in history] == [
        ("FAILED", "empty_files"),
        ("COMPLETE", "completed"),
    ]
    assert "empty" in history[0]["feedback"]
    assert (on_branch(tmp_path / "ws", "pkg/mod.py") or "").endswith("return 42\n")
    usage = rows(sqlite_url, "SELECT attempt, success FROM llm_usage_events ORDER BY id")
    assert usage == [{"attempt": 1, "success": True}, {"attempt": 2, "success": True}]
    parses = rows(
        sqlite_url,
        "SELECT attempt, parse_success, phase_outcome FROM "
        "token_estimation_v2_events ORDER BY attempt",
    )
    assert [(p["attempt"], bool(p["parse_success"])) for p in parses] == [(1, False), (2, True)]
    # The phase's final outcome is joined onto every estimation event when the phase ends.
    assert [p["phase_outcome"] for p in parses] == ["COMPLETE", "COMPLETE"]


def test_path_traversal_is_rejected_and_nothing_is_written_outside(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = _setup(tmp_path, sqlite_url)
    evil = json.dumps(
        {
            "files": [
                {"path": "pkg/mod.py", "content": "x = 1\n"},
                {"path": "pkg/../../escaped.py", "content": "owned = True\n"},
            ]
        }
    )
    tape = cassette(tmp_path, [line("p1", 1, evil), line("p1", 2, GOOD)])
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 0, summary["stderr"]
    first = attempts(sqlite_url, "p1")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "unsafe_path")
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path.parent / "escaped.py").exists()
    assert branch_files(tmp_path / "ws") == ["pkg/mod.py"]


def test_a_lone_surrogate_in_an_answer_is_refused_and_the_phase_stays_readable(
    tmp_path: Path, sqlite_url: str
) -> None:
    """JSON's ``\\udc80`` escape spells a lone surrogate: as a path it became a file name of
    invalid UTF-8 on the branch and an attempt row no read could serialize (``run phase``
    answered 500 for good); in content it crashed the attempt as an executor_error."""
    env = _setup(tmp_path, sqlite_url)
    bad_path = json.dumps(
        {
            "files": [
                {"path": "pkg/mod.py", "content": "x = 1\n"},
                {"path": "pkg/\udc80.py", "content": ""},
            ]
        }
    )
    bad_content = json.dumps({"files": [{"path": "pkg/mod.py", "content": "x = '\ud800'\n"}]})
    tape = cassette(
        tmp_path, [line("p1", 1, bad_path), line("p1", 2, bad_content), line("p1", 3, GOOD)]
    )
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 0, summary["stderr"]
    history = attempts(sqlite_url, "p1")
    assert [(a["outcome"], a["stop_reason"]) for a in history] == [
        ("FAILED", "unsafe_path"),
        ("FAILED", "malformed_output"),
        ("COMPLETE", "completed"),
    ]
    assert "lone surrogate" in history[0]["feedback"] and "lone surrogate" in history[1]["feedback"]
    assert branch_files(tmp_path / "ws") == ["pkg/mod.py"]
    shown = cli("run", "phase", "exec-run", "p1", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]


def test_a_nul_byte_in_the_summary_does_not_fail_the_commit(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The summary goes into the commit message, an argument of ``git commit-tree``: a NUL
    in it failed a correct answer as ``executor_error: ValueError: embedded null byte``."""
    env = _setup(tmp_path, sqlite_url)
    answer = json.dumps({"files": json.loads(GOOD)["files"], "summary": "adds\x00answer"})
    summary = _drain_phase(tmp_path, env, cassette(tmp_path, [line("p1", 1, answer)]))
    assert summary["exit_code"] == 0, summary["stderr"]
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == ["completed"]
    assert (on_branch(tmp_path / "ws", "pkg/mod.py") or "").endswith("return 42\n")


def test_a_summary_longer_than_one_argument_may_be_is_committed(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The commit message was an argument of ``git commit-tree``: a summary over 128 KiB
    (the kernel's limit for one argument) failed the correct answer with E2BIG as an
    ``executor_error`` on every attempt, telling the Builder nothing."""
    env = _setup(tmp_path, sqlite_url)
    long = "This change adds answer(). " * 6000  # 156 000 characters
    answer = json.dumps({"files": json.loads(GOOD)["files"], "summary": long})
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    summary = _drain_phase(tmp_path, env, tape, "--auditor", "off")
    assert summary["exit_code"] == 0, str(summary["stderr"])[-2000:]
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == ["completed"]
    message = git("log", "-1", "--format=%B", "autopack/exec-run", cwd=tmp_path / "ws")
    assert long.strip() in message and "Autopack-Phase: p1" in message


def test_a_summarys_terminal_controls_and_excess_are_not_committed(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The summary went into the commit message as it came: ``ESC ] 0 ;`` and ``ESC [ 2 J``
    in it retitled and erased the terminal of whoever ran ``git log`` on the run's branch,
    and a summary of megabytes made a commit of megabytes (only files were bounded). The
    message holds it no larger than a file may be, each control character spelled out."""
    env = _setup(tmp_path, sqlite_url)
    said = "adds answer()\x1b]0;pwned\x07\x1b[2J\r\n" + "x" * (1024 * 1024)
    answer = json.dumps({"files": json.loads(GOOD)["files"], "summary": said})
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    summary = _drain_phase(tmp_path, env, tape, "--auditor", "off")
    assert summary["exit_code"] == 0, str(summary["stderr"])[-2000:]
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == ["completed"]
    message = git("log", "-1", "--format=%B", "autopack/exec-run", cwd=tmp_path / "ws")
    assert "adds answer()\\x1b]0;pwned\\x07\\x1b[2J\n" in message
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", message)
    assert 256 * 1024 - 1000 < len(message) < 256 * 1024 + 1000
    assert "Autopack-Phase: p1" in message


def test_an_answer_of_thousands_of_files_is_committed(tmp_path: Path, sqlite_url: str) -> None:
    """Every path was an argument of one ``git add``: past the kernel's ARG_MAX (about
    2 MB of paths, well inside the answer size limit) the commit failed E2BIG as an
    executor_error on every attempt."""
    env = _setup(tmp_path, sqlite_url)
    deep = "pkg/" + "d" * 250 + "/" + "e" * 250
    many = [{"path": f"{deep}/{i}.txt", "content": ""} for i in range(5000)]
    answer = json.dumps({"files": [*json.loads(GOOD)["files"], *many], "summary": "many"})
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    summary = _drain_phase(tmp_path, env, tape, "--auditor", "off")
    assert summary["exit_code"] == 0, str(summary["stderr"])[-2000:]
    assert len(branch_files(tmp_path / "ws")) == 5001


def test_an_answer_whose_paths_overflow_the_result_is_feedback(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Only the number of an answer's paths was bounded: 1,500 empty files at paths of
    3,800 bytes (each ``é`` six bytes as JSON) made the attempt's result, which lists
    them, larger than the API takes. Refused after the commit was made, the drain stopped
    with the phase handed back, and the next drain did the same. It is
    ``answer_too_large`` feedback, before anything is written."""
    env = _setup(tmp_path, sqlite_url)
    deep = "pkg/" + "/".join(["é" * 126] * 15)
    many = [{"path": f"{deep}/{i}", "content": ""} for i in range(1500)]
    answer = {"files": [*json.loads(GOOD)["files"], *many]}
    long_paths = line("p1", 1, json.dumps(answer), output_tokens=2000)
    tape = cassette(tmp_path, [long_paths, line("p1", 2, GOOD)])
    summary = _drain_phase(tmp_path, env, tape, "--auditor", "off")
    assert summary["exit_code"] == 0, str(summary["stderr"])[-2000:]
    first, second = attempts(sqlite_url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "answer_too_large")
    assert "shorter paths" in first["feedback"]
    assert second["stop_reason"] == "completed"
    assert branch_files(tmp_path / "ws") == ["pkg/mod.py"]


def test_a_change_too_large_to_hold_for_approval_is_feedback(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A deletion needs approval, and the approval request holds the whole change as JSON,
    where a control character takes six bytes: files within the answer's limit (4 MB of
    UTF-8) made a request over the API's 16 MiB, refused, and the attempt ended
    ``executor_error`` with no word to the Builder. It is ``answer_too_large`` feedback."""
    env = _setup(tmp_path, sqlite_url)
    bulky = [{"path": f"pkg/c{i}.txt", "content": "\x01" * 250_000} for i in range(15)]
    answer = {"files": [*json.loads(GOOD)["files"], *bulky], "delete": ["pkg/old.py"]}
    bulky_answer = line("p1", 1, json.dumps(answer), output_tokens=2000)  # not 4 M: the budget
    tape = cassette(tmp_path, [bulky_answer, line("p1", 2, GOOD)])
    summary = _drain_phase(tmp_path, env, tape, "--auditor", "off")
    assert summary["exit_code"] == 0, str(summary["stderr"])[-2000:]
    first, second = attempts(sqlite_url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "answer_too_large")
    assert "approval" in first["feedback"] and "delete pkg/old.py" in first["feedback"]
    assert second["stop_reason"] == "completed"
    assert branch_files(tmp_path / "ws") == ["pkg/mod.py"]


def test_an_approved_change_is_checked_again_where_it_is_applied(
    tmp_path: Path, sqlite_url: str
) -> None:
    """An approved change is applied on the branch as it is after the approval, which may
    hold a symlink its plan never saw: applied unchecked, the write went through it, out
    of the workspace."""
    env = _setup(tmp_path, sqlite_url)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
    outside = tmp_path / "outside"
    outside.mkdir()
    answer = json.dumps(
        {
            "files": [
                {"path": "pkg/mod.py", "content": "x = 1\n"},
                {"path": "pkg/keep.py", "content": "KEEP = 2\n"},  # needs the approval
                {"path": "pkg/gen/out.py", "content": "owned = True\n"},
            ]
        }
    )
    waiting = drain_process(
        *_phase_args(tmp_path, cassette(tmp_path, [line("p1", 1, answer)])), env=env, cwd=tmp_path
    )
    deadline = time.monotonic() + 60
    while phase_row(sqlite_url, "p1")["state"] != "AWAITING_APPROVAL":
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    # meanwhile the run's branch gets pkg/gen as a symlink leading out of the workspace
    git("checkout", "-q", "autopack/exec-run", cwd=ws)
    (ws / "pkg/gen").symlink_to(outside)
    git("add", "pkg/gen", cwd=ws)
    git("commit", "-qm", "a symlink", cwd=ws)
    git("checkout", "-q", "main", cwd=ws)
    [approval] = json.loads(cli("approvals", "list", "--json", cwd=tmp_path, env=env).stdout)[
        "items"
    ]
    decided = cli("approvals", "approve", str(approval["id"]), cwd=tmp_path, env=env)
    assert decided.returncode == 0, decided.stderr
    waiting.communicate(timeout=120)
    assert not (outside / "out.py").exists()
    assert attempts(sqlite_url, "p1")[1]["stop_reason"] == "unsafe_path"


def test_truncation_escalates_the_budget_for_the_retry(tmp_path: Path, sqlite_url: str) -> None:
    # Continuation off: a truncated answer fails its attempt (tests/test_continuation_drain.py
    # covers continuing it instead).
    env = {**_setup(tmp_path, sqlite_url), "AUTOPACK_MAX_CONTINUATIONS": "0"}
    tape = cassette(
        tmp_path,
        [
            line(
                "p1",
                1,
                '{"files": [{"path": "pkg/mod.py", "content": "def ans',
                stop_reason="max_tokens",
                output_tokens=4000,
            ),
            line("p1", 2, GOOD),
        ],
    )
    summary = _drain_phase(tmp_path, env, tape, "--escalation-factor", "2")
    assert summary["exit_code"] == 0, summary["stderr"]
    first, second = attempts(sqlite_url, "p1")
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "truncated")
    assert second["max_tokens"] == math.ceil(first["max_tokens"] * 2)
    [escalation] = rows(sqlite_url, "SELECT * FROM token_budget_escalation_events")
    assert (escalation["attempt"], escalation["old_budget"], escalation["new_budget"]) == (
        2,
        first["max_tokens"],
        second["max_tokens"],
    )
    [truncated] = rows(sqlite_url, "SELECT * FROM token_estimation_v2_events WHERE attempt = 1")
    assert truncated["truncated"] and not truncated["success"]
    assert truncated["smape_percent"] is None  # a lower bound is never scored as exact


def test_failing_check_feeds_its_output_back(tmp_path: Path, sqlite_url: str) -> None:
    env = _setup(tmp_path, sqlite_url, checks=[CHECK])
    wrong = files(mod_py="def answer() -> int:\n    return 41\n")
    tape = cassette(tmp_path, [line("p1", 1, wrong), line("p1", 2, GOOD)])
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 0, summary["stderr"]
    first, second = attempts(sqlite_url, "p1")
    assert first["stop_reason"] == "checks_failed"
    assert "AssertionError" in first["feedback"]
    assert first["check_results"][0]["passed"] is False
    assert second["check_results"][0]["passed"] is True


def test_exhausted_attempts_fail_the_phase_with_the_last_reason(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = _setup(tmp_path, sqlite_url, max_attempts=2)
    tape = cassette(tmp_path, [line("p1", 1, "not json at all"), line("p1", 2, '{"files": []}')])
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 1
    assert summary["phase_states"] == {"p1": "FAILED"}
    row = phase_row(sqlite_url, "p1")
    assert row["state"] == "FAILED" and "empty_files" in row["last_failure_reason"]
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == [
        "malformed_output",
        "empty_files",
    ]
    assert on_branch(tmp_path / "ws", "pkg/mod.py") is None
    outcomes = rows(sqlite_url, "SELECT phase_outcome FROM token_estimation_v2_events")
    assert outcomes == [{"phase_outcome": "FAILED"}, {"phase_outcome": "FAILED"}]


def test_phase_token_cap_stops_before_the_next_llm_call(tmp_path: Path, sqlite_url: str) -> None:
    env = _setup(tmp_path, sqlite_url)
    tape = cassette(tmp_path, [line("p1", 1, '{"files": []}'), line("p1", 2, GOOD)])
    summary = _drain_phase(tmp_path, env, tape, "--phase-token-cap", "100")
    assert summary["exit_code"] == 1
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == [
        "empty_files",
        "phase_token_cap",
    ]
    assert phase_row(sqlite_url, "p1")["state"] == "FAILED"
    # The cap overshoots by at most the one call that crossed it.
    assert len(rows(sqlite_url, "SELECT id FROM llm_usage_events")) == 1


def test_run_token_budget_ends_the_run_and_skips_the_rest(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(sqlite_url)
    definition = [phase("p1", ["pkg/mod.py"]), phase("p2", ["pkg/other.py"])]
    path = run_file(tmp_path, definition, budgets={"token_cap": 100})
    create_run(path, env, tmp_path)
    tape = cassette(tmp_path, [line("p1", 1, GOOD), line("p2", 1, files(other_py="X = 1\n"))])
    result = drain(
        "run",
        *("--run-id", "exec-run", "--auditor", "rules", "--cassette", str(tape)),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["run_state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert summary["phase_states"] == {"p1": "COMPLETE", "p2": "SKIPPED"}
    run = rows(sqlite_url, "SELECT failure_reason FROM runs")[0]
    assert "token budget exhausted" in run["failure_reason"]
    assert len(rows(sqlite_url, "SELECT id FROM llm_usage_events")) == 1


def test_unmatched_replay_request_is_a_clear_failure(tmp_path: Path, sqlite_url: str) -> None:
    env = _setup(tmp_path, sqlite_url, max_attempts=1)
    tape = cassette(tmp_path, [line("other-phase", 1, GOOD)])
    summary = _drain_phase(tmp_path, env, tape)
    assert summary["exit_code"] == 1
    [only] = attempts(sqlite_url, "p1")
    assert only["stop_reason"] == "llm_error"
    assert "phase 'p1'" in only["error"] and "(attempt 1)" in only["error"]
    [usage] = rows(sqlite_url, "SELECT success, error_class FROM llm_usage_events")
    assert usage == {"success": False, "error_class": "CassetteMiss"}


def test_lost_lease_mid_phase_stops_and_writes_nothing(tmp_path: Path, sqlite_url: str) -> None:
    # The check runs until the cancel has landed: a fixed sleep (4 s, then 10 s) raced
    # `run cancel`'s CLI start-up on a loaded 2-core machine.
    released = tmp_path / "cancelled"
    waits = f"import pathlib, time; p = pathlib.Path(r'{released}'); "
    waits += "[time.sleep(0.05) for _ in iter(lambda: p.exists(), True)]"
    env = _setup(tmp_path, sqlite_url, checks=[f'python -c "{waits}"'])
    tape = cassette(tmp_path, [line("p1", 1, GOOD)])
    process = drain_process(
        *_phase_args(tmp_path, tape),
        "--lease-seconds",
        "5",
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while phase_row(sqlite_url, "p1")["state"] != "CI_RUNNING":
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    cancelled = cli("run", "cancel", "exec-run", cwd=tmp_path, env=env)
    released.touch()
    assert cancelled.returncode == 0, cancelled.stderr
    _, stderr = process.communicate(timeout=60)
    assert "lease_lost" in stderr
    assert on_branch(tmp_path / "ws", "pkg/mod.py") is None
    assert phase_row(sqlite_url, "p1")["state"] == "SKIPPED"
    assert [a["outcome"] for a in attempts(sqlite_url, "p1")] != ["COMPLETE"]


def test_overwriting_a_non_deliverable_waits_for_approval(tmp_path: Path, sqlite_url: str) -> None:
    env = _setup(tmp_path, sqlite_url)
    repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
    answer = files(mod_py="x = 1\n", keep_py="KEEP = 2\n")
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    waiting = drain_process(
        *_phase_args(tmp_path, tape),
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while phase_row(sqlite_url, "p1")["state"] != "AWAITING_APPROVAL":
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    assert on_branch(tmp_path / "ws", "pkg/keep.py") == "KEEP = 1\n"  # nothing applied yet
    [approval] = json.loads(cli("approvals", "list", "--json", cwd=tmp_path, env=env).stdout)[
        "items"
    ]
    assert "overwrite existing non-deliverable pkg/keep.py" in approval["reason"]
    decided = cli(
        "approvals", "approve", str(approval["id"]), "--responder", "alice", cwd=tmp_path, env=env
    )
    assert decided.returncode == 0, decided.stderr
    _, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    assert on_branch(tmp_path / "ws", "pkg/keep.py") == "KEEP = 2\n"
    assert [a["outcome"] for a in attempts(sqlite_url, "p1")] == ["AWAITING_APPROVAL", "COMPLETE"]


def test_an_approved_change_does_not_undo_what_another_phase_completed_meanwhile(
    tmp_path: Path, sqlite_url: str
) -> None:
    """An approved change holds whole files planned on the head of its time. Written over
    the head after the approval, where p2 had completed an edit of the same file, it
    deleted p2's line; applied where it was planned and rebased, both changes stay."""
    env = env_for(sqlite_url)
    phases = [phase("p1", ["pkg/mod.py"]), phase("p2", ["pkg/keep.py"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    ws = repository(tmp_path / "ws", {"pkg/keep.py": "a = 1\nb = 2\nc = 3\n"})
    p1 = files(mod_py="x = 1\n", keep_py="a = 10\nb = 2\nc = 3\n")  # keep.py: approval
    p2 = files(keep_py="a = 1\nb = 2\nc = 3\nd = 4\n")
    tape = cassette(tmp_path, [line("p1", 1, p1), line("p2", 1, p2)])
    waiting = drain_process(*_phase_args(tmp_path, tape), env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while phase_row(sqlite_url, "p1")["state"] != "AWAITING_APPROVAL":
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    p2_args = [a if a != "p1" else "p2" for a in _phase_args(tmp_path, tape)]
    assert drain(*p2_args, env=env, cwd=tmp_path).returncode == 0
    assert on_branch(ws, "pkg/keep.py") == "a = 1\nb = 2\nc = 3\nd = 4\n"
    assert cli("approvals", "approve", "1", cwd=tmp_path, env=env).returncode == 0
    _, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    assert on_branch(ws, "pkg/keep.py") == "a = 10\nb = 2\nc = 3\nd = 4\n"
    assert on_branch(ws, "pkg/mod.py") == "x = 1\n"


def test_an_answer_overwriting_hundreds_of_files_waits_for_approval(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The approval's reason lists every path; past the request's 10 000 characters it was
    refused before it was sent and the attempt ended as an ``executor_error``."""
    env = _setup(tmp_path, sqlite_url, max_attempts=1)
    existing = {f"pkg/existing_module_{i:04d}.py": "old = 1\n" for i in range(300)}
    repository(tmp_path / "ws", existing)
    written = [{"path": "pkg/mod.py", "content": "x = 1\n"}]
    written += [{"path": path, "content": "new = 1\n"} for path in existing]
    tape = cassette(tmp_path, [line("p1", 1, json.dumps({"files": written, "summary": "all"}))])
    waiting = drain_process(*_phase_args(tmp_path, tape), env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while phase_row(sqlite_url, "p1")["state"] not in ("AWAITING_APPROVAL", "FAILED"):
        assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
        time.sleep(0.05)
    waiting.kill()
    waiting.communicate()
    assert [a["stop_reason"] for a in attempts(sqlite_url, "p1")] == ["approval_requested"]
    [approval] = rows(sqlite_url, "SELECT reason, context FROM approval_requests")
    assert len(approval["reason"]) <= 10_000 and approval["reason"].endswith(
        "listed in the change)"
    )
    assert len(json.loads(approval["context"])["change"]["needs_approval"]) == 300


def test_a_drain_whose_approval_expired_says_so_not_that_it_asked(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The summary's last stop reason was the attempt's own (``approval_requested``) while
    the phase had FAILED ``approval_expired``: the drain ended on a reason that said it was
    still waiting for a decision nobody could give any more."""
    env = {**_setup(tmp_path, sqlite_url), "AUTOPACK_MAINTENANCE_INTERVAL_SECONDS": "0.2"}
    repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
    tape = cassette(tmp_path, [line("p1", 1, files(mod_py="x = 1\n", keep_py="KEEP = 2\n"))])
    result = cli_drain(
        *_phase_args(tmp_path, tape), "--approval-timeout", "1", env=env, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert phase_row(sqlite_url, "p1")["state"] == "FAILED"
    [row] = [line for line in result.stdout.splitlines() if line.startswith("│ p1 ")]
    assert "approval_expired" in row and "approval_requested" not in row, result.stdout


def test_run_show_and_the_drain_name_the_check_that_failed_the_phase(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A phase FAILED by its checks read "checks_failed: These checks failed after your
    files were written; fix the code or tests so they pass:" in ``run show``, the drain's
    progress line and its summary: the first line of the Builder's feedback, written for
    the LLM, naming no check."""
    env = _setup(tmp_path, sqlite_url, checks=[CHECK], max_attempts=1)
    wrong = files(mod_py="def answer() -> int:\n    return 41\n")
    tape = cassette(tmp_path, [line("p1", 1, wrong)])
    wide = {**env, "COLUMNS": "300"}
    drained = cli_drain(*_phase_args(tmp_path, tape), env=wide, cwd=tmp_path)
    assert drained.returncode == 1, drained.stderr[-2000:]
    reason = f"checks_failed: check failed (exit 1): {CHECK}"
    assert f"p1 attempt 1: checks_failed — check failed (exit 1): {CHECK}" in drained.stderr
    [row] = [line for line in drained.stdout.splitlines() if line.startswith("│ p1 ")]
    assert reason in row, drained.stdout
    assert phase_row(sqlite_url, "p1")["last_failure_reason"] == reason
    shown = cli("run", "show", "exec-run", cwd=tmp_path, env=wide)
    assert reason in shown.stdout, shown.stdout


def test_a_phase_another_drain_completed_says_so_after_this_drains_failure(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A drain whose only attempt of p1 failed its checks, and which then worked on p2
    while another drain completed p1, printed p1 COMPLETE beside "checks_failed": the
    reason read as what ended the phase, and nothing said who completed it."""
    started, go = tmp_path / "p2-started", tmp_path / "go"
    wait = tmp_path / "wait.py"
    wait.write_text(
        "import pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )
    env = {**env_for(sqlite_url), "COLUMNS": "300"}
    phases = [
        phase("p1", ["pkg/mod.py"], checks=[CHECK]),
        phase("p2", ["pkg/other.py"], checks=[f"python {wait}"]),
    ]
    # p1's retry waits 2 s: the first drain takes p2 meanwhile, and the second p1.
    create_run(run_file(tmp_path, phases, policy={"retry_backoff_seconds": 2.0}), env, tmp_path)
    repository(tmp_path / "ws", {"pkg/keep.py": "KEEP = 1\n"})
    wrong = files(mod_py="def answer() -> int:\n    return 41\n")
    tape = cassette(
        tmp_path,
        [line("p1", 1, wrong), line("p1", 2, GOOD), line("p2", 1, files(other_py="y = 2\n"))],
    )
    common = ("--cassette", str(tape), "--auditor", "rules", "--workspace", str(tmp_path / "ws"))
    first = drain_process("run", "--run-id", "exec-run", *common, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = cli_drain(
        "phase", "--run-id", "exec-run", "--phase-id", "p1", *common, env=env, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr[-2000:]
    go.touch()
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    [row] = [text for text in stdout.splitlines() if text.startswith("│ p1 ")]
    assert "COMPLETE" in row and "│ 1 " in row, stdout
    assert "checks_failed" in row and "then done by another drain" in row, stdout
    [row] = [text for text in stdout.splitlines() if text.startswith("│ p2 ")]
    assert "then" not in row, stdout


def test_draining_a_phase_that_cannot_run_yet_is_refused_before_anything_starts(
    tmp_path: Path, sqlite_url: str
) -> None:
    """``drain phase`` of a phase whose dependency is not complete spawned a server, then
    ended with exit 1, which says a phase failed: nothing had, nothing could run."""
    env = env_for(sqlite_url)
    phases = [phase("p1", ["pkg/mod.py"]), phase("p2", ["pkg/other.py"], depends_on=["p1"])]
    create_run(run_file(tmp_path, phases), env, tmp_path)
    tape = cassette(tmp_path, [line("p2", 1, files(other_py="y = 2\n"))])
    args = ("--run-id", "exec-run", "--phase-id", "p2", "--cassette", str(tape))
    refused = cli_drain("phase", *args, "--auditor", "rules", env=env, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    said = " ".join(refused.stderr.split())
    assert "phase p2 cannot run yet: depends on phases not complete: p1" in said, said
    assert "autopack drain run --run-id exec-run" in said
    assert "api_server_spawned" not in refused.stderr and "Traceback" not in refused.stderr
    assert phase_row(sqlite_url, "p2")["attempts"] == 0
