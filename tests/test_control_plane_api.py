"""The HTTP contract of the control plane against a real uvicorn server, on both backends.

One server per backend for the whole module (fast maintenance interval so approval
expiry is observable); every test works in its own run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from autopack.api.maintenance import Maintenance
from autopack.cli._common import check_named_repository
from autopack.client import ApiClient
from autopack.contract import (
    ApprovalIn,
    AuditVerdict,
    CancelIn,
    CheckResult,
    Claim,
    ClaimIn,
    DecisionIn,
    HeartbeatIn,
    RequeueIn,
    ResultIn,
    UsageIn,
)
from autopack.db import Database, open_database
from autopack.dburl import resolve_database_url
from autopack.errors import Conflict, IllegalTransition, InvalidInput, LeaseLost, NotFound
from autopack.executor.source import RepoSource
from autopack.rundef import parse_run_definition
from autopack.states import ApprovalStatus, PhaseState, RunState
from tests.conftest import BACKENDS, create_pg_database, drop_pg_database, empty_sqlite
from tests.cp_support import definition, expire_lease, snapshot
from tests.support import Server, clean_env, wait_for


@dataclass
class Plane:
    server: Server
    client: ApiClient
    db: Database

    @property
    def url(self) -> str:
        return self.server.url

    def run(self, tiers: Any = (("T1", ["a"]),), **kw: Any) -> str:
        run_id = f"run-{uuid.uuid4().hex[:8]}"
        self.client.create_run(parse_run_definition(definition(run_id, tiers, **kw)))
        return run_id

    def claim(
        self, worker: str, lease_seconds: int, run_id: str, phase_id: str | None = None
    ) -> Claim | None:
        request = ClaimIn(
            worker_id=worker, lease_seconds=lease_seconds, run_id=run_id, phase_id=phase_id
        )
        return self.client.claim(request)


@pytest.fixture(scope="module", params=BACKENDS)
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plane]:
    workdir = tmp_path_factory.mktemp("api")
    if request.param == "sqlite":
        url, cleanup = empty_sqlite(workdir / "autopack.db"), None
    else:
        admin = request.getfixturevalue("pg_admin")
        url = create_pg_database(admin)
        cleanup = admin
    env = clean_env(DATABASE_URL=url, AUTOPACK_MAINTENANCE_INTERVAL_SECONDS="0.2")
    server = Server(env, cwd=workdir)
    try:
        server.wait_healthy()
        database = open_database(resolve_database_url(url), role="test", log=False, create=True)
        with ApiClient(server.url) as client:
            yield Plane(server, client, database)
        database.close()
        log = server.output()
    finally:
        server.stop()
        if cleanup:
            drop_pg_database(cleanup, url)
    assert "Traceback" not in log, log


def error_body(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
    return body


# -- runs ----------------------------------------------------------------------------------


def test_create_read_and_list_runs(plane: Plane) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{plane.url}/runs", json=definition(run_id, [("T1", ["a", "b"])]))
    assert response.status_code == 201
    created = response.json()
    assert created["state"] == "QUEUED" and created["counts"] == {"QUEUED": 2}
    assert created["created_at"].endswith("Z")
    assert plane.client.get_run(run_id).model_dump(mode="json") == created
    listed = plane.client.list_runs(state=RunState.QUEUED, limit=1000)
    assert run_id in [item.run_id for item in listed.items]
    assert listed.limit == 1000 and listed.total >= 1
    with pytest.raises(Conflict, match=f"run '{run_id}' already exists"):
        plane.client.create_run(parse_run_definition(definition(run_id)))


def test_a_second_active_run_on_one_repository_branch_is_refused_naming_the_first(
    plane: Plane,
) -> None:
    """Two runs on one repository's branch lost one run's work: each run's compare-and-swap
    knows only its own accepted head, so whichever advanced the git branch first won and
    the other's phases were COMPLETE with their commits on no branch."""
    remote = f"/srv/git/{uuid.uuid4().hex[:8]}.git"

    def body(run_id: str, branch: str) -> dict[str, Any]:
        return {**definition(run_id), "repository": remote, "branch": branch}

    first, second = (f"run-{uuid.uuid4().hex[:8]}" for _ in range(2))
    assert httpx.post(f"{plane.url}/runs", json=body(first, "shared")).status_code == 201
    refused = httpx.post(f"{plane.url}/runs", json=body(second, "shared"))
    assert refused.status_code == 409, refused.text
    detail = error_body(refused)["detail"]
    assert detail.startswith("branch:") and first in detail and remote in detail, detail
    assert httpx.get(f"{plane.url}/runs/{second}").status_code == 404
    assert httpx.post(f"{plane.url}/runs", json=body(second, "other")).status_code == 201
    plane.client.cancel_run(first, CancelIn(reason="done with it"))
    third = f"run-{uuid.uuid4().hex[:8]}"
    assert httpx.post(f"{plane.url}/runs", json=body(third, "shared")).status_code == 201


def test_spellings_of_one_repository_are_one_repository_to_the_branch_check(
    plane: Plane,
) -> None:
    """`/x.git`, `/x.git/`, `file:///x.git`, `/x` and `/x/.git`, `https://Host/o/x.git` and
    `https://host/o/x/` were different repositories to the check, so a second run drained
    onto the first one's branch; so were `https://u:secret@host/o/x` and `https://host/o/x`
    (HTTP's user and password only log in). Folded by spelling alone; other hosts, SSH
    users and schemes (scp-like `h:p` is `~/p`, `ssh://h/p` is `/p`) stay other
    repositories, and so does `/a/y/../x` (`/a/x` only if `y` is no symbolic link: it was
    folded, refusing a run in another repository)."""
    tag = uuid.uuid4().hex[:8]
    same = {
        f"/srv/{tag}/x.git": [
            f"/srv/{tag}/x.git/",
            f"file:///srv/{tag}/x.git",
            f"file://localhost/srv/{tag}//x.git/",
            f"/srv/{tag}/./x.git",
        ],
        f"/srv/{tag}/work": [f"/srv/{tag}/work/.git", f"file:///srv/{tag}/work/.git/"],
        f"https://git.example/{tag}/x.git": [
            f"https://GIT.example/{tag}/x",
            f"HTTPS://git.example/{tag}/x/",
            f"https://someone:hunter2-secret@git.example/{tag}/x.git",
            f"https://someone@git.example/{tag}/x",
        ],
        f"git@git.example:{tag}/x.git": [f"git@Git.Example:{tag}/x/"],
    }
    others = [
        f"/srv/{tag}/x",  # another directory than x.git
        f"/srv/{tag}/link/../x.git",  # /srv/x.git when `link` is a symbolic link to /srv/tag
        f"https://git.example/{tag}/X.git",  # a self-hosted server's paths may be cased
        f"/srv/{tag}/X.git",
        f"https://other.example/{tag}/x.git",
        f"ssh://git@git.example/{tag}/x.git",
        f"git@git.example:{tag}/y.git",
    ]

    def post(repository: str) -> httpx.Response:
        body = {**definition(f"run-{uuid.uuid4().hex[:8]}"), "repository": repository}
        return httpx.post(f"{plane.url}/runs", json={**body, "branch": "shared"})

    for first, spellings in same.items():
        assert post(first).status_code == 201
        for spelling in spellings:
            refused = post(spelling)
            assert refused.status_code == 409, (spelling, refused.text)
            detail = error_body(refused)["detail"]
            assert detail.startswith("branch:") and first in detail, detail
            assert "hunter2" not in refused.text, refused.text
    for other in others:
        assert post(other).status_code == 201, other


def test_branch_check_answers_for_the_repository_a_drain_names(plane: Plane) -> None:
    """What a drain asks before moving its run's branch in the repository its `--repo` or
    `--workspace` name: 409 when another active run works on that branch there (not for
    the run itself), 404 for no such run, 422 naming `repository` for a relative path."""
    tag = uuid.uuid4().hex[:8]
    busy, loose = f"busy-{tag}", f"loose-{tag}"
    repository = f"/srv/{tag}/code"
    for run_id, named in ((busy, repository), (loose, None)):
        body = {**definition(run_id), "repository": named, "branch": "shared"}
        assert httpx.post(f"{plane.url}/runs", json=body).status_code == 201

    def check(run_id: str, named: str) -> httpx.Response:
        return httpx.post(f"{plane.url}/runs/{run_id}/branch-check", json={"repository": named})

    refused = check(loose, f"file://{repository}/.git")
    assert refused.status_code == 409, refused.text
    assert error_body(refused)["detail"].startswith(f"branch: run '{busy}'"), refused.text
    assert check(busy, repository).json()["run_id"] == busy
    assert check(loose, f"/srv/{tag}/other").status_code == 200  # loose now works there:
    other = f"file:///srv/{tag}/other/.git"  # so a run naming it is refused,
    later = {**definition(f"later-{tag}"), "repository": other, "branch": "shared"}
    refused = httpx.post(f"{plane.url}/runs", json=later)
    assert refused.status_code == 409, refused.text
    assert f"run '{loose}'" in error_body(refused)["detail"], refused.text
    unnamed = f"unnamed-{tag}"  # and so is a drain of another run there
    created = httpx.post(f"{plane.url}/runs", json={**definition(unnamed), "branch": "shared"})
    assert created.status_code == 201, created.text
    assert check(unnamed, f"/srv/{tag}/other").status_code == 409
    assert check(f"none-{tag}", repository).status_code == 404
    relative = check(loose, "code")
    assert relative.status_code == 422 and "repository" in relative.text, relative.text
    plane.client.cancel_run(busy, CancelIn(reason="done with it"))
    assert check(loose, repository).status_code == 200


def test_a_password_in_a_drains_repository_is_never_kept_nor_echoed(plane: Plane) -> None:
    """`https://user:secret@host/x` named by a drain was stored as `drained_in` as given
    (the server never clones with it) and echoed in the 409 a second run's check got; the
    check also missed that run, `https://host/x` being another user's repository to it.
    Where a drain ran is the run's (`drained_in`) and the 409 says the claim came from it."""
    tag = uuid.uuid4().hex[:8]
    first, second = f"first-{tag}", f"second-{tag}"
    for run_id in (first, second):
        plane.client.create_run(parse_run_definition({**definition(run_id), "branch": "b"}))
    named = f"https://ana:pa55-{tag}@git.example/{tag}/x.git"
    assert plane.client.check_branch(first, named).run_id == first

    refused = httpx.post(
        f"{plane.url}/runs/{second}/branch-check",
        json={"repository": f"https://git.example/{tag}/x"},
    )
    assert refused.status_code == 409, refused.text
    kept = f"https://ana@git.example/{tag}/x.git"
    assert f"(as {kept}, where a drain of it ran last)" in error_body(refused)["detail"]
    assert plane.client.get_run(first).drained_in == kept
    with plane.db.engine.connect() as conn:
        row = conn.execute(text("SELECT drained_in FROM runs WHERE id = :r"), {"r": first})
        assert row.scalar_one() == kept
    assert f"pa55-{tag}" not in refused.text + plane.server.output()


def test_a_drain_back_in_its_own_repository_leaves_no_claim_where_it_drained_before(
    plane: Plane,
) -> None:
    """A run drained once with `--workspace OTHER`, then in its own `repository`, kept
    `drained_in` OTHER while active: every run on its branch there was refused for a
    repository it no longer worked in (the drain in its own never asked the server)."""
    tag = uuid.uuid4().hex[:8]
    own, other = f"/srv/{tag}/own", f"/srv/{tag}/other"
    mover, waiting = f"mover-{tag}", f"waiting-{tag}"
    for run_id, repository in ((mover, own), (waiting, None)):
        body = {**definition(run_id), "repository": repository, "branch": "shared"}
        plane.client.create_run(parse_run_definition(body))
    plane.client.check_branch(mover, other)
    with pytest.raises(Conflict, match=f"run '{mover}'"):
        plane.client.check_branch(waiting, other)
    run = plane.client.get_run(mover)
    check_named_repository(plane.client, run, RepoSource(workspace=Path(own)))
    assert plane.client.get_run(mover).drained_in is None
    assert plane.client.check_branch(waiting, other).drained_in == other


def test_a_finished_runs_drain_or_export_is_not_refused_a_branch_another_run_continued(
    plane: Plane,
) -> None:
    """A finished run's branch may be continued by a new run; its idle drain or `run
    export --workspace` in that repository must not be refused for it (the CLI asks only
    for runs that may still move their branch; the server told one to take another branch)."""
    tag = uuid.uuid4().hex[:8]
    repository = f"/srv/{tag}/code"
    done, going = f"done-{tag}", f"going-{tag}"
    plane.client.create_run(parse_run_definition({**definition(done), "branch": "shared"}))
    active = {**definition(going), "repository": repository, "branch": "shared"}
    finished = plane.client.cancel_run(done, CancelIn(reason="done"))
    plane.client.create_run(parse_run_definition(active))
    check_named_repository(plane.client, finished, RepoSource(workspace=Path(repository)))
    assert plane.client.check_branch(done, repository).drained_in is None  # nor the server
    waiting = f"waiting-{tag}"  # an active one is refused
    queued = plane.client.create_run(
        parse_run_definition({**definition(waiting), "branch": "shared"})
    )
    with pytest.raises(InvalidInput, match=f"--workspace {repository}: branch: run '{going}'"):
        check_named_repository(plane.client, queued, RepoSource(workspace=Path(repository)))


def test_a_runs_brief_is_the_run_without_its_phases(plane: Plane) -> None:
    """What an executor asks for the accepted head once per attempt whose checks saw the
    branch move (the whole run, every phase of it each time, made a drain quadratic)."""
    run_id = plane.run(tiers=[("T1", [f"p{i}" for i in range(50)])])
    brief = httpx.get(f"{plane.url}/runs/{run_id}/brief")
    assert brief.status_code == 200, brief.text
    answer = httpx.get(f"{plane.url}/runs/{run_id}")
    whole = answer.json()
    assert brief.json() == {name: whole[name] for name in brief.json()}
    assert "tiers" not in brief.json() and len(brief.content) * 10 < len(answer.content)
    assert plane.client.get_run_brief(run_id).branch_head == whole["branch_head"]
    with pytest.raises(NotFound, match="nobody-made-this"):
        plane.client.get_run_brief("nobody-made-this")


def test_unknown_run_404_names_the_run_and_the_database(plane: Plane) -> None:
    instance_id = plane.server.wait_healthy()["database"]["instance_id"]
    response = httpx.get(f"{plane.url}/runs/telemetry-collection-v4")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "NotFound"
    assert body["run_id"] == "telemetry-collection-v4"
    assert body["database_instance_id"] == instance_id
    assert "telemetry-collection-v4" in body["detail"] and instance_id in body["detail"]


def test_schema_endpoint_serves_the_run_definition_schema(plane: Plane) -> None:
    schema = httpx.get(f"{plane.url}/schemas/run").json()
    assert schema["title"] == "RunDefinition"
    assert {"run_id", "tiers", "budgets", "policy"} <= set(schema["properties"])
    paths = httpx.get(f"{plane.url}/openapi.json").json()["paths"]
    assert {"/runs", "/claims", "/approvals", "/runs/{run_id}/phases/{phase_id}/result"} <= set(
        paths
    )


# -- bad input: 4xx with a useful message, never 500 ------------------------------------------

RUN_OK = parse_run_definition(definition("bad-input-run", [("T1", ["a"])]))
PHASE = "/runs/bad-input-run/phases/a"


def _phase(**fields: Any) -> dict[str, Any]:
    data = definition("r-bad", [("T1", ["a"])])
    data["tiers"][0]["phases"][0].update(fields)
    return data


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/runs", _phase(max_attempts="three"), 422, "max_attempts"),
    ("POST", "/runs", _phase(complexity=["x"]), 422, "complexity"),
    (
        "POST",
        "/runs",
        {"run_id": "r-bad", "tiers": [{"name": "t", "phases": [{"phase_id": "a", "name": "a"}]}]},
        422,
        "tiers[0].tier_id: Field required",
    ),
    (
        "POST",
        "/runs",
        definition("r-bad", [("T1", ["a", "a"])]),
        422,
        "duplicate phase_id 'a'",
    ),
    ("POST", "/runs", _phase(scope={"deliverables": ["../x.py"]}), 422, "'../x.py'"),
    ("POST", "/runs", _phase(name="  "), 422, "phases[0](a).name"),
    ("POST", "/runs", _phase(checks=["pytest", " \t "]), 422, "phases[0](a).checks[1]"),
    # pydantic says only "Extra inputs are not permitted": the field meant is named
    ("POST", "/runs", _phase(category="tests"), 422, "did you mean 'task_category'"),
    ("POST", "/runs", b"{not json", 422, "not valid JSON"),
    ("POST", "/runs", b"", 422, "body"),
    ("POST", "/runs", [1, 2], 422, "body"),
    ("POST", "/runs", {"run_id": "x y", "tiers": []}, 422, "run_id"),
    ("GET", "/runs/no-such-run", None, 404, "no-such-run"),
    ("POST", "/runs/no-such-run/cancel", None, 404, "no-such-run"),
    ("GET", "/runs/bad-input-run/phases/zz", None, 404, "phase 'zz'"),
    ("GET", "/runs?limit=0", None, 422, "limit"),
    ("GET", "/runs?limit=many", None, 422, "limit"),
    ("GET", "/runs?state=NOPE", None, 422, "state: Input should be 'QUEUED', 'RUNNING'"),
    ("POST", "/claims", {}, 422, "worker_id: Field required"),
    ("POST", "/claims", {"worker_id": "w", "lease_seconds": 1}, 422, "lease_seconds"),
    ("POST", "/claims", {"worker_id": "w", "lease_seconds": "abc"}, 422, "lease_seconds"),
    ("POST", "/claims", {"worker_id": "w", "phase_id": "a"}, 422, "needs its run_id"),
    ("POST", "/claims", {"worker_id": "w", "run_id": "no-such-run"}, 404, "no-such-run"),
    ("POST", f"{PHASE}/heartbeat", {}, 422, "lease_token"),
    ("POST", f"{PHASE}/heartbeat", {"lease_token": "t", "state": "DONE"}, 422, "state"),
    ("POST", f"{PHASE}/heartbeat", {"lease_token": "t"}, 409, "never issued"),
    ("POST", f"{PHASE}/usage", {"lease_token": "t", "tokens": -1}, 422, "tokens"),
    ("POST", f"{PHASE}/result", {"lease_token": "t", "outcome": "MAYBE"}, 422, "outcome"),
    (
        "POST",
        f"{PHASE}/result",
        {"lease_token": "t", "outcome": "COMPLETE", "stop_reason": "x" * 81},
        422,
        "stop_reason",
    ),
    (
        "POST",
        f"{PHASE}/result",
        {"lease_token": "t", "outcome": "COMPLETE", "stop_reason": "d"},
        409,
        "LeaseLost",
    ),
    ("POST", f"{PHASE}/approvals", {"lease_token": "t"}, 422, "reason"),
    ("POST", f"{PHASE}/requeue", {"reason": 5}, 422, "reason"),
    ("POST", "/approvals/abc/approve", {"responder": "x"}, 422, "approval_id"),
    ("POST", "/approvals/999999/approve", {"responder": "x"}, 404, "approval 999999"),
    ("POST", "/approvals/1/reject", {}, 422, "responder"),
    ("GET", "/approvals?status=weird", None, 422, "status"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    BAD_REQUESTS,
    ids=[f"{m} {p} {s} {w}"[:70] for m, p, _, s, w in BAD_REQUESTS],
)
def test_bad_input_gets_4xx_with_a_useful_message(
    plane: Plane, method: str, path: str, body: Any, status: int, words: str
) -> None:
    with contextlib.suppress(Conflict):
        plane.client.create_run(RUN_OK)
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    response = httpx.request(method, f"{plane.url}{path}", **kwargs)
    assert response.status_code == status, response.text
    body_json = error_body(response)
    assert words in body_json["detail"] or words == body_json["error"], body_json


# -- the worker's calls ------------------------------------------------------------------------


def test_claim_heartbeat_usage_result_round_trip(plane: Plane) -> None:
    run_id = plane.run([("T1", ["a", {"phase_id": "b", "depends_on": ["a"]}])])
    client = plane.client
    claimed = plane.claim("w1", 30, run_id)
    assert claimed is not None and claimed.phase_id == "a"
    assert claimed.lease_expires_at.utcoffset() == timedelta(0) and claimed.history == []
    on_the_wire = httpx.get(f"{plane.url}/runs/{run_id}/phases/a").json()["lease_expires_at"]
    assert on_the_wire.endswith("Z")
    assert datetime.fromisoformat(on_the_wire) == claimed.lease_expires_at
    assert plane.claim("w1", 30, run_id) is None, "b waits for a: 204"
    token = claimed.lease_token
    beat = client.heartbeat(
        run_id,
        "a",
        HeartbeatIn(lease_token=token, lease_seconds=60, state=PhaseState.CI_RUNNING),
    )
    assert beat.state == "CI_RUNNING"
    usage = client.report_usage(run_id, "a", UsageIn(lease_token=token, tokens=1234, cost_usd=0.02))
    assert usage.run.tokens_used == 1234 and usage.run.budget_exhausted is False
    body = {
        "lease_token": token,
        "outcome": "COMPLETE",
        "stop_reason": "done",
        "files_written": ["x/a.py"],
        "check_results": [{"command": "true", "exit_code": 0, "passed": True}],
        "audit_verdict": {"mode": "rules", "approved": True},
        "details": {"summary": "wrote a"},
    }
    headers = {"Idempotency-Key": f"{run_id}:a:1"}
    answers = [
        httpx.post(f"{plane.url}/runs/{run_id}/phases/a/result", json=body, headers=headers)
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert answers[0].json()["phase_state"] == "COMPLETE"
    detail = client.get_phase(run_id, "a")
    assert detail.attempts == 1 and len(detail.history) == 1
    (attempt,) = detail.history
    assert attempt.files_written == ["x/a.py"]
    assert attempt.check_results == [CheckResult(command="true", exit_code=0, passed=True)]
    assert attempt.audit_verdict == AuditVerdict(mode="rules", approved=True)
    assert attempt.tokens_used == 1234 and detail.tokens_used == 1234
    assert client.get_run(run_id).tokens_used == 1234
    with pytest.raises(LeaseLost):
        client.heartbeat(run_id, "a", HeartbeatIn(lease_token=token, lease_seconds=30))


def test_a_workers_text_cannot_forge_a_server_log_line(plane: Plane) -> None:
    """A stop_reason with a line break (and tabs for spaces, an escape sequence) was
    logged raw: one result wrote a second, made-up line into the server's log."""
    run_id = plane.run()
    claimed = plane.claim("w1", 30, run_id)
    assert claimed is not None
    forged = "2026-01-01T00:00:00.000Z\tERROR\tautopack.api\tforged_line"
    body = {
        "lease_token": claimed.lease_token,
        "outcome": "FAILED",
        "stop_reason": f"x\n{forged}\x1b[2J",
        "retryable": False,
    }
    answer = httpx.post(f"{plane.url}/runs/{run_id}/phases/a/result", json=body)
    assert answer.status_code == 200, answer.text
    logged = f" result run_id={run_id} "
    line = wait_for(
        lambda: next((row for row in plane.server.output().splitlines() if logged in row), None)
    )
    assert "forged_line" in line and "\\n" in line and "\\u001b" in line, line
    assert not any(row.startswith(forged) for row in plane.server.output().splitlines())


def test_zombie_result_after_reclaim_is_refused_and_changes_nothing(plane: Plane) -> None:
    run_id = plane.run()
    zombie = plane.claim("w1", 5, run_id)
    assert zombie is not None
    expire_lease(plane.db, run_id, "a")
    fresh = wait_for(lambda: plane.claim("w2", 30, run_id))
    assert fresh.attempt == 2
    before = snapshot(plane.db, run_id)
    response = httpx.post(
        f"{plane.url}/runs/{run_id}/phases/a/result",
        json={"lease_token": zombie.lease_token, "outcome": "COMPLETE", "stop_reason": "done"},
        headers={"Idempotency-Key": f"{run_id}:a:1"},
    )
    assert response.status_code == 409
    assert response.json()["error"] == "LeaseLost"
    assert "ended as LOST (lease_expired)" in response.json()["detail"]
    assert snapshot(plane.db, run_id) == before
    outcomes = [a.outcome for a in plane.client.get_phase(run_id, "a").history]
    assert outcomes == ["LOST", "EXECUTING"]


def test_cancel_revokes_the_lease_of_a_running_phase(plane: Plane) -> None:
    run_id = plane.run([("T1", ["a", "b"])])
    claimed = plane.claim("w1", 30, run_id)
    assert claimed is not None
    view = plane.client.cancel_run(run_id, CancelIn(reason="no longer needed"))
    assert view.state == "DONE_CANCELLED" and view.counts == {"SKIPPED": 2}
    with pytest.raises(LeaseLost):
        plane.client.heartbeat(
            run_id, "a", HeartbeatIn(lease_token=claimed.lease_token, lease_seconds=30)
        )
    with pytest.raises(IllegalTransition):
        plane.client.cancel_run(run_id, CancelIn())
    assert plane.claim("w1", 30, run_id) is None


def test_requeue_over_http(plane: Plane) -> None:
    run_id = plane.run([("T1", [{"phase_id": "a", "max_attempts": 1}, "b"])])
    client = plane.client
    a = plane.claim("w", 30, run_id)
    b = plane.claim("w", 30, run_id)
    assert a is not None and b is not None
    client.post_result(
        run_id,
        "a",
        ResultIn(
            lease_token=a.lease_token,
            outcome=PhaseState.FAILED,
            stop_reason="check_failed",
            error="boom",
        ),
    )
    client.post_result(
        run_id,
        "b",
        ResultIn(lease_token=b.lease_token, outcome=PhaseState.COMPLETE, stop_reason="done"),
    )
    assert client.get_run(run_id).state == "DONE_FAILED_PHASES"
    with pytest.raises(IllegalTransition, match="is COMPLETE: requeueing it runs it again"):
        client.requeue_phase(run_id, "b", RequeueIn())
    view = client.requeue_phase(run_id, "a", RequeueIn(requested_by="ops", reason="flaky"))
    assert view.state == "QUEUED" and view.attempts_left == 1
    assert client.get_run(run_id).state == "RUNNING"
    again = plane.claim("w", 30, run_id, phase_id="a")
    assert again is not None and again.attempt == 3
    assert [h.outcome for h in again.history] == ["FAILED", "REQUEUED"]


def test_budget_exhausted_at_claim_over_http(plane: Plane) -> None:
    run_id = plane.run([("T1", ["a", "b"])], budgets={"cost_cap_usd": 0.1})
    a = plane.claim("w", 30, run_id)
    assert a is not None
    usage = plane.client.report_usage(
        run_id, "a", UsageIn(lease_token=a.lease_token, tokens=10, cost_usd=0.2)
    )
    assert usage.run.budget_exhausted is True
    assert usage.run.reason is not None and "cost budget exhausted" in usage.run.reason
    assert plane.claim("w", 30, run_id) is None
    run = plane.client.get_run(run_id)
    assert run.state == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert run.failure_reason is not None
    assert run.failure_reason.startswith("cost budget exhausted")


# -- approvals ---------------------------------------------------------------------------------


def _waiting(plane: Plane, timeout_seconds: float | None = None, **kw: Any) -> tuple[str, int]:
    run_id = plane.run(**kw)
    claimed = plane.claim("w", 30, run_id)
    assert claimed is not None
    asked = plane.client.request_approval(
        run_id,
        "a",
        ApprovalIn(
            lease_token=claimed.lease_token,
            reason="overwrite setup.py",
            context={"paths": ["setup.py"]},
            timeout_seconds=timeout_seconds,
        ),
    )
    assert asked.phase_state == "AWAITING_APPROVAL"
    return run_id, asked.approval_id


def test_approve_path(plane: Plane) -> None:
    run_id, approval_id = _waiting(plane)
    pending = plane.client.list_approvals(run_id=run_id).items
    assert [(a.id, a.status, a.context) for a in pending] == [
        (approval_id, "pending", {"paths": ["setup.py"]})
    ]
    decided = plane.client.decide(
        approval_id, approve=True, decision=DecisionIn(responder="alice", note="ok")
    )
    assert decided.status == "approved" and decided.phase_state == "QUEUED"
    claimed = plane.claim("w", 30, run_id)
    assert claimed is not None and claimed.approved_change is not None
    assert claimed.approved_change.approval_id == approval_id
    assert claimed.approved_change.context == {"paths": ["setup.py"]}
    with pytest.raises(Conflict):
        plane.client.decide(approval_id, approve=False, decision=DecisionIn(responder="bob"))


def test_reject_path(plane: Plane) -> None:
    run_id, approval_id = _waiting(plane)
    decided = plane.client.decide(
        approval_id, approve=False, decision=DecisionIn(responder="bob", note="no")
    )
    assert decided.status == "rejected" and decided.phase_state == "FAILED"
    phase = plane.client.get_phase(run_id, "a")
    assert phase.state == "FAILED" and phase.last_failure_reason == "approval_rejected: no"
    assert phase.history[0].stop_reason == "approval_rejected"
    assert plane.client.get_run(run_id).state == "DONE_FAILED_PHASES"


@pytest.mark.parametrize(("policy", "expected"), [("fail", "FAILED"), ("requeue", "QUEUED")])
def test_expiry_path_by_the_background_task(plane: Plane, policy: str, expected: str) -> None:
    run_id, approval_id = _waiting(
        plane, timeout_seconds=0.3, policy={"on_approval_timeout": policy}
    )
    expired = wait_for(
        lambda: [
            a for a in plane.client.list_approvals(ApprovalStatus.EXPIRED, run_id).items if a.id
        ]
    )
    assert expired[0].id == approval_id and expired[0].on_timeout == policy
    assert plane.client.get_phase(run_id, "a").state == expected


# -- the background task survives its own errors ------------------------------------------------


def test_maintenance_logs_a_failing_pass_and_keeps_going(database_url: str) -> None:
    database = open_database(database_url, role="test", log=False, create=True)
    try:

        async def scenario() -> Maintenance:
            maintenance = Maintenance(database, interval_seconds=0.05)
            with database.engine.begin() as connection:
                connection.execute(text("ALTER TABLE approval_requests RENAME TO parked"))
            maintenance.start()
            try:
                while maintenance.failures < 2:
                    await asyncio.sleep(0.02)
                with database.engine.begin() as connection:
                    connection.execute(text("ALTER TABLE parked RENAME TO approval_requests"))
                while maintenance.passes < 2:
                    await asyncio.sleep(0.02)
            finally:
                await maintenance.stop()
            return maintenance

        maintenance = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert maintenance.failures >= 2 and maintenance.passes >= 2
    finally:
        database.close()


def test_a_wrong_method_is_405_naming_the_methods_the_path_has(plane: Plane) -> None:
    """RFC 9110: a 405 lists the allowed methods in Allow (it was empty once FastAPI
    nested included routers); HEAD wherever GET is served."""
    for method, path, allowed in (
        ("PUT", "/runs", "GET, HEAD, POST"),
        ("DELETE", "/runs/r1", "GET, HEAD"),
        ("GET", "/claims", "POST"),
        ("HEAD", "/claims", "POST"),
        ("PATCH", "/approvals/1/approve", "POST"),
        ("PUT", "/ui/login", "GET, HEAD, POST"),
    ):
        answer = httpx.request(method, f"{plane.url}{path}")
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers["allow"] == allowed, (method, path, answer.headers)
        if method != "HEAD":  # a HEAD's answer has no body
            assert error_body(answer)["error"] == "MethodNotAllowed"


def test_not_found_and_invalid_errors_round_trip_through_the_client(plane: Plane) -> None:
    with pytest.raises(NotFound) as missing:
        plane.client.get_phase("no-such-run", "a")
    assert missing.value.details["run_id"] == "no-such-run"
    with pytest.raises(InvalidInput) as invalid:
        plane.client.request("POST", "/runs", json={"run_id": "r", "tiers": [{"tier_id": "T1"}]})
    assert {"field": "tiers[0](T1).name", "message": "Field required"} in invalid.value.details[
        "errors"
    ]


def test_server_log_is_clean(plane: Plane, tmp_path: Path) -> None:
    # keep last: nothing above made the server log a traceback (a 500 would)
    assert "Traceback" not in plane.server.output()
    assert "Exception" not in plane.server.output()
