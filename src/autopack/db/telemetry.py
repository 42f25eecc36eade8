"""Every statement that writes or reads telemetry rows.

Writers take the validated event models of :mod:`autopack.telemetry.events`; the column
set is checked by a test, so a field without a column cannot be silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, case, func, select, update
from sqlalchemy.orm import Session

from autopack.db.models import LlmUsageEvent, TokenBudgetEscalationEvent, TokenEstimationEvent
from autopack.telemetry.events import LlmUsageIn, TokenBudgetEscalationIn, TokenEstimationIn

TELEMETRY_TABLES: dict[str, Any] = {
    "llm_usage_events": LlmUsageEvent,
    "token_estimation_v2_events": TokenEstimationEvent,
    "token_budget_escalation_events": TokenBudgetEscalationEvent,
}


def record_llm_usage(session: Session, event: LlmUsageIn) -> int:
    row = LlmUsageEvent(**event.model_dump())
    session.add(row)
    session.flush()
    return row.id


def record_estimation(session: Session, event: TokenEstimationIn) -> int:
    row = TokenEstimationEvent(**event.model_dump())
    session.add(row)
    session.flush()
    return row.id


def record_escalation(session: Session, event: TokenBudgetEscalationIn) -> int:
    row = TokenBudgetEscalationEvent(**event.model_dump())
    session.add(row)
    session.flush()
    return row.id


_ESTIMATIONS = cast(Table, TokenEstimationEvent.__table__)
_SET_OUTCOME = (
    update(_ESTIMATIONS)
    .where(
        _ESTIMATIONS.c.run_id == bindparam("b_run"),
        _ESTIMATIONS.c.phase_id == bindparam("b_phase"),
    )
    .values(phase_outcome=bindparam("b_outcome"))
)


def set_phase_outcome(connection: Connection, run_id: str, phase_id: str, outcome: str) -> None:
    """Join the phase's final state onto its estimation events when the phase ends.

    Runs inside the transaction that ends the phase (on every result, so it is a statement
    built once: an ORM bulk update cost ten times its CPU).
    """
    connection.execute(_SET_OUTCOME, {"b_run": run_id, "b_phase": phase_id, "b_outcome": outcome})


def phase_row_counts(session: Session, run_id: str, phase_id: str) -> dict[str, int]:
    """Telemetry rows for one phase, per table (the probe's before/after)."""
    return {
        name: session.execute(
            select(func.count())
            .select_from(model)
            .where(model.run_id == run_id, model.phase_id == phase_id)
        ).scalar_one()
        for name, model in TELEMETRY_TABLES.items()
    }


def _rows(session: Session, model: Any, run_id: str | None, limit: int | None) -> list[Any]:
    query = select(model).order_by(model.id)
    if run_id is not None:
        query = query.where(model.run_id == run_id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query).scalars())


def _as_dict(row: Any) -> dict[str, Any]:
    return {column.name: getattr(row, column.name) for column in row.__table__.columns}


def usage_events(
    session: Session, run_id: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    return [_as_dict(r) for r in _rows(session, LlmUsageEvent, run_id, limit)]


def estimation_events(
    session: Session, run_id: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    return [_as_dict(r) for r in _rows(session, TokenEstimationEvent, run_id, limit)]


def escalation_events(
    session: Session, run_id: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    return [_as_dict(r) for r in _rows(session, TokenBudgetEscalationEvent, run_id, limit)]


def usage_summary(session: Session, run_id: str | None = None) -> list[dict[str, Any]]:
    """Calls, tokens and cost grouped by run, model and role (failed calls counted apart)."""
    model = LlmUsageEvent
    query = select(
        model.run_id,
        model.provider,
        model.model,
        model.role,
        func.count().label("calls"),
        func.sum(case((model.success.is_(False), 1), else_=0)).label("failed_calls"),
        func.coalesce(func.sum(model.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(model.output_tokens), 0).label("output_tokens"),
        func.sum(model.cost_usd).label("cost_usd"),
        func.count(model.cost_usd).label("priced_calls"),
    ).group_by(model.run_id, model.provider, model.model, model.role)
    if run_id is not None:
        query = query.where(model.run_id == run_id)
    rows: Sequence[Any] = session.execute(query.order_by(model.run_id, model.model)).all()
    return [dict(row._mapping) for row in rows]
