"""Telemetry endpoints: executors post events here; the dashboard and reports read them."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, status

from autopack.api.deps import DatabaseDep
from autopack.db import telemetry as rows
from autopack.estimation.report import estimation_report
from autopack.telemetry.events import LlmUsageIn, TokenBudgetEscalationIn, TokenEstimationIn

router = APIRouter(prefix="/telemetry", tags=["telemetry"])


@router.post("/llm-usage", status_code=status.HTTP_201_CREATED)
def post_llm_usage(event: LlmUsageIn, database: DatabaseDep) -> dict[str, int]:
    with database.session() as session:
        return {"id": rows.record_llm_usage(session, event)}


@router.post("/estimations", status_code=status.HTTP_201_CREATED)
def post_estimation(event: TokenEstimationIn, database: DatabaseDep) -> dict[str, int]:
    with database.session() as session:
        return {"id": rows.record_estimation(session, event)}


@router.post("/escalations", status_code=status.HTTP_201_CREATED)
def post_escalation(event: TokenBudgetEscalationIn, database: DatabaseDep) -> dict[str, int]:
    with database.session() as session:
        return {"id": rows.record_escalation(session, event)}


@router.get("/events")
def get_events(
    database: DatabaseDep,
    run_id: str | None = None,
    kind: Literal["usage", "estimation", "escalation"] = "usage",
    limit: int = Query(500, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    reader = {
        "usage": rows.usage_events,
        "estimation": rows.estimation_events,
        "escalation": rows.escalation_events,
    }[kind]
    with database.session() as session:
        return reader(session, run_id=run_id, limit=limit)


@router.get("/summary")
def get_summary(database: DatabaseDep, run_id: str | None = None) -> dict[str, Any]:
    """Usage by run/model/role and the estimator's accuracy per stratum."""
    with database.session() as session:
        usage = rows.usage_summary(session, run_id)
        events = rows.estimation_events(session, run_id)
    return {"usage": usage, "estimation": estimation_report(events).to_json()}
