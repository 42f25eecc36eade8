"""Plain bad input is a 4xx naming the field, never a 5xx (the findings, one by one).

Each case once made the server answer 500 on PostgreSQL or SQLite (a NUL byte, an integer
past INTEGER or INT64, a string longer than its VARCHAR, ``.inf`` minutes, a dependency
chain deeper than Python's recursion limit) or made a run file mean something other than
what it says (a duplicate YAML key). They run against a real server on both backends, or
through the real CLI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from autopack.bounds import MAX_BODY_BYTES, TEXT_MAX
from autopack.rundef import MAX_PHASES, parse_run_definition
from tests.conftest import empty_sqlite
from tests.support import Server, clean_env, cli

RUN = {
    "run_id": "r1",
    "tiers": [{"tier_id": "T1", "name": "t", "phases": [{"phase_id": "p1", "name": "p"}]}],
}


def _run(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(RUN))
    body.update(changes)
    return body


def _usage_event(**changes: Any) -> dict[str, Any]:
    event = {"run_id": "r1", "role": "builder", "provider": "anthropic", "model": "m"}
    return {**event, "success": True, **changes}


LOCK_TIERS = [{"tier_id": "T", "name": "t", "phases": [{"phase_id": "p.lock", "name": "p"}]}]
_RESULT: dict[str, Any] = {"lease_token": "t", "outcome": "FAILED", "stop_reason": "x"}


def _check(**changes: Any) -> dict[str, Any]:
    return {"command": "pytest", "exit_code": 1, "passed": False, **changes}


_TOO_BIG: list[tuple[dict[str, Any], str]] = [
    ({"feedback": "f" * (TEXT_MAX + 1)}, "feedback"),
    ({"error": "e" * (TEXT_MAX + 1)}, "error"),
    ({"details": {"summary": "s" * TEXT_MAX}}, "details"),
    (
        {"audit_verdict": {"mode": "llm", "approved": False, "summary": "s" * TEXT_MAX}},
        "audit_verdict",
    ),
    ({"files_written": ["a" * 4097]}, "files_written"),
    ({"check_results": [_check(output_tail="o" * 20_001)]}, "output_tail"),
    ({"check_results": [_check(exit_code=2**40)]}, "exit_code"),
    ({"check_results": [_check(duration_s=1e300)]}, "duration_s"),
]
"""Text a worker token posted by the megabyte, that every read of the phase returned."""


BAD: list[tuple[str, str, dict[str, Any], Any, str]] = [
    # method, path, query, body, the field the refusal must name
    ("GET", "/telemetry/summary", {"run_id": "a\x00b"}, None, "run_id"),
    ("POST", "/runs/r1/phases/p1/heartbeat", {}, {"lease_token": "a\x00b"}, "lease_token"),
    ("POST", "/runs", {}, _run(goal="a\x00b"), "goal"),
    ("POST", "/approvals/1099511627776/approve", {}, {"responder": "me"}, "approval_id"),
    ("POST", "/telemetry/llm-usage", {}, _usage_event(attempt=2147483648), "attempt"),
    ("POST", "/runs", {}, _run(budgets={"token_cap": 3_000_000_000}), "token_cap"),
    ("POST", "/telemetry/llm-usage", {}, _usage_event(stop_reason="x" * 60), "stop_reason"),
    ("POST", "/runs", {}, _run(policy={"approval_timeout_minutes": 1e300}), "approval_timeout"),
    # ids git refuses in the refs they name (autopack/a..b, refs/autopack/attempts/r/p.lock/1)
    ("POST", "/runs", {}, _run(run_id="a..b"), "run_id: run and phase ids name git refs"),
    ("POST", "/runs", {}, _run(run_id="x.lock"), "run_id: run and phase ids name git refs"),
    ("POST", "/runs", {}, _run(run_id="a."), "run_id: run and phase ids name git refs"),
    ("POST", "/runs", {}, _run(tiers=LOCK_TIERS), "(p.lock).phase_id: run and phase ids"),
    ("GET", "/runs", {"offset": str(2**63)}, None, "offset"),
    ("GET", "/runs", {"state": ""}, None, "state"),
    ("POST", "/claims", {}, {"worker_id": "w", "lease_seconds": "60"}, "lease_seconds"),
    ("POST", "/claims", {}, {"worker_id": "w", "claim_key": "a" * 31 + "\x00"}, "claim_key"),
    ("POST", "/claims", {}, {"worker_id": "w", "claim_key": "A" * 32}, "claim_key"),
    ("POST", "/claims", {}, {"worker_id": "w", "claim_key": 7}, "claim_key"),
    ("POST", "/runs", {}, _run(repository="/srv/x.git\n"), "repository"),
    ("POST", "/runs/r1/branch-check", {}, {"repository": "https://h/x\t"}, "repository"),
    # git's helpers that reach no repository: a command run on every executor, its fds
    ("POST", "/runs", {}, _run(repository="ext::sh -c touch% /tmp/x"), "repository: 'ext::"),
    ("POST", "/runs/r1/branch-check", {}, {"repository": "fd::5"}, "repository: 'fd::5'"),
    # branches git cannot make: every attempt failed git_error; HEAD staged deletions
    ("POST", "/runs", {}, _run(branch="a.lock/b"), "branch: not a git branch name"),
    ("POST", "/runs", {}, _run(branch="HEAD"), "branch: not a git branch name"),
    ("POST", "/runs", {}, _run(branch="y/" + "x" * 251), "branch: not a git branch name"),
    # a time without its zone, or one that is no date in UTC, reached the UTC column: 500
    ("POST", "/telemetry/llm-usage", {}, _usage_event(ts="2026-01-01T00:00:00"), "ts"),
    ("POST", "/telemetry/llm-usage", {}, _usage_event(ts="0001-01-01T00:00:00+14:00"), "ts"),
    (
        "POST",
        "/runs/r1/phases/p1/result",
        {},
        {"lease_token": "t", "outcome": "FAILED", "stop_reason": "x", "retryable": 1},
        "retryable",
    ),
    *(
        ("POST", "/runs/r1/phases/p1/result", {}, {**_RESULT, **big}, field)
        for big, field in _TOO_BIG
    ),
]


def test_bad_input_is_refused_naming_the_field(database_url: str, tmp_path: Path) -> None:
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        assert httpx.post(f"{server.url}/runs", json=RUN).status_code == 201
        for method, path, query, body, field in BAD:
            answer = httpx.request(method, server.url + path, params=query, json=body)
            assert answer.status_code == 422, (path, field, answer.status_code, answer.text)
            assert answer.json()["error"] == "InvalidInput"
            assert field in answer.text, (path, field, answer.text)
        # a body that is not JSON, or not what it claims to be: the project's shape too
        for content, kind in [(b"not json", "application/json"), (b"{}", "text/plain")]:
            answer = httpx.post(
                f"{server.url}/runs", content=content, headers={"content-type": kind}
            )
            assert answer.status_code in (400, 422) and set(answer.json()) >= {"error", "detail"}
        unknown = httpx.get(f"{server.url}/no/such/thing")
        assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"
        assert httpx.get(f"{server.url}/health").status_code == 200  # still serving
        assert "Traceback" not in server.output()


def test_a_lone_surrogate_is_refused_naming_the_field(database_url: str, tmp_path: Path) -> None:
    """``"\\udc80"`` is valid JSON but not Unicode: the 422 quoting it could not be encoded
    (a 500), and a JSON field stored it so that every later read of its row was a 500."""
    phase = {"phase_id": "p1", "name": "p", "scope": {"deliverables": ["a/\udc80.py"]}}
    result = {"lease_token": "t", "outcome": "FAILED", "stop_reason": "x"}
    bodies = [
        ("/runs", _run(goal="a\udc80b"), "goal"),
        ("/runs", _run(tiers=[{"tier_id": "T1", "name": "t", "phases": [phase]}]), "deliverables"),
        ("/telemetry/llm-usage", _usage_event(model="m\ud800"), "model"),
        ("/runs/r1/phases/p1/result", {**result, "files_written": ["a\udc80"]}, "files_written"),
        ("/runs/r1/phases/p1/result", {**result, "details": {"summary": "\udc80"}}, "summary"),
    ]
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        for path, body, field in bodies:
            answer = httpx.post(
                server.url + path,
                content=json.dumps(body).encode(),  # ASCII: \\udc80 travels as an escape
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 422, (field, answer.status_code, answer.text)
            assert field in answer.text, answer.text
        assert httpx.get(f"{server.url}/runs").json()["items"] == []


def test_inf_minutes_in_a_run_file_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "run_id: r\npolicy:\n  approval_timeout_minutes: .inf\n"
        "tiers:\n- tier_id: T\n  name: t\n  phases:\n  - phase_id: p\n    name: p\n"
    )
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}")
    result = cli("run", "create", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "approval_timeout_minutes" in result.stderr and "finite" in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "run_id: r\ntiers:\n- tier_id: T\n  name: t\n  phases:\n"
        "  - phase_id: p\n    name: p\n    checks: [pytest]\n    checks: ['touch pwned']\n"
    )
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}")
    result = cli("run", "create", str(path), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert "duplicate key 'checks'" in result.stderr
    path.with_suffix(".json").write_text('{"run_id": "r", "run_id": "s", "tiers": []}')
    result = cli("run", "create", str(path.with_suffix(".json")), cwd=tmp_path, env=env)
    assert result.returncode == 2 and "appears twice" in result.stderr


def _reverse_chain(length: int) -> dict[str, Any]:
    """p0 depends on p1, which depends on p2, …: declared in reverse order, as deep as long."""
    phases = [
        {
            "phase_id": f"p{i}",
            "name": f"p{i}",
            "depends_on": [f"p{i + 1}"] if i + 1 < length else [],
        }
        for i in range(length)
    ]
    return {"run_id": "chain", "tiers": [{"tier_id": "T", "name": "t", "phases": phases}]}


def test_a_reverse_chain_of_3000_phases_is_accepted_without_recursion(
    database_url: str, tmp_path: Path
) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)  # far below the chain's depth: recursion would fail here
    try:
        definition = parse_run_definition(_reverse_chain(3000))
    finally:
        sys.setrecursionlimit(limit)
    assert definition.phase_count() == 3000
    cyclic = _reverse_chain(3000)
    cyclic["tiers"][0]["phases"][-1]["depends_on"] = ["p0"]
    with pytest.raises(Exception, match="depends_on has a cycle"):
        parse_run_definition(cyclic)
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        created = httpx.post(f"{server.url}/runs", json=_reverse_chain(3000), timeout=120)
        assert created.status_code == 201, created.text[:500]
        claim = httpx.post(f"{server.url}/claims", json={"worker_id": "w", "run_id": "chain"})
        assert claim.status_code == 200 and claim.json()["phase_id"] == "p2999"
        too_many = _reverse_chain(MAX_PHASES + 1)
        refused = httpx.post(f"{server.url}/runs", json=too_many, timeout=120)
        assert refused.status_code == 422 and "phases" in refused.text


def test_an_empty_db_meta_is_a_schema_error_that_upgrade_repairs(
    database_url: str, tmp_path: Path
) -> None:
    env = clean_env(DATABASE_URL=database_url)
    assert cli("db", "init", cwd=tmp_path, env=env).returncode == 0
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM db_meta"))
    engine.dispose()
    refused = cli("db", "identity", cwd=tmp_path, env=env)
    assert refused.returncode == 3, refused.stderr
    assert "db_meta" in refused.stderr and "autopack db upgrade" in refused.stderr
    assert "Traceback" not in refused.stderr and "NoResultFound" not in refused.stderr
    assert cli("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    assert cli("db", "identity", cwd=tmp_path, env=env).returncode == 0


def test_the_openapi_document_declares_the_errors_it_answers(tmp_path: Path) -> None:
    url = empty_sqlite(tmp_path / "a.db")
    with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
        docs = httpx.get(f"{server.url}/docs").text
        redoc = httpx.get(f"{server.url}/redoc").text
        assets = [
            httpx.get(f"{server.url}/docs/assets/{name}")
            for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
        ]
    assert "HTTPValidationError" not in json.dumps(document)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    shape = "Health" if path == "/health" else "ErrorAnswer"  # 503: still Health
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, status)
    state = next(p for p in document["paths"]["/runs"]["get"]["parameters"] if p["name"] == "state")
    assert "anyOf" not in state["schema"]  # ?state= (empty) is not documented as valid
    assert "http" not in docs.replace(server.url, "") and "/docs/assets/" in docs
    assert "cdn" not in redoc and "fonts.googleapis" not in redoc
    assert all(asset.status_code == 200 and len(asset.content) > 10_000 for asset in assets)


UNSPELLABLE = [
    # a body whose offending value JSON or UTF-8 cannot carry back as it came
    ("/claims", b'{"worker_id": "w", "lease_seconds": NaN}', "lease_seconds", "nan"),
    ("/claims", b'{"worker_id": "w", "lease_seconds": Infinity}', "lease_seconds", "inf"),
    ("/claims", b'{"worker_id": "w", "lease_seconds": 1e400}', "lease_seconds", "inf"),
    ("/runs/r1/cancel", b'{"reason": -Infinity}', "reason", "-inf"),
    ("/claims", b'{"worker_id": "\\ud800"}', "worker_id", "\\ud800"),
    ("/runs", b'{"run_id": "r2", "goal": "\\udfff", "tiers": []}', "goal", "\\udfff"),
]


def test_an_offending_value_json_cannot_spell_is_echoed_as_text(
    database_url: str, tmp_path: Path
) -> None:
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        assert httpx.post(f"{server.url}/runs", json=RUN).status_code == 201
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for path, content, field, shown in UNSPELLABLE:
                headers = {"content-type": "application/json"}
                answer = client.post(path, content=content, headers=headers)
                assert answer.status_code == 422, (content, answer.status_code, answer.text)
                body = answer.json()
                assert body["error"] == "InvalidInput" and field in body["detail"], body
                assert {"field": field, "value": shown}.items() <= body["errors"][0].items()
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert "Traceback" not in server.output()


def test_an_unreadable_body_says_why_and_a_chunked_one_over_the_limit_is_413(
    tmp_path: Path,
) -> None:
    def chunked(size: int) -> Iterator[bytes]:  # no Content-Length: sent chunked
        for _ in range(size // 1_000_000):
            yield b" " * 1_000_000
        yield b"{}"

    json_type = {"content-type": "application/json"}
    latin1 = {"content-type": "application/json; charset=latin-1"}
    with Server(clean_env(DATABASE_URL=empty_sqlite(tmp_path / "a.db")), cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for path in ("/claims", "/runs"):
                big = client.post(path, content=chunked(MAX_BODY_BYTES + 10**6), headers=json_type)
                assert big.status_code == 413, big.text
                assert big.json()["error"] == "RequestTooLarge"
            deep = client.post("/claims", content=b"[" * 5000 + b"]" * 5000, headers=json_type)
            assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"]
            body = '{"worker_id": "wé"}'.encode("latin-1")
            encoded = client.post("/claims", content=body, headers=latin1)
            assert encoded.status_code == 400 and "not UTF-8" in encoded.json()["detail"]
        assert "Traceback" not in server.output()
