"""Telemetry: the one writer of LLM usage, estimation and escalation rows, and their readers.

The API's telemetry routes, the dashboard, ``/metrics``, ``telemetry report`` and the
probe all read through these functions (the CLI over HTTP), so there is one answer to
"what did the LLM calls cost" wherever it is asked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from autopack import redact
from autopack.db import Database
from autopack.db import telemetry as telemetry_sql
from autopack.db.transaction import Tx, run_transaction
from autopack.errors import Conflict
from autopack.estimation.report import estimation_report
from autopack.telemetry.events import (
    EventKind,
    LlmUsageRow,
    TelemetryCounts,
    TelemetryEvent,
    TokenBudgetEscalationRow,
    TokenEstimationRow,
    UsageSummaryRow,
    kind_of,
)
from autopack.telemetry.summary import TelemetrySummary

E = TypeVar("E", bound=BaseModel)
MAX_PAGE = 10_000


def record(database: Database, event: TelemetryEvent) -> int:
    """Insert one event (its text redacted); its row id. An event whose idempotency key is
    already stored (a post retried after its answer was lost) is not stored again: the
    answer is the stored row's id. The same key with another body is no retry but a
    client reusing keys: a :class:`Conflict`, so the second event is not lost unheard.
    A ``ts`` the client left out is made here, at each post: not part of the body a retry
    repeats (it made every exact retry of such a post a 409)."""
    kind = kind_of(event)
    row = redact.data(event.model_dump())
    sent = row if "ts" in event.model_fields_set else {k: v for k, v in row.items() if k != "ts"}
    digest = body_digest(sent)

    def insert(tx: Tx) -> int:
        inserted = tx.scalar(
            telemetry_sql.INSERT_ONCE[(kind, tx.pg)], {**row, "body_digest": digest}
        )
        if inserted is not None:
            return int(inserted)
        # ON CONFLICT DO NOTHING: this key is stored already
        stored = tx.row(telemetry_sql.STORED_BY_KEY[kind], {"b_key": event.idempotency_key})
        assert stored is not None
        if stored["body_digest"] not in (None, digest):  # None: stored before 0007
            raise Conflict(
                f"idempotency_key {event.idempotency_key!r} was already used for another "
                f"{kind} event (row {stored['id']}); a retry must repeat the body it was "
                "first posted with",
                idempotency_key=event.idempotency_key,
            )
        return int(stored["id"])

    return run_transaction(database, insert)


def body_digest(row: Mapping[str, Any]) -> str:
    """What a retry must repeat: the redacted row, keys sorted, times as text."""
    text = json.dumps(row, sort_keys=True, default=str, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def set_phase_outcome(tx: Tx, run_id: str, phase_id: str, outcome: str) -> None:
    """Runs inside the transaction that ends the phase (result, lease expiry, approval)."""
    tx.execute(
        telemetry_sql.SET_PHASE_OUTCOME,
        {"b_run": run_id, "b_phase": phase_id, "b_outcome": outcome},
    )


def _events(
    database: Database,
    kind: EventKind,
    row_type: type[E],
    run_id: str | None,
    limit: int,
    after_id: int,
) -> list[E]:
    params: dict[str, Any] = {"b_after": after_id, "b_limit": limit}
    if run_id is not None:
        params["b_run"] = run_id
    statement = telemetry_sql.EVENTS[(kind, run_id is not None)]
    found = run_transaction(database, lambda tx: tx.rows(statement, params))
    return [row_type.model_validate(dict(row)) for row in found]


def usage_events(
    database: Database, run_id: str | None = None, limit: int = MAX_PAGE, after_id: int = 0
) -> list[LlmUsageRow]:
    return _events(database, "usage", LlmUsageRow, run_id, limit, after_id)


def estimation_events(
    database: Database, run_id: str | None = None, limit: int = MAX_PAGE, after_id: int = 0
) -> list[TokenEstimationRow]:
    return _events(database, "estimation", TokenEstimationRow, run_id, limit, after_id)


def escalation_events(
    database: Database, run_id: str | None = None, limit: int = MAX_PAGE, after_id: int = 0
) -> list[TokenBudgetEscalationRow]:
    return _events(database, "escalation", TokenBudgetEscalationRow, run_id, limit, after_id)


def all_estimation_events(
    database: Database, run_id: str | None = None
) -> list[TokenEstimationRow]:
    """Every estimation event (paged through, so no single answer is unbounded)."""
    found: list[TokenEstimationRow] = []
    while True:
        page = estimation_events(database, run_id, MAX_PAGE, found[-1].id if found else 0)
        found += page
        if len(page) < MAX_PAGE:
            return found


def usage_summary(database: Database, run_id: str | None = None) -> list[UsageSummaryRow]:
    """Calls, tokens and cost grouped by run, provider, model and role."""
    params = {"b_run": run_id} if run_id is not None else {}
    statement = telemetry_sql.USAGE_SUMMARY[run_id is not None]
    found = run_transaction(database, lambda tx: tx.rows(statement, params))
    return [UsageSummaryRow.model_validate(dict(row)) for row in found]


def summary(database: Database, run_id: str | None = None) -> TelemetrySummary:
    """Usage by run/model/role and the estimator's accuracy per stratum."""
    events = all_estimation_events(database, run_id)
    report = estimation_report(as_mappings(events))
    return TelemetrySummary(usage=usage_summary(database, run_id), estimation=report)


def phase_counts(database: Database, run_id: str, phase_id: str) -> TelemetryCounts:
    """Rows per telemetry table for one phase."""
    params = {"b_run": run_id, "b_phase": phase_id}

    def work(tx: Tx) -> TelemetryCounts:
        counts = {
            kind: tx.count(telemetry_sql.COUNT_FOR_PHASE[kind], params)
            for kind in telemetry_sql.TABLES
        }
        return TelemetryCounts(
            llm_usage_events=counts["usage"],
            token_estimation_v2_events=counts["estimation"],
            token_budget_escalation_events=counts["escalation"],
        )

    return run_transaction(database, work)


def as_mappings(events: Sequence[BaseModel]) -> list[dict[str, Any]]:
    """Events as the estimation library reads them (by column name)."""
    return [event.model_dump() for event in events]
