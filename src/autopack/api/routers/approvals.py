"""Approvals: list, read one, approve, reject (expiry is the maintenance task's job). The
operator's."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from autopack.api.auth import OPERATOR
from autopack.api.body import UniqueKeysRoute
from autopack.api.deps import ApprovalId, DatabaseDep, PageLimit, PageOffset, RunFilter
from autopack.api.openapi import READ, SECURED, WRITE, errors
from autopack.contract import ApprovalList, ApprovalView, DecidedApproval, DecisionIn
from autopack.control import approvals
from autopack.states import ApprovalStatus

router = APIRouter(
    route_class=UniqueKeysRoute,
    prefix="/approvals",
    tags=["approvals"],
    dependencies=[OPERATOR],
    responses={**SECURED, **READ},
)
DECIDING = {**WRITE, **errors(404, 409)}


@router.get("", response_model=ApprovalList)
def list_approvals(
    database: DatabaseDep,
    status: Annotated[ApprovalStatus | Literal["all"], Query()] = ApprovalStatus.PENDING,
    run_id: RunFilter = None,
    limit: PageLimit = 500,
    offset: PageOffset = 0,
) -> ApprovalList:
    """One page of approvals, oldest first (``status=all`` for every status), with how
    many there are in all."""
    wanted = None if status == "all" else ApprovalStatus(status)
    return approvals.list_approvals(
        database, status=wanted, run_id=run_id, limit=limit, offset=offset
    )


@router.get(
    "/{approval_id}",
    response_model=ApprovalView,
    responses=errors(404),
    operation_id="get_approval",
)
def get_approval(approval_id: ApprovalId, database: DatabaseDep) -> ApprovalView:
    """One approval with its full reason and context, whatever its status."""
    return approvals.get_approval(database, approval_id)


@router.post(
    "/{approval_id}/approve",
    response_model=DecidedApproval,
    responses=DECIDING,
    operation_id="approve",
)
def approve(approval_id: ApprovalId, body: DecisionIn, database: DatabaseDep) -> DecidedApproval:
    """The phase goes back to QUEUED; its next claim carries the approved change."""
    return approvals.decide_approval(database, approval_id, approve=True, decision=body)


@router.post(
    "/{approval_id}/reject",
    response_model=DecidedApproval,
    responses=DECIDING,
    operation_id="reject",
)
def reject(approval_id: ApprovalId, body: DecisionIn, database: DatabaseDep) -> DecidedApproval:
    """The phase FAILS with stop_reason approval_rejected."""
    return approvals.decide_approval(database, approval_id, approve=False, decision=body)
