"""Telemetry endpoints: executors post events here (worker token); the dashboard and
reports read them (operator token: rows hold error messages and costs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from autopack.api.auth import OPERATOR, WORKER
from autopack.api.body import UniqueKeysRoute
from autopack.api.deps import DatabaseDep, RunFilter
from autopack.api.openapi import READ, SECURED, WRITE
from autopack.bounds import ID_PATTERN, INT32_MAX
from autopack.control import telemetry
from autopack.telemetry.events import (
    EventKind,
    LlmUsageIn,
    LlmUsageRow,
    TelemetryCounts,
    TokenBudgetEscalationIn,
    TokenBudgetEscalationRow,
    TokenEstimationIn,
    TokenEstimationRow,
)
from autopack.telemetry.summary import TelemetrySummary

router = APIRouter(
    route_class=UniqueKeysRoute,
    prefix="/telemetry",
    tags=["telemetry"],
    responses={**SECURED, **READ},
)

EventRows = list[LlmUsageRow] | list[TokenEstimationRow] | list[TokenBudgetEscalationRow]


@router.post(
    "/llm-usage", status_code=status.HTTP_201_CREATED, dependencies=[WORKER], responses=WRITE
)
def post_llm_usage(event: LlmUsageIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.post(
    "/estimations", status_code=status.HTTP_201_CREATED, dependencies=[WORKER], responses=WRITE
)
def post_estimation(event: TokenEstimationIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.post(
    "/escalations", status_code=status.HTTP_201_CREATED, dependencies=[WORKER], responses=WRITE
)
def post_escalation(event: TokenBudgetEscalationIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.get("/events", dependencies=[OPERATOR])
def get_events(
    database: DatabaseDep,
    run_id: RunFilter = None,
    kind: EventKind = "usage",
    limit: Annotated[int, Query(ge=1, le=telemetry.MAX_PAGE)] = 500,
    after_id: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="Page: events with a larger id.")
    ] = 0,
) -> EventRows:
    """Events of one kind, oldest first."""
    if kind == "usage":
        return telemetry.usage_events(database, run_id, limit, after_id)
    if kind == "estimation":
        return telemetry.estimation_events(database, run_id, limit, after_id)
    return telemetry.escalation_events(database, run_id, limit, after_id)


@router.get("/summary", dependencies=[OPERATOR])
def get_summary(database: DatabaseDep, run_id: RunFilter = None) -> TelemetrySummary:
    """Usage by run/model/role and the estimator's accuracy per stratum."""
    return telemetry.summary(database, run_id)


@router.get("/counts", dependencies=[OPERATOR])
def get_counts(
    database: DatabaseDep,
    run_id: Annotated[str, Query(pattern=ID_PATTERN, max_length=200)],
    phase_id: Annotated[str, Query(pattern=ID_PATTERN, max_length=200)],
) -> TelemetryCounts:
    """Rows per telemetry table for one phase (what the probe compares before and after)."""
    return telemetry.phase_counts(database, run_id, phase_id)
