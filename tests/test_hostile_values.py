"""Hostile values that parsers turn into exceptions of their own: through a real server
and the real CLI, each is a 4xx or exit 2 that says what is wrong, never a traceback."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import empty_sqlite
from tests.executor_support import (
    RUN_ID,
    attempts,
    cassette,
    create_run,
    drain,
    env_for,
    files,
    line,
    phase,
    run_file,
)
from tests.support import Server, clean_env, cli, table_names

RUN_PHASE = {"phase_id": "p", "name": "p"}
HUGE = "9" * 5000
"""More digits than Python converts to an int (4300): ``int()`` raises ``ValueError``."""

HUGE_JSON = '{"run_id": "r", "budgets": {"token_cap": ' + HUGE + '}, "tiers": []}'
RUN_YAML = (
    "run_id: {run_id}\ntiers:\n- tier_id: T\n  name: t\n  phases:\n  - phase_id: p\n    name: p\n"
)


def test_a_number_of_5000_digits_in_a_body_is_a_400_saying_so(tmp_path: Path) -> None:
    json_type = {"content-type": "application/json"}
    with Server(clean_env(DATABASE_URL=empty_sqlite(tmp_path / "a.db")), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for path, body in [
                ("/runs", HUGE_JSON),
                ("/claims", '{"worker_id": "w", "lease_seconds": -' + HUGE + "}"),
            ]:
                answer = client.post(path, content=body.encode(), headers=json_type)
                assert answer.status_code == 400, answer.text
                assert "a number has more than 4300 digits" in answer.json()["detail"], answer.text
            assert client.get("/runs").json()["items"] == []
        assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        (
            "huge.json",
            HUGE_JSON,
            "not valid JSON: a number has more than 4300 digits",
        ),
        (
            "huge.yaml",
            RUN_YAML.format(run_id="r") + f"budgets:\n  token_cap: {HUGE}\n",
            "at line 9 column 14: this value cannot be read: a number has more than 4300 digits",
        ),
        (
            "huge",  # no suffix: JSON first, then YAML
            RUN_YAML.format(run_id="r") + f"budgets:\n  token_cap: {HUGE}\n",
            "a number has more than 4300 digits",
        ),
        (
            "date.yaml",
            RUN_YAML.format(run_id="2026-02-30"),
            "at line 1 column 9: '2026-02-30' cannot be read: day is out of range for month",
        ),
        (
            "typed.yaml",
            RUN_YAML.format(run_id="r") + "goal: !!int abc\n",
            "at line 8 column 7: 'abc' cannot be read",
        ),
        (
            "control.yaml",
            RUN_YAML.format(run_id="r") + "goal: a\x00b\n",
            "at line 8 column 8: character '\\x00' is not allowed",
        ),
    ],
    ids=["json-digits", "yaml-digits", "no-suffix-digits", "yaml-date", "yaml-tag", "yaml-nul"],
)
def test_a_value_yaml_or_json_cannot_convert_is_exit_2_naming_its_place(
    tmp_path: Path, name: str, text: str, said: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}")
    result = cli("run", "create", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert said in result.stderr, result.stderr


DUPLICATED = [
    # the run a reader sees first is "a"; JSON's last-wins created "b"
    ("/runs", '{"run_id": "a", "run_id": "b", "tiers": %s}', "'run_id'"),
    # a second checks list inside a phase replaced the one a reviewer read
    (
        "/runs",
        '{"run_id": "c", "tiers": [{"tier_id": "T", "name": "t", "phases": [{"phase_id": "p",'
        ' "name": "p", "checks": ["pytest"], "checks": ["touch pwned"]}]}]}',
        "'checks'",
    ),
    ("/claims", '{"worker_id": "w", "worker_id": "v", "run_id": "r1"}', "'worker_id'"),
    ("/telemetry/llm-usage", '{"run_id": "r1", "run_id": "r2"}', "'run_id'"),
]


def test_a_key_given_twice_in_a_body_is_a_422_naming_it(database_url: str, tmp_path: Path) -> None:
    """As a run file with a key given twice is refused (exit 2), so is such a body: nothing
    is created from it, and the same body without the duplicate is accepted."""
    tiers = '[{"tier_id": "T", "name": "t", "phases": [{"phase_id": "p", "name": "p"}]}]'
    json_type = {"content-type": "application/json"}
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for path, body, key in DUPLICATED:
                content = body.replace("%s", tiers).encode()
                answer = client.post(path, content=content, headers=json_type)
                assert answer.status_code == 422, (path, answer.status_code, answer.text)
                said = answer.json()
                assert said["error"] == "InvalidInput", said
                assert f"key {key} appears twice in one object" in said["detail"], said
                assert [error["field"] for error in said["errors"]] == ["body"], said
            assert client.get("/runs").json()["items"] == []
            single = '{"run_id": "a", "tiers": %s}'.replace("%s", tiers)
            assert client.post("/runs", content=single, headers=json_type).status_code == 201
        assert "Traceback" not in server.output()


def test_a_sqlite_file_locked_past_the_busy_timeout_is_a_503_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Another process holding the SQLite write lock (a ``sqlite3`` shell inside a
    transaction, a backup) longer than the busy timeout made every request a bare 500:
    now a 503 the client retries, and once the lock is gone the same request succeeds."""
    url = empty_sqlite(tmp_path / "a.db")
    run = {"run_id": "r", "tiers": [{"tier_id": "T", "name": "t", "phases": [RUN_PHASE]}]}
    with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.post("/runs", json={**run, "run_id": "before"}).status_code == 201
            holder = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                locked = client.post("/runs", json=run)  # answers after the busy timeout
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert locked.status_code == 503, locked.text
            said = locked.json()
            assert said["error"] == "DatabaseUnavailable" and "locked" in said["detail"], said
            assert client.post("/runs", json=run).status_code == 201
            listed = [item["run_id"] for item in client.get("/runs").json()["items"]]
            assert sorted(listed) == ["before", "r"]
        assert "request_failed" not in server.output()


def test_a_nul_in_an_attempts_details_breaks_no_later_claim_or_result(
    database_url: str, tmp_path: Path
) -> None:
    """JSON may hold a NUL, so a result's ``details`` may; PostgreSQL then refused to read
    any key of that attempt's details as text, and counting the stops a phase may have
    caused did that: the phase's next stop in its checks was a 500, and so was every
    claim on the server once its lease expired (the reclaim runs before each claim)."""
    run = {
        "run_id": "r",
        "policy": {"retry_backoff_seconds": 0},
        "tiers": [{"tier_id": "T", "name": "t", "phases": [{**RUN_PHASE, "max_attempts": 5}]}],
    }
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/runs", json=run).status_code == 201

            def claim(worker: str) -> dict[str, Any]:
                answer = client.post("/claims", json={"worker_id": worker, "lease_seconds": 5})
                assert answer.status_code == 200, answer.text
                claimed: dict[str, Any] = answer.json()
                return claimed

            def result(token: str, stop_reason: str, details: dict[str, str]) -> None:
                body = {"lease_token": token, "outcome": "FAILED", "stop_reason": stop_reason}
                answer = client.post("/runs/r/phases/p/result", json={**body, "details": details})
                assert answer.status_code == 200, answer.text

            result(claim("w")["lease_token"], "checks_failed", {"log": "a\x00b"})
            token = claim("w")["lease_token"]
            beat = {"lease_token": token, "state": "CI_RUNNING"}
            assert client.post("/runs/r/phases/p/heartbeat", json=beat).status_code == 200
            result(token, "interrupted", {})  # stopped in its checks: are such stops spent?
            expiring = claim("w")
            time.sleep(5.5)  # the lease expires: the next claim reclaims it first
            assert claim("v")["attempt"] == expiring["attempt"] + 1
            history = client.get("/runs/r/phases/p").json()["history"]
            assert history[0]["details"] == {"log": "a\x00b"}  # stored as it was sent
            assert [a["outcome"] for a in history[1:]] == ["FAILED", "LOST", "EXECUTING"]
        assert "request_failed" not in server.output()


def test_an_inherited_parent_pid_neither_stops_a_command_nor_passes_unchecked(
    tmp_path: Path,
) -> None:
    """``AUTOPACK_PARENT_PID`` is for the servers a drain spawns. Left in a shell's
    environment (any pid but the command's parent), the server a command runs in its own
    process watched it and sent the command SIGTERM: exit 143 with no word said. A value
    that is no pid at all is refused naming the setting."""
    url = empty_sqlite(tmp_path / "a.db")
    assert cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=url)).returncode == 0
    listed = cli(
        "run", "list", cwd=tmp_path, env=clean_env(DATABASE_URL=url, AUTOPACK_PARENT_PID="1")
    )
    assert listed.returncode == 0, (listed.returncode, listed.stderr)
    assert "0 of 0 run(s)" in listed.stdout, listed.stdout
    for value in ("-1", str(2**70)):
        env = clean_env(DATABASE_URL=url, AUTOPACK_PARENT_PID=value)
        refused = cli("run", "list", cwd=tmp_path, env=env)
        assert refused.returncode == 2, (value, refused.returncode, refused.stderr)
        assert f"AUTOPACK_PARENT_PID='{value}'" in refused.stderr, refused.stderr


def test_a_builder_answer_with_a_number_of_5000_digits_is_malformed_output(tmp_path: Path) -> None:
    """The model's answer is input too: its ``ValueError`` failed the attempt as the
    executor's own fault (``executor_error``) with no word to the model; now it is the
    model's ``malformed_output`` with feedback, and the next attempt completes."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    huge = '{"files": [{"path": "pkg/mod.py", "content": "x = 1\\n"}], "n": ' + HUGE + "}"
    good = files(mod_py="def answer() -> int:\n    return 42\n")
    tape = cassette(tmp_path, [line("p1", 1, huge), line("p1", 2, good)])
    done = drain(
        *("phase", "--run-id", RUN_ID, "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    first, second = attempts(url, "p1")
    assert first["stop_reason"] == "malformed_output", first
    assert "a number has more than 4300 digits" in first["feedback"], first
    assert second["outcome"] == "COMPLETE", second


def test_another_applications_database_is_left_as_it_is(database_url: str, tmp_path: Path) -> None:
    """DATABASE_URL naming another application's database (the wrong project's, a typo'd
    file): on SQLite every command died with a KeyError traceback; on PostgreSQL a mere
    ``run list`` added Autopack's tables to it. Now each command is exit 2 naming its
    tables and leaves it untouched; ``db init``, asked for by name, adds them."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
        connection.execute(text("INSERT INTO users VALUES (1, 'alice')"))
    engine.dispose()
    env = clean_env(DATABASE_URL=database_url)
    for command in (["run", "list"], ["run", "seed"], ["approvals", "list"]):
        refused = cli(*command, cwd=tmp_path, env=env)
        assert refused.returncode == 2, (command, refused.returncode, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert "is not an Autopack database: it holds other tables (users)" in refused.stderr
        assert "autopack db init" in refused.stderr
        assert table_names(database_url) == {"users"}, command
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    assert cli("run", "list", cwd=tmp_path, env=env).returncode == 0
    engine = create_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM users")).scalars().all() == ["alice"]
    engine.dispose()


def test_a_sqlite_url_naming_a_directory_says_so(tmp_path: Path) -> None:
    """It said the "file" had 2 hard links (a directory's link count) and told the user to
    remove the other links."""
    (tmp_path / "data").mkdir()
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'data'}")
    for command in (["run", "list"], ["db", "init"]):
        refused = cli(*command, cwd=tmp_path, env=env)
        assert refused.returncode == 2, (command, refused.stderr)
        assert f"{tmp_path / 'data'} is a directory, not a file" in refused.stderr
        assert "hard links" not in refused.stderr
    assert list((tmp_path / "data").iterdir()) == []


def test_an_api_url_with_a_port_no_server_can_have_is_refused_at_once(tmp_path: Path) -> None:
    """httpx takes any port number: ``:99999`` (a typo) was waited on for
    AUTOPACK_API_WAIT_SECONDS, then "no Autopack API answers"."""
    for port in ("99999", "0"):
        url = f"http://127.0.0.1:{port}"
        refused = cli("--api-url", url, "run", "list", cwd=tmp_path, env=clean_env())
        assert refused.returncode == 2, refused.stderr
        assert f"port {port} is not between 1 and 65535" in refused.stderr, refused.stderr
        assert "no Autopack API answers" not in refused.stderr


def test_a_run_and_phase_with_ids_of_the_longest_allowed_length_drain(tmp_path: Path) -> None:
    """Ids of 200 characters are valid, but a result is posted under the Idempotency-Key
    ``RUN:PHASE:ATTEMPT`` (403 characters here) and the server took at most 300: every
    post was a 422, the drain stopped (exit 2) and the phase could never complete."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    run_id, phase_id = "r" * 199 + "Z", "p" * 199 + "Z"
    spec = [phase(phase_id, ["pkg/mod.py"], checks=["true"])]
    create_run(run_file(tmp_path, spec, run_id=run_id), env, tmp_path)
    good = files(mod_py="def answer() -> int:\n    return 42\n")
    tape = cassette(tmp_path, [line(phase_id, 1, good, run_id=run_id)])
    done = drain(
        *("run", "--run-id", run_id, "--cassette", str(tape), "--auditor", "rules"),
        *("--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, phase_id, run_id=run_id)
    assert (attempt["outcome"], attempt["stop_reason"]) == ("COMPLETE", "completed")


def test_a_result_without_a_key_fits_whatever_the_ids_length(
    database_url: str, tmp_path: Path
) -> None:
    """A result posted without an Idempotency-Key was stored under ``RUN:PHASE:N``: with
    ids of the longest allowed length that was longer than its column, a 500 on
    PostgreSQL. It is applied once, and a retry under the key an executor uses for that
    attempt gets the stored answer."""
    run_id, phase_id = "r" * 200, "p" * 200
    phase = {"phase_id": phase_id, "name": "p"}
    run = {"run_id": run_id, "tiers": [{"tier_id": "T", "name": "t", "phases": [phase]}]}
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/runs", json=run).status_code == 201
            claimed = client.post("/claims", json={"worker_id": "w"}).json()
            path = f"/runs/{run_id}/phases/{phase_id}/result"
            body = {
                "lease_token": claimed["lease_token"],
                "outcome": "COMPLETE",
                "stop_reason": "ok",
            }
            posted = client.post(path, json=body)
            assert posted.status_code == 200, posted.text
            key = {"Idempotency-Key": f"{run_id}:{phase_id}:1"}
            again = client.post(path, json=body, headers=key)
            assert again.status_code == 200 and again.json() == posted.json(), again.text
            history = client.get(f"/runs/{run_id}/phases/{phase_id}").json()["history"]
            assert [attempt["outcome"] for attempt in history] == ["COMPLETE"]
        assert "request_failed" not in server.output()


def test_a_builder_summary_longer_than_a_result_holds_is_clipped_not_refused(
    tmp_path: Path,
) -> None:
    """A result's text is bounded now (a worker token posted megabytes a phase): the
    model's summary of 300,000 characters would have made its own executor's result a
    422, and the drain stop with the phase's work unrecorded. The executor clips it."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/mod.py"])]), env, tmp_path)
    answer = json.dumps(
        {
            "files": [{"path": "pkg/mod.py", "content": "x = 1\n"}],
            "summary": "HEAD" + "s" * 300_000 + "TAIL",
        }
    )
    tape = cassette(tmp_path, [line("p1", 1, answer)])
    done = drain(
        *("phase", "--run-id", RUN_ID, "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert attempt["outcome"] == "COMPLETE", attempt
    summary = attempt["details"]["summary"]
    assert len(summary) <= 10_000 and summary.startswith("HEAD") and summary.endswith("TAIL")
    assert "characters cut" in summary


def test_check_output_more_than_a_request_holds_is_shortened_not_refused(
    tmp_path: Path,
) -> None:
    """360 checks each ending in 4,000 emoji (twelve bytes each as the client sends them,
    escaped): the executor's own result was larger than the API reads (16 MiB), a 413;
    the phase was handed back and the drain stopped, exit 2, at every try. The executor
    shortens the tails alike (their ends kept) so the result fits."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    checks = [f"cat pkg/out.txt; echo END{i}" for i in range(360)]
    create_run(run_file(tmp_path, [phase("p1", ["pkg/out.txt"], checks=checks)]), env, tmp_path)
    answer = {"files": [{"path": "pkg/out.txt", "content": "\U0001f600" * 4000}]}
    tape = cassette(tmp_path, [line("p1", 1, json.dumps(answer))])
    done = drain(
        *("phase", "--run-id", RUN_ID, "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "off", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [attempt] = attempts(url, "p1")
    assert (attempt["outcome"], attempt["stop_reason"]) == ("COMPLETE", "completed"), attempt
    results = attempt["check_results"]
    assert [r["command"] for r in results] == checks
    assert all(
        r["passed"] and r["output_tail"].endswith(f"END{i}\n") for i, r in enumerate(results)
    )
    assert all("\U0001f600" in r["output_tail"] for r in results)
    assert len(json.dumps(results)) <= 4 * 1024 * 1024


def test_a_rules_verdict_longer_than_a_result_holds_is_shortened_not_refused(
    tmp_path: Path,
) -> None:
    """Three files of 10,000 placeholder functions each: the rules verdict named every one
    (240,000 characters), more than a result's ``audit_verdict`` holds, and the executor's
    own result was refused: the phase handed back "interrupted", the drain stopped, exit
    2, at every try. The verdict is shortened; the attempt ends ``audit_rejected``."""
    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    env = env_for(url)
    create_run(run_file(tmp_path, [phase("p1", ["pkg/a.py"], max_attempts=1)]), env, tmp_path)
    stubs = {
        f"pkg/{name}.py": "".join(f"def f{n}{i}():\n    ...\n" for i in range(10_000))
        for n, name in enumerate("abc")
    }
    answer = {"files": [{"path": p, "content": c} for p, c in stubs.items()]}
    tape = cassette(tmp_path, [line("p1", 1, json.dumps(answer))])
    done = drain(
        *("phase", "--run-id", RUN_ID, "--phase-id", "p1", "--cassette", str(tape)),
        *("--auditor", "rules", "--workspace", str(tmp_path / "ws")),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [attempt] = attempts(url, "p1")
    assert (attempt["outcome"], attempt["stop_reason"]) == ("FAILED", "audit_rejected"), attempt
    verdict = attempt["audit_verdict"]
    assert not verdict["approved"] and verdict["issues"][0].startswith("pkg/a.py has placeholder")
    assert len(json.dumps(verdict)) <= 200_000
    assert "f00, f01" in attempt["feedback"]
