"""A dropped database connection loses nothing (and a retried post is applied once).

The end-to-end case is the finding itself: PostgreSQL terminates the API server's
connections again and again while a drain runs (``pg_terminate_backend``, what a restart
or a failover does). The server retries each transaction that lost its connection on a new
one, the executor retries its posts on a 5xx or a dropped connection, telemetry that could
not be written waits in a queue; the drain ends with exit 0 and every row is there once.
Below it, the pieces: idempotent usage reports and telemetry rows, the recorder's queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from autopack.contract import HeartbeatIn, UsageIn, ordered_usage_key
from autopack.control import leases, telemetry
from autopack.db import Database, open_database
from autopack.db.identity import read_identity
from autopack.db.transaction import again_on_lost_connection, connection_lost, run_transaction
from autopack.errors import Conflict, DatabaseUnavailable, LeaseLost, ServerUnavailable
from autopack.telemetry.events import LlmUsageIn, TelemetryEvent
from autopack.telemetry.recorder import TelemetryRecorder
from tests.conftest import _pg_conninfo, create_pg_database, drop_pg_database, empty_sqlite
from tests.cp_support import claim, claimed, create, phase_row, run_row
from tests.executor_support import cassette, drain, env_for, files, line, phase, rows, run_file
from tests.support import Server, clean_env, cli

PHASES = 12


class Terminator:
    """Terminates every connection to ``database`` every ``interval`` seconds, in a thread."""

    def __init__(self, admin_url: str, database: str, interval: float = 0.1) -> None:
        self.admin_url, self.database, self.interval = admin_url, database, interval
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with psycopg.connect(_pg_conninfo(self.admin_url), autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                found = conn.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                    "pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()) AS t",
                    (self.database,),
                ).fetchone()
                self.killed += int(found[0]) if found else 0

    def __enter__(self) -> Terminator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.postgres
def test_opening_a_database_whose_connections_are_being_terminated_succeeds(
    pg_admin: str,
) -> None:
    """A backend terminated while its connection is still being set up (no statement yet,
    SQLSTATE 57P01) is a server that answered: the open is retried, not refused as
    "cannot open database" (a drain started during the fault-injection test died so)."""
    url = create_pg_database(pg_admin)
    try:
        open_database(url, role="test").close()
        with Terminator(pg_admin, str(make_url(url).database)) as terminator:
            # Until 40 connections were terminated mid-open (about 4 s; each open is one
            # connection), not a fixed 300 opens (41 s): enough to land in the setup phase.
            for _ in range(300):
                open_database(url, role="test", log=False).close()
                if terminator.killed >= 40:
                    break
        assert terminator.killed >= 40
    finally:
        drop_pg_database(pg_admin, url)


def _kill_at_the_cluster_query(database: Database, pg_admin: str, times: int) -> list[int]:
    """Terminate the backend of each of the next ``times`` reads of the cluster's
    system_identifier, as it runs; the pids killed so far."""
    killed: list[int] = []

    def kill(conn: object, cursor: Any, statement: str, *_: object) -> None:
        if "pg_control_system" in statement and len(killed) < times:
            killed.append(cursor.connection.info.backend_pid)
            with psycopg.connect(_pg_conninfo(pg_admin), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (killed[-1],))

    event.listen(database.engine, "before_cursor_execute", kill)
    return killed


@pytest.mark.postgres
def test_a_connection_lost_while_reading_the_cluster_is_not_another_database(
    pg_admin: str,
) -> None:
    """Killed at the query for the cluster's system_identifier, the identity was read as
    an "unknown cluster": /health served another fingerprint and a drain under this
    fault stopped on a false IdentityMismatch naming one instance_id twice."""
    url = create_pg_database(pg_admin)
    database = open_database(url, role="test", log=False)
    try:
        killed = _kill_at_the_cluster_query(database, pg_admin, times=1)
        with pytest.raises(DBAPIError) as caught:
            read_identity(database.engine)
        assert killed and connection_lost(caught.value)
        assert read_identity(database.engine).fingerprint == database.identity.fingerprint
    finally:
        database.close()
        drop_pg_database(pg_admin, url)


@pytest.mark.postgres
def test_a_read_the_server_keeps_ending_mid_statement_is_asked_again_past_the_tries(
    pg_admin: str,
) -> None:
    """A server that ran our statement and then ended the connection is up: opening a
    database under a terminator every tenth of a second failed on a loaded machine when
    five opens in a row were ended so (``cannot open database``)."""
    url = create_pg_database(pg_admin)
    database = open_database(url, role="test", log=False)
    try:
        killed = _kill_at_the_cluster_query(database, pg_admin, times=7)
        identity = again_on_lost_connection(lambda: read_identity(database.engine), tries=5)
        assert len(killed) == 7 and identity.fingerprint == database.identity.fingerprint
    finally:
        database.close()
        drop_pg_database(pg_admin, url)


@pytest.mark.postgres
def test_a_drain_survives_postgres_dropping_the_api_connections(
    pg_admin: str, tmp_path: Path
) -> None:
    url = create_pg_database(pg_admin)
    try:
        env = env_for(
            url,
            AUTOPACK_API_TOKEN="operator-token-0123456789",
            AUTOPACK_WORKER_TOKEN="worker-token-0123456789",
        )
        ids = [f"p{i}" for i in range(PHASES)]
        check = 'python -c "import time; time.sleep(0.3)"'
        spec = [phase(p, [f"pkg/{p}.py"], checks=[check]) for p in ids]
        tape = cassette(
            tmp_path,
            [
                line(p, 1, files(**{f"{p}_py": f"V = {i}\n"}), latency_ms=400)
                for i, p in enumerate(ids)
            ],
        )
        with Server(env, tmp_path, autopack_args=["serve"]) as server:
            from tests.executor_support import create_run

            create_run(run_file(tmp_path, spec), {**env, "AUTOPACK_API_URL": server.url}, tmp_path)
            with Terminator(pg_admin, str(make_url(url).database)) as terminator:
                result = drain(
                    "run",
                    *("--run-id", "exec-run", "-k", "4", "--auditor", "rules"),
                    *("--cassette", str(tape), "--replay-speed", "1"),
                    *("--workspace", str(tmp_path / "ws"), "--api-url", server.url),
                    env=env,
                    cwd=tmp_path,
                    timeout=300,
                )
            server_log = server.output()
            assert server.process.poll() is None, server_log[-3000:]
        assert terminator.killed > 0
        assert result.returncode == 0, result.stderr[-5000:]
        summary = json.loads(result.stdout)
        assert set(summary["phase_states"].values()) == {"COMPLETE"}
        assert summary["telemetry_failures"] == 0, result.stderr[-5000:]
        usage = rows(url, "SELECT phase_id, input_tokens, output_tokens FROM llm_usage_events")
        assert sorted(u["phase_id"] for u in usage) == sorted(ids)  # each once, none lost
        estimations = rows(url, "SELECT phase_id FROM token_estimation_v2_events")
        assert sorted(e["phase_id"] for e in estimations) == sorted(ids)
        [run] = rows(url, "SELECT tokens_used FROM runs")
        assert run["tokens_used"] == sum(u["input_tokens"] + u["output_tokens"] for u in usage)
        assert "Traceback" not in server_log, server_log[-5000:]
    finally:
        drop_pg_database(pg_admin, url)


# -- the pieces ---------------------------------------------------------------------------------


def test_a_usage_report_sent_twice_is_counted_once(db: Database) -> None:
    create(db)
    leased = claimed(db)
    report = UsageIn(lease_token=leased.lease_token, tokens=100, cost_usd=0.5)
    first = leases.report_usage(db, "r", "a", report)
    again = leases.report_usage(db, "r", "a", report)  # its answer was lost: sent again
    assert first.phase.tokens_used == again.phase.tokens_used == 100
    assert again.run.tokens_used == 100
    other = UsageIn(lease_token=leased.lease_token, tokens=7, cost_usd=0.0)
    assert leases.report_usage(db, "r", "a", other).phase.tokens_used == 107
    assert phase_row(db, "r", "a")["tokens_used"] == run_row(db)["tokens_used"] == 107
    with pytest.raises(LeaseLost):  # still fenced: a stranger's token is refused
        leases.report_usage(db, "r", "a", UsageIn(lease_token="nope", tokens=1))


def test_a_late_copy_of_an_earlier_usage_report_is_not_counted_again(db: Database) -> None:
    """Reports A, B, then A's first try arriving late (answered by its retry meanwhile):
    only the last key was remembered, so the late A counted a third time and spent the
    budget faster. An attempt's keys are ordered; one older than the last is old."""
    create(db)
    leased = claimed(db)
    nonce = uuid.uuid4().hex

    def report(sequence: int, tokens: int) -> int:
        usage = UsageIn(
            lease_token=leased.lease_token,
            tokens=tokens,
            idempotency_key=ordered_usage_key(nonce, sequence),
        )
        return leases.report_usage(db, "r", "a", usage).phase.tokens_used

    assert report(0, 100) == 100
    assert report(1, 7) == 107
    assert report(0, 100) == 107, "the late copy of report 0"
    assert report(1, 7) == 107, "a retry of the last one"
    assert report(2, 1) == 108
    assert phase_row(db, "r", "a")["tokens_used"] == run_row(db)["tokens_used"] == 108


def test_a_telemetry_event_sent_twice_is_stored_once(db: Database) -> None:
    event = LlmUsageIn(run_id="r", role="builder", provider="p", model="m", success=True)
    first = telemetry.record(db, event)
    assert telemetry.record(db, event) == first
    assert len(telemetry.usage_events(db)) == 1
    telemetry.record(db, event.model_copy(update={"idempotency_key": None}))
    assert len(telemetry.usage_events(db)) == 2  # no key (an old executor): stored as sent


def test_a_telemetry_key_reused_for_another_event_is_a_conflict(db: Database) -> None:
    event = LlmUsageIn(run_id="r", role="builder", provider="p", model="m", success=True)
    first = telemetry.record(db, event)
    other_call = event.model_copy(update={"output_tokens": 900, "cost_usd": 0.5})
    with pytest.raises(Conflict, match=f"{event.idempotency_key!r} was already used"):
        telemetry.record(db, other_call)
    assert [row.output_tokens for row in telemetry.usage_events(db)] == [None]
    assert telemetry.record(db, event) == first  # the real retry still answers its row

    with db.engine.begin() as connection:  # a row stored before its body had a digest
        connection.execute(text("UPDATE llm_usage_events SET body_digest = NULL"))
    assert telemetry.record(db, other_call) == first


def test_telemetry_waits_in_a_queue_and_is_lost_only_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = {"left": 2}
    stored: list[TelemetryEvent] = []

    def post(event: TelemetryEvent) -> int:
        if outage["left"] > 0:
            outage["left"] -= 1
            raise ServerUnavailable("the API is restarting")
        stored.append(event)
        return len(stored)

    recorder = TelemetryRecorder(post, enabled=True)
    first = LlmUsageIn(run_id="r", role="builder", provider="p", model="m", success=True)
    second = first.model_copy(update={"idempotency_key": "second"})
    recorder.record(first)  # the API is away: queued, not lost
    assert (recorder.written, recorder.queued, recorder.lost) == (0, 1, 0)
    recorder.record(second)  # the queue is tried first, still away: both wait, in order
    assert recorder.queued == 2 and not stored
    assert recorder.failures == 0  # the end: the queue gets its last try, and gets through
    assert [e.idempotency_key for e in stored] == [first.idempotency_key, "second"]
    assert recorder.written == 2

    outage["left"] = 10**6
    recorder.record(first)
    with caplog.at_level(logging.WARNING, logger="autopack.telemetry"):
        assert recorder.failures == 1  # still unwritten at the end: counted, once
        assert recorder.failures == 1
    # the summary's "see the telemetry_write_failed warnings above" finds one
    lost = [r for r in caplog.records if r.msg == "telemetry_write_failed"]
    assert len(lost) == 1


class ClosesNewConnections:
    """Closes each of the next ``count`` connections the engine opens as soon as it is open:
    what a server terminating every backend at once looks like to the pool, which then
    gives up a checkout (``This connection is closed``) after reconnecting once."""

    def __init__(self, database: Database) -> None:
        self.database, self.left = database, 0
        event.listen(database.engine, "connect", self._connect)

    def arm(self, count: int) -> None:
        self.left = count
        self.database.engine.dispose()  # the next checkout opens a new connection

    def _connect(self, dbapi_connection: psycopg.Connection[object], _record: object) -> None:
        if self.left > 0:
            self.left -= 1
            dbapi_connection.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_health_read_whose_checkout_the_pool_gives_up_on_is_read_again(db: Database) -> None:
    """/health's read (outside a transaction) let the pool's ``This connection is closed``
    through: executors joining a drain under ``pg_terminate_backend`` got a 503 "the
    database is unavailable" and exited 2 while the database was up."""
    closer = ClosesNewConnections(db)
    closer.arm(4)  # two whole checkouts fail
    identity = again_on_lost_connection(lambda: read_identity(db.engine))
    assert identity.instance_id == db.identity.instance_id and identity.in_sync
    assert closer.left == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_checkout_the_pool_gives_up_on_is_retried_like_a_lost_connection(db: Database) -> None:
    create(db)
    leased = claimed(db)
    closer = ClosesNewConnections(db)
    closer.arm(4)  # two whole checkouts fail
    renewed = leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=leased.lease_token))
    assert renewed.lease_expires_at > leased.lease_expires_at
    assert closer.left == 0
    closer.arm(4)
    report = UsageIn(lease_token=leased.lease_token, tokens=5, cost_usd=0.0)
    assert leases.report_usage(db, "r", "a", report).phase.tokens_used == 5
    assert closer.left == 0


def test_a_sqlite_file_replaced_or_removed_under_the_server_is_refused_not_split(
    tmp_path: Path,
) -> None:
    # SQLite went on: the pooled connections wrote to the unlinked file (lost at exit), new
    # ones read the new file through the old -wal, and /health gave two instance_ids
    live, other = tmp_path / "autopack.db", tmp_path / "other.db"
    run = {"tiers": [{"tier_id": "T", "name": "t", "phases": [{"phase_id": "a", "name": "a"}]}]}
    made = cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=f"sqlite:///{other}"))
    assert made.returncode == 0, made.stderr
    with Server(clean_env(DATABASE_URL=empty_sqlite(live)), cwd=tmp_path) as server:
        assert httpx.post(f"{server.url}/runs", json={"run_id": "r1", **run}).status_code == 201
        for word in ("replaced", "removed"):
            if word == "replaced":
                other.rename(live)
            else:
                live.unlink()
            for _ in range(3):  # every pooled connection, not just the next one
                refused = httpx.post(f"{server.url}/runs", json={"run_id": "r2", **run})
                assert refused.status_code == 503, refused.text
                assert word in refused.json()["detail"] and str(live) in refused.json()["detail"]
            assert httpx.get(f"{server.url}/health").status_code == 503
        assert not live.exists()  # no empty database made where it was
        assert "Traceback" not in server.output()


def test_a_postgres_database_dropped_and_made_again_under_the_server_is_not_served(
    pg_admin: str, tmp_path: Path
) -> None:
    # the server reconnected to the new database of the same name and served it (/health
    # "ok" with the new instance_id, runs created there) as if it were the one it opened
    url = create_pg_database(pg_admin)
    run = {"tiers": [{"tier_id": "T", "name": "t", "phases": [{"phase_id": "a", "name": "a"}]}]}
    try:
        assert cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=url)).returncode == 0
        with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
            opened = server.wait_healthy()["database"]["instance_id"]
            assert httpx.post(f"{server.url}/runs", json={"run_id": "r1", **run}).status_code == 201
            drop_pg_database(pg_admin, url)
            with psycopg.connect(_pg_conninfo(pg_admin), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{make_url(url).database}"')
            assert cli("db", "init", cwd=tmp_path, env=clean_env(DATABASE_URL=url)).returncode == 0
            refused = httpx.post(f"{server.url}/runs", json={"run_id": "r2", **run})
            assert refused.status_code == 503, refused.text
            assert opened in refused.json()["detail"] and "no longer" in refused.json()["detail"]
            assert httpx.get(f"{server.url}/health").status_code == 503
            assert "Traceback" not in server.output()
    finally:
        drop_pg_database(pg_admin, url)


@pytest.mark.postgres
def test_a_connection_lost_while_checking_its_database_is_retried_not_refused(
    pg_admin: str,
) -> None:
    """Each new connection checks it reaches the database this process opened; a backend
    terminated during that check (what the terminator above does at any moment) was
    read as "no db_meta there" and refused as another database, 503 instead of a retry."""
    url = create_pg_database(pg_admin)
    database = open_database(url, role="test", log=False)
    try:
        killed: list[int] = []

        def kill_once_connected(dbapi_connection: Any, _record: object) -> None:
            if not killed:
                killed.append(dbapi_connection.info.backend_pid)
                with psycopg.connect(_pg_conninfo(pg_admin), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (killed[0],))

        event.listen(database.engine, "connect", kill_once_connected, insert=True)
        database.engine.dispose()  # every connection from here on is new
        found = run_transaction(database, lambda tx: tx.conn.execute(text("SELECT 1")).scalar())
        assert killed and found == 1
    finally:
        database.close()
        drop_pg_database(pg_admin, url)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_pool_whose_every_connection_stays_busy_is_a_503_not_a_500(db: Database) -> None:
    """Requests waiting on a lock another session holds (``VACUUM FULL``, a migration, a
    ``LOCK TABLE`` in psql) each keep a connection: once the pool had none left for its
    timeout, SQLAlchemy's ``TimeoutError`` was a bare 500, which executors take for a
    server fault. It is the 503 a client retries, saying why."""
    create(db)
    small = dataclasses.replace(
        db, engine=create_engine(db.engine.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    )
    try:
        with small.engine.connect():  # the one connection, busy
            with pytest.raises(DatabaseUnavailable, match=r"stayed in use for 0\.2 s"):
                claim(small)  # a transaction
            with pytest.raises(DatabaseUnavailable, match="pg_stat_activity"):
                leases.heartbeat(small, "r", "a", HeartbeatIn(lease_token="t", lease_seconds=60))
        assert claimed(small).phase_id == "a", "a connection free again serves as before"
    finally:
        small.engine.dispose()
