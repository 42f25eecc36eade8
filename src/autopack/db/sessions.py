"""Dashboard sessions that were logged out, so that their cookies open nothing any more.

A session is a stateless HMAC (:mod:`autopack.api.auth`); logging out deletes the cookie
in that browser only. A copy of it (another browser, a proxy's log, a shared machine)
stayed valid for its 12 hours. Log out therefore records the session's digest here until
it would have expired, and every dashboard request with a session asks this table. The
digest, not the cookie: the table holds nothing that would open the dashboard.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite

from autopack.db import Database
from autopack.db.models import EndedSession
from autopack.db.transaction import Tx, again_on_lost_connection, run_transaction

ENDED = cast(Table, EndedSession.__table__)
_INSERT_ONCE = {
    pg: (postgresql.insert if pg else sqlite.insert)(ENDED).on_conflict_do_nothing(
        index_elements=["session_digest"]
    )
    for pg in (False, True)
}
"""Record a session as ended (twice is once), by PostgreSQL?"""
_FORGET_EXPIRED = delete(ENDED).where(ENDED.c.expires_at < bindparam("b_now"))
_IS_ENDED = select(exists().where(ENDED.c.session_digest == bindparam("b_digest")))


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).hexdigest()


def end_session(database: Database, cookie: str, expires_at: datetime) -> None:
    """The session ``cookie`` (a valid one) ends now; rows of expired sessions go. A
    transaction retried on a new connection like the control plane's (recording an end
    twice is once): a backend the server ended mid-way answered the operator a 500."""

    def work(tx: Tx) -> None:
        tx.execute(_FORGET_EXPIRED, {"b_now": datetime.now(UTC)})
        tx.execute(
            _INSERT_ONCE[database.postgresql],
            {"session_digest": _digest(cookie), "expires_at": expires_at},
        )

    run_transaction(database, work)


def session_ended(database: Database, cookie: str) -> bool:
    """Was the session ``cookie`` logged out? Asked again on a new connection when the
    server ended ours (every dashboard page asks: it was a 500 then)."""

    def read() -> bool:
        with database.single_statement() as connection:
            return bool(connection.execute(_IS_ENDED, {"b_digest": _digest(cookie)}).scalar())

    return again_on_lost_connection(read)
