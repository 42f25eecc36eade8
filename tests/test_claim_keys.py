"""Claim keys against the control plane itself (real SQLite and PostgreSQL): a key is one
claim and its retries, never a second lease nor a lease outside what the claim asks for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import make_url

from autopack.clock import utcnow
from autopack.contract import Claim, ClaimIn
from autopack.control import claims
from autopack.db import Database, open_database
from autopack.errors import Conflict
from tests.conftest import create_pg_database, drop_pg_database
from tests.cp_support import attempt_rows, create, expire_lease, states

KEY = "0123456789abcdef0123456789abcdef"


def _claim(db: Database, run_id: str | None, phase_id: str | None = None) -> Claim | None:
    request = ClaimIn(worker_id="w", run_id=run_id, phase_id=phase_id, claim_key=KEY)
    return claims.claim(db, request)


def test_a_key_of_a_held_lease_never_returns_it_to_a_claim_asking_for_another_phase(
    db: Database,
) -> None:
    """A claim naming run r2 (or phase r/b) under the key of the lease on r/a was answered
    with r/a: a lease outside what it asked for. It is a 409 naming the key; the claim the
    key was made for (same filter, or none) still gets its lease back."""
    create(db, "r", (("T1", ["a", "b"]),))
    create(db, "r2", (("T1", ["a"]),))
    first = _claim(db, "r")
    assert first is not None and (first.run_id, first.phase_id) == ("r", "a")
    for run_id, phase_id in (("r2", None), ("r2", "a"), ("r", "b")):
        with pytest.raises(Conflict, match=f"claim_key {KEY} .* phase r/a"):
            _claim(db, run_id, phase_id)
    assert _claim(db, "r") == first
    assert _claim(db, "r", "a") == first
    assert _claim(db, None) == first
    assert states(db, "r") == {"a": "EXECUTING", "b": "QUEUED"}
    assert states(db, "r2") == {"a": "QUEUED"}
    assert len(attempt_rows(db, "r")) == 1


def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a lock wait shows only in ``pg_stat_activity``) for up to 20 s."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _waiting_backends(admin_url: str, database: str) -> int:
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
def test_two_concurrent_tries_of_one_claim_lease_one_phase_on_postgresql(
    pg_admin: str,
) -> None:
    """Under READ COMMITTED a retry arriving while the first try's transaction was still
    open (a client that timed out on a slow server) did not see its attempt and leased a
    second phase: two leases under one key, the first known to nobody until it expired.
    The first try is held open here by a lock on its run's row (it starts the run)."""
    url = create_pg_database(pg_admin)
    db = open_database(url, role="test", log=False, create=True)
    try:
        create(db, "r", (("T1", ["a", "b"]),))
        answers: list[Claim | None] = []

        def try_claim() -> None:
            answers.append(_claim(db, "r"))

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo) as blocker:
            blocker.execute("SELECT 1 FROM runs WHERE id = 'r' FOR UPDATE")
            tries = [threading.Thread(target=try_claim) for _ in range(2)]
            tries[0].start()
            database = str(make_url(url).database)
            _until(lambda: _waiting_backends(pg_admin, database) == 1)  # on the run row
            tries[1].start()
            # The second waits for the first (unserialised: it leases b, then waits on the run).
            _until(lambda: _waiting_backends(pg_admin, database) == 2)
            blocker.rollback()
            for thread in tries:
                thread.join(timeout=30)
        assert len(answers) == 2 and answers[0] is not None
        assert answers[0] == answers[1]
        assert states(db, "r") == {"a": "EXECUTING", "b": "QUEUED"}
        assert len(attempt_rows(db, "r")) == 1
    finally:
        db.close()
        drop_pg_database(pg_admin, url)


def test_a_retry_after_its_lease_expired_unreclaimed_renews_it(db: Database) -> None:
    """The retry of a claim with a short lease came after the lease expired (not yet
    reclaimed) and got it as it was, expired: the next claim reclaimed it while its worker
    began the attempt (and spent the attempt). The retry renews it, like a heartbeat."""
    create(db, "r", (("T1", ["a", "b"]),))
    first = claims.claim(db, ClaimIn(worker_id="w", run_id="r", lease_seconds=5, claim_key=KEY))
    assert first is not None
    expire_lease(db, "r", "a")
    again = claims.claim(db, ClaimIn(worker_id="w", run_id="r", lease_seconds=5, claim_key=KEY))
    assert again is not None and again.lease_token == first.lease_token
    assert again.lease_expires_at > utcnow()
    other = claims.claim(db, ClaimIn(worker_id="x", run_id="r"))
    assert other is not None and other.phase_id == "b"
    assert states(db, "r") == {"a": "EXECUTING", "b": "EXECUTING"}
    assert [row["attempt"] for row in attempt_rows(db, "r", "a")] == [1]
