"""Many worker processes against one real server: each phase done exactly once, and a
worker killed with SIGKILL loses its phase to another worker after the lease expires.

On both backends (the server is plain ``uvicorn autopack.main:app``, sync endpoints).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx

from autopack.client import ApiClient
from autopack.contract import Claim, ClaimIn, HeartbeatIn, ResultIn
from autopack.db import open_database
from autopack.dburl import resolve_database_url
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState
from tests.conftest import empty_sqlite
from tests.cp_support import attempt_rows, definition, states
from tests.fakes.loopback import LoopbackServer
from tests.support import REPO, Server, clean_env

WORKERS = 8
PHASES = 500


def worker_env() -> dict[str, str]:
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    return env


def start_worker(
    url: str, run_id: str, worker: str, log: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.programs.claim_worker",
            url,
            run_id,
            worker,
            str(log),
            *extra,
        ],
        cwd=REPO,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eight_workers_complete_every_phase_exactly_once(database_url: str, tmp_path: Path) -> None:
    run_id = "load"
    phases = [f"p{i:03d}" for i in range(PHASES)]
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        client.create_run(parse_run_definition(definition(run_id, [("T1", phases)])))
        go = tmp_path / "go"
        logs = [tmp_path / f"worker-{i}.jsonl" for i in range(WORKERS)]
        workers = [
            start_worker(server.url, run_id, f"w{i}", logs[i], "drain", str(go))
            for i in range(WORKERS)
        ]
        go.touch()
        outputs = [worker.communicate(timeout=240)[0] for worker in workers]
        assert [w.returncode for w in workers] == [0] * WORKERS, outputs
        run = client.get_run(run_id)
        server_log = server.output()
    assert "Traceback" not in server_log, server_log

    done = [entry for log in logs for entry in read_log(log)]
    per_phase = Counter(entry["phase_id"] for entry in done)
    assert sorted(per_phase) == phases, "every phase completed"
    assert set(per_phase.values()) == {1}, "no phase completed twice"
    assert {entry["attempt"] for entry in done} == {1}
    assert {entry["phase_state"] for entry in done} == {"COMPLETE"}
    assert len({entry["worker"] for entry in done}) >= 2, "the work was shared"
    assert run.state == "DONE_SUCCESS" and run.counts == {"COMPLETE": PHASES}

    database = open_database(
        resolve_database_url(database_url), role="test", log=False, create=True
    )
    try:
        rows = attempt_rows(database, run_id)
        assert set(states(database, run_id).values()) == {"COMPLETE"}
    finally:
        database.close()
    assert len(rows) == PHASES, "one attempt per phase: nobody else ever held a lease on it"
    assert {row["outcome"] for row in rows} == {"COMPLETE"}
    by_phase = {row["phase_id"]: row for row in rows}
    for entry in done:  # the database agrees with each worker's own account
        row = by_phase[entry["phase_id"]]
        assert (row["worker_id"], row["lease_token"]) == (entry["worker"], entry["lease_token"])
    # no phase was held by two live leases: per worker, its phases were held one at a time,
    # and every phase had exactly one lease (its single attempt).
    for worker in {entry["worker"] for entry in done}:
        spans = sorted((e["claimed_at"], e["completed_at"]) for e in done if e["worker"] == worker)
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert len({row["lease_token"] for row in rows}) == PHASES


def test_a_killed_worker_loses_its_phase_to_another_after_the_lease(
    database_url: str, tmp_path: Path
) -> None:
    run_id = "crash"
    env = clean_env(DATABASE_URL=database_url, AUTOPACK_MAINTENANCE_INTERVAL_SECONDS="0.5")
    with Server(env, cwd=tmp_path) as server, ApiClient(server.url) as client:
        client.create_run(parse_run_definition(definition(run_id, [("T1", ["a", "b", "c"])])))
        log = tmp_path / "victim.jsonl"
        victim = start_worker(server.url, run_id, "victim", log, "crash")
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().strip()):
            assert victim.poll() is None, victim.communicate()[0]
            assert time.monotonic() < deadline, "the victim never claimed"
            time.sleep(0.05)
        (held,) = read_log(log)
        assert (held["phase_id"], held["attempt"]) == ("a", 1)
        bystander = client.claim(
            ClaimIn(worker_id="bystander", lease_seconds=120, run_id=run_id, phase_id="b")
        )
        assert bystander is not None

        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL

        rescued: Claim | None = None
        deadline = time.monotonic() + 60
        while rescued is None:
            assert time.monotonic() < deadline, "the killed worker's phase was never reclaimed"
            rescued = client.claim(
                ClaimIn(worker_id="rescuer", lease_seconds=30, run_id=run_id, phase_id="a")
            )
            if rescued is None:
                time.sleep(0.2)
        assert rescued.attempt == 2
        assert [(h.attempt, h.outcome, h.stop_reason, h.worker_id) for h in rescued.history] == [
            (1, "LOST", "lease_expired", "victim")
        ]

        # nothing else was affected: the bystander still holds b, c was never touched
        client.heartbeat(
            run_id, "b", HeartbeatIn(lease_token=bystander.lease_token, lease_seconds=60)
        )
        c = client.get_phase(run_id, "c")
        assert (c.state, c.attempts) == ("QUEUED", 0)
        b = client.get_phase(run_id, "b")
        assert [a.outcome for a in b.history] == ["EXECUTING"]

        for leased in (rescued, bystander):
            client.post_result(
                run_id,
                leased.phase_id,
                ResultIn(
                    lease_token=leased.lease_token, outcome=PhaseState.COMPLETE, stop_reason="done"
                ),
            )
        last = client.claim(ClaimIn(worker_id="rescuer", lease_seconds=30, run_id=run_id))
        assert last is not None and last.phase_id == "c"
        client.post_result(
            run_id,
            "c",
            ResultIn(lease_token=last.lease_token, outcome=PhaseState.COMPLETE, stop_reason="done"),
        )
        assert client.get_run(run_id).state == "DONE_SUCCESS"
        assert "lease_reclaimed" in server.output()


class _LosesTheFirstClaimsAnswer(BaseHTTPRequestHandler):
    """A proxy in front of the real server that forwards everything, but hangs up on the
    first ``POST /claims`` after the server has granted it (a dropped connection, a proxy's
    read timeout): the claim is applied and its answer never arrives."""

    upstream: ClassVar[str] = ""
    dropped: ClassVar[list[bytes]] = []

    def do_GET(self) -> None:
        self._relay(httpx.get(self.upstream + self.path))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {"content-type": self.headers["content-type"]}
        answer = httpx.post(self.upstream + self.path, content=body, headers=headers)
        if self.path == "/claims" and not self.dropped:
            self.dropped.append(body)
            self.close_connection = True
            return
        self._relay(answer)

    def _relay(self, answer: httpx.Response) -> None:
        self.send_response(answer.status_code)
        self.send_header("content-type", answer.headers.get("content-type", "application/json"))
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_claim_retried_after_its_answer_was_lost_gets_the_lease_it_was_granted(
    database_url: str, tmp_path: Path
) -> None:
    """The retry leased a second phase; the first stayed EXECUTING under a lease nobody
    knew of until it expired, its only attempt spent: FAILED without having run."""
    run_id = "lost-answer"
    with Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server:
        _LosesTheFirstClaimsAnswer.upstream = server.url
        _LosesTheFirstClaimsAnswer.dropped = []
        phases = [{"phase_id": p, "max_attempts": 1} for p in ("a", "b")]
        with (
            LoopbackServer(_LosesTheFirstClaimsAnswer) as proxy,
            ApiClient(proxy.url) as client,
        ):
            client.create_run(parse_run_definition(definition(run_id, [("T1", phases)])))
            claim = client.claim(ClaimIn(worker_id="w", lease_seconds=60, run_id=run_id))
            assert _LosesTheFirstClaimsAnswer.dropped, "the first answer was not dropped"
            assert claim is not None and (claim.phase_id, claim.attempt) == ("a", 1)
            run = client.get_run(run_id)
        assert {p.phase_id: p.state for p in run.phases()} == {"a": "EXECUTING", "b": "QUEUED"}
        database = open_database(
            resolve_database_url(database_url), role="test", log=False, create=True
        )
        try:
            [attempt] = attempt_rows(database, run_id)
        finally:
            database.close()
        assert attempt["lease_token"] == claim.lease_token


def test_a_claim_key_returns_only_its_own_workers_lease_while_it_is_held(tmp_path: Path) -> None:
    """Another worker sending the key (a guessed or copied one) is granted its own phase;
    once the lease is handed back, the key claims afresh."""
    run_id = "keys"
    key = "0123456789abcdef0123456789abcdef"
    env = clean_env(DATABASE_URL=empty_sqlite(tmp_path / "autopack.db"))
    with Server(env, cwd=tmp_path) as server, ApiClient(server.url) as client:
        client.create_run(parse_run_definition(definition(run_id, [("T1", ["a", "b", "c"])])))

        def claim(worker: str) -> Claim:
            request = ClaimIn(worker_id=worker, lease_seconds=60, run_id=run_id, claim_key=key)
            granted = client.claim(request)
            assert granted is not None
            return granted

        first = claim("w")
        assert claim("w") == first
        assert claim("x").phase_id == "b"
        handed_back = ResultIn(
            lease_token=first.lease_token, outcome="FAILED", stop_reason="interrupted"
        )
        client.post_result(run_id, "a", handed_back)
        again = claim("w")
        assert (again.phase_id, again.attempt) == ("a", 2)
        assert again.lease_token != first.lease_token
