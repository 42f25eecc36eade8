"""Approvals: list, approve, reject (expiry is the maintenance task's job)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from autopack.api.deps import DatabaseDep
from autopack.api.schemas import ApprovalView, DecidedApproval, DecisionIn
from autopack.db import work

router = APIRouter(prefix="/approvals", tags=["approvals"])

StatusFilter = Literal["pending", "approved", "rejected", "expired", "cancelled", "all"]


@router.get("", response_model=list[ApprovalView])
def list_approvals(
    database: DatabaseDep,
    status: Annotated[StatusFilter, Query()] = "pending",
    run_id: Annotated[str | None, Query()] = None,
) -> list[dict[str, Any]]:
    """Approvals, oldest first (``status=all`` for every status)."""
    return work.list_approvals(database, status=None if status == "all" else status, run_id=run_id)


@router.post("/{approval_id}/approve", response_model=DecidedApproval)
def approve(approval_id: int, body: DecisionIn, database: DatabaseDep) -> dict[str, Any]:
    """The phase goes back to QUEUED; its next claim carries the approved change."""
    return work.decide_approval(
        database, approval_id, approve=True, responder=body.responder, note=body.note
    )


@router.post("/{approval_id}/reject", response_model=DecidedApproval)
def reject(approval_id: int, body: DecisionIn, database: DatabaseDep) -> dict[str, Any]:
    """The phase FAILS with stop_reason approval_rejected."""
    return work.decide_approval(
        database, approval_id, approve=False, responder=body.responder, note=body.note
    )
