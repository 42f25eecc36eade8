"""Every statement that writes, reads or counts telemetry rows, by name.

Writers insert the validated events of :mod:`autopack.telemetry.events` column for column;
a test checks every event field is a real column, so nothing is silently dropped.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Insert, Select, Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from autopack.db.models import LlmUsageEvent, TokenBudgetEscalationEvent, TokenEstimationEvent
from autopack.telemetry.events import REPLAY_PROVIDER, EventKind

USAGE = cast(Table, LlmUsageEvent.__table__)
ESTIMATIONS = cast(Table, TokenEstimationEvent.__table__)
ESCALATIONS = cast(Table, TokenBudgetEscalationEvent.__table__)

TABLES: dict[EventKind, Table] = {
    "usage": USAGE,
    "estimation": ESTIMATIONS,
    "escalation": ESCALATIONS,
}
"""Each kind of telemetry event and its table."""

INSERT_ONCE: dict[tuple[EventKind, bool], Insert] = {
    (kind, pg): (postgresql.insert if pg else sqlite.insert)(table)
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(table.c.id)
    for kind, table in TABLES.items()
    for pg in (False, True)
}
"""Insert unless the idempotency key is stored (no row then), by (kind, PostgreSQL?)."""

STORED_BY_KEY: dict[EventKind, Select[Any]] = {
    kind: select(table.c.id, table.c.body_digest).where(
        table.c.idempotency_key == bindparam("b_key")
    )
    for kind, table in TABLES.items()
}
"""The row an idempotency key was stored with and its body's digest (a retried post
answers with the row; another body under the key is a conflict)."""

SET_PHASE_OUTCOME = (
    update(ESTIMATIONS)
    .where(
        ESTIMATIONS.c.run_id == bindparam("b_run"), ESTIMATIONS.c.phase_id == bindparam("b_phase")
    )
    .values(phase_outcome=bindparam("b_outcome"))
)
"""Join a phase's final state onto its estimation events, when the phase ends."""

COUNT_FOR_PHASE: dict[EventKind, Select[Any]] = {
    kind: select(func.count())
    .select_from(table)
    .where(table.c.run_id == bindparam("b_run"), table.c.phase_id == bindparam("b_phase"))
    for kind, table in TABLES.items()
}


def _events(table: Table, *, by_run: bool) -> Select[Any]:
    statement = (
        select(table)
        .where(table.c.id > bindparam("b_after"))
        .order_by(table.c.id)
        .limit(bindparam("b_limit"))
    )
    return statement.where(table.c.run_id == bindparam("b_run")) if by_run else statement


EVENTS: dict[tuple[EventKind, bool], Select[Any]] = {
    (kind, by_run): _events(table, by_run=by_run)
    for kind, table in TABLES.items()
    for by_run in (False, True)
}
"""Events oldest first after id ``b_after`` (paging), at most ``b_limit``, of all runs or one."""


_cost_unknown = and_(
    USAGE.c.cost_usd.is_(None),
    or_(USAGE.c.input_tokens.is_not(None), USAGE.c.output_tokens.is_not(None)),
)
"""A call that used tokens but has no cost: its model has no price. A refused request
(a 404, a 429) reported no tokens, so it cost nothing whatever its model's price."""


UNPRICED_CALLS_OF_RUNS = (
    select(USAGE.c.run_id, func.count().label("n"))
    .where(
        USAGE.c.run_id.in_(bindparam("b_runs", expanding=True)),
        USAGE.c.provider != REPLAY_PROVIDER,
        _cost_unknown,
    )
    .group_by(USAGE.c.run_id)
)
"""Per run, its calls whose cost is unknown (a replayed call was never billed)."""


def _usage_summary(*, by_run: bool) -> Select[Any]:
    statement = (
        select(
            USAGE.c.run_id,
            USAGE.c.provider,
            USAGE.c.model,
            USAGE.c.role,
            func.count().label("calls"),
            func.sum(case((USAGE.c.success.is_(False), 1), else_=0)).label("failed_calls"),
            func.coalesce(func.sum(USAGE.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(USAGE.c.output_tokens), 0).label("output_tokens"),
            func.sum(USAGE.c.cost_usd).label("cost_usd"),
            func.sum(case((_cost_unknown, 1), else_=0)).label("unpriced_calls"),
        )
        .group_by(USAGE.c.run_id, USAGE.c.provider, USAGE.c.model, USAGE.c.role)
        .order_by(USAGE.c.run_id, USAGE.c.model)
    )
    return statement.where(USAGE.c.run_id == bindparam("b_run")) if by_run else statement


USAGE_SUMMARY = {by_run: _usage_summary(by_run=by_run) for by_run in (False, True)}
"""Calls, tokens and cost grouped by run, provider, model and role (failures counted apart)."""
