"""One transaction as the control plane uses it: a connection, one ``now``, and typed reads.

Every rule of :mod:`autopack.control` runs inside :func:`run_transaction`, which opens a
Core connection (:meth:`Database.transaction`), hands it over as a :class:`Tx` and
commits when the work returns. The work is retried, on a fresh connection, when
PostgreSQL resolved a deadlock or a serialization conflict by aborting it (nothing was
applied, so running it again is the whole recovery).

Rows leave this layer as typed records (:mod:`autopack.db.records`): ``tx.one(PhaseRecord,
statement, params)`` rather than a mapping indexed by column names.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from sqlalchemy import Connection, RowMapping
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from autopack.clock import utcnow
from autopack.identity import DbIdentity
from autopack.logs import log_event

if TYPE_CHECKING:
    from autopack.db import Database

logger = logging.getLogger("autopack.db")

T = TypeVar("T")
R = TypeVar("R", bound="FromRow")
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure
MAX_TRANSACTION_TRIES = 5


class FromRow(Protocol):
    """A typed record that can be built from a result row (:mod:`autopack.db.records`)."""

    @classmethod
    def from_row(cls: type[R], row: RowMapping, prefix: str = "") -> R: ...


@dataclass
class Tx:
    """One transaction: its connection, its single ``now``, and the database it is in."""

    conn: Connection
    now: datetime
    identity: DbIdentity
    pg: bool

    def execute(self, statement: Executable, params: Params | None = None) -> CursorResult[Any]:
        return self.conn.execute(statement, params)

    def row(self, statement: Executable, params: Params | None = None) -> RowMapping | None:
        return self.execute(statement, params).mappings().first()

    def rows(self, statement: Executable, params: Params | None = None) -> Sequence[RowMapping]:
        return self.execute(statement, params).mappings().all()

    def one(self, record: type[R], statement: Executable, params: Params | None = None) -> R | None:
        """The first row as a ``record``, or None."""
        found = self.row(statement, params)
        return None if found is None else record.from_row(found)

    def all(self, record: type[R], statement: Executable, params: Params | None = None) -> list[R]:
        return [record.from_row(found) for found in self.rows(statement, params)]

    def scalar(self, statement: Executable, params: Params | None = None) -> Any:
        return self.execute(statement, params).scalar()

    def count(self, statement: Executable, params: Params | None = None) -> int:
        return int(cast(int, self.execute(statement, params).scalar_one()))

    def where(self) -> str:
        """Which database, for messages: a 404 must say where it looked."""
        return f"database {self.identity.public_url} (instance_id {self.identity.instance_id})"


def run_transaction(database: Database, work: Callable[[Tx], T]) -> T:
    """Run ``work`` in one transaction; retry it on a PostgreSQL deadlock or serialization
    failure (nothing was applied), raise everything else."""
    for attempt in range(1, MAX_TRANSACTION_TRIES + 1):
        try:
            with database.transaction() as connection:
                return work(Tx(connection, utcnow(), database.identity, database.postgresql))
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in RETRYABLE_SQLSTATES or attempt == MAX_TRANSACTION_TRIES:
                raise
            log_event(logger, "transaction_retry", logging.WARNING, sqlstate=code, tries=attempt)
            time.sleep(random.uniform(0, 0.02 * attempt))
    raise AssertionError("unreachable")
