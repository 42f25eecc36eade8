"""Telemetry endpoints: executors post events here; the dashboard and reports read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from autopack.api.deps import DatabaseDep
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

router = APIRouter(prefix="/telemetry", tags=["telemetry"])

EventRows = list[LlmUsageRow] | list[TokenEstimationRow] | list[TokenBudgetEscalationRow]


@router.post("/llm-usage", status_code=status.HTTP_201_CREATED)
def post_llm_usage(event: LlmUsageIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.post("/estimations", status_code=status.HTTP_201_CREATED)
def post_estimation(event: TokenEstimationIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.post("/escalations", status_code=status.HTTP_201_CREATED)
def post_escalation(event: TokenBudgetEscalationIn, database: DatabaseDep) -> dict[str, int]:
    return {"id": telemetry.record(database, event)}


@router.get("/events")
def get_events(
    database: DatabaseDep,
    run_id: str | None = None,
    kind: EventKind = "usage",
    limit: Annotated[int, Query(ge=1, le=telemetry.MAX_PAGE)] = 500,
    after_id: Annotated[int, Query(ge=0, description="Page: events with a larger id.")] = 0,
) -> EventRows:
    """Events of one kind, oldest first."""
    if kind == "usage":
        return telemetry.usage_events(database, run_id, limit, after_id)
    if kind == "estimation":
        return telemetry.estimation_events(database, run_id, limit, after_id)
    return telemetry.escalation_events(database, run_id, limit, after_id)


@router.get("/summary")
def get_summary(database: DatabaseDep, run_id: str | None = None) -> TelemetrySummary:
    """Usage by run/model/role and the estimator's accuracy per stratum."""
    return telemetry.summary(database, run_id)


@router.get("/counts")
def get_counts(database: DatabaseDep, run_id: str, phase_id: str) -> TelemetryCounts:
    """Rows per telemetry table for one phase (what the probe compares before and after)."""
    return telemetry.phase_counts(database, run_id, phase_id)
