"""Every statement that creates, decides, cancels or lists approval requests, by name.

The same habit as :mod:`autopack.db.statements` (built once at import, bind parameters
prefixed ``b_``), kept apart so each module reads in one sitting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, bindparam, func, insert, select, update

from autopack.db.statements import APPROVALS, ATTEMPTS, RECLAIM_BATCH
from autopack.states import ApprovalStatus

INSERT_APPROVAL = insert(APPROVALS).returning(APPROVALS.c.id)
APPROVAL = select(APPROVALS).where(APPROVALS.c.id == bindparam("b_id"))
APPROVAL_FOR_UPDATE = APPROVAL.with_for_update()
APPROVALS_OF_PHASE = (
    select(APPROVALS)
    .where(APPROVALS.c.run_id == bindparam("b_run"), APPROVALS.c.phase_id == bindparam("b_phase"))
    .order_by(APPROVALS.c.id)
)
APPROVAL_ASKED_WITH_TOKEN = (
    select(APPROVALS)
    .join(
        ATTEMPTS,
        and_(
            ATTEMPTS.c.run_id == APPROVALS.c.run_id,
            ATTEMPTS.c.phase_id == APPROVALS.c.phase_id,
            ATTEMPTS.c.attempt == APPROVALS.c.attempt,
        ),
    )
    .where(
        APPROVALS.c.run_id == bindparam("b_run"),
        APPROVALS.c.phase_id == bindparam("b_phase"),
        ATTEMPTS.c.lease_token == bindparam("b_token"),
    )
)
"""The approval an attempt asked for, found by its lease token (a retried request)."""
APPROVED_FOR_ATTEMPT = (
    select(APPROVALS)
    .where(
        APPROVALS.c.run_id == bindparam("b_run"),
        APPROVALS.c.phase_id == bindparam("b_phase"),
        APPROVALS.c.attempt == bindparam("b_attempt"),
        APPROVALS.c.status == ApprovalStatus.APPROVED,
    )
    .order_by(APPROVALS.c.id.desc())
)
DECIDE_APPROVAL = update(APPROVALS).where(
    APPROVALS.c.id == bindparam("b_id"), APPROVALS.c.status == ApprovalStatus.PENDING
)
"""Record a decision, only while the approval is still pending."""
UPDATE_APPROVAL = update(APPROVALS).where(APPROVALS.c.id == bindparam("b_id"))
_PENDING_DECIDED_BY_NOBODY = {
    "status": ApprovalStatus.CANCELLED,
    "responded_at": bindparam("b_now"),
    "responder": bindparam("b_responder"),
    "note": bindparam("b_note"),
}
CANCEL_PENDING_APPROVALS_OF_RUN = (
    update(APPROVALS)
    .where(APPROVALS.c.run_id == bindparam("b_run"), APPROVALS.c.status == ApprovalStatus.PENDING)
    .values(_PENDING_DECIDED_BY_NOBODY)
)
"""The run ended: its pending approvals will never be decided."""
CANCEL_PENDING_APPROVALS_OF_PHASE = (
    update(APPROVALS)
    .where(
        APPROVALS.c.run_id == bindparam("b_run"),
        APPROVALS.c.phase_id == bindparam("b_phase"),
        APPROVALS.c.status == ApprovalStatus.PENDING,
    )
    .values(_PENDING_DECIDED_BY_NOBODY)
)
"""The phase moved on (requeued) without a decision."""
EXPIRED_APPROVALS = (
    select(APPROVALS)
    .where(
        APPROVALS.c.status == ApprovalStatus.PENDING, APPROVALS.c.timeout_at <= bindparam("b_now")
    )
    .order_by(APPROVALS.c.timeout_at)
    .limit(RECLAIM_BATCH)
)
EXPIRED_APPROVALS_SKIP_LOCKED = EXPIRED_APPROVALS.with_for_update(skip_locked=True)


def approvals_of(statement: Select[Any], *, by_status: bool, by_run: bool) -> Select[Any]:
    """``statement`` over approvals, optionally of one status and one run."""
    if by_status:
        statement = statement.where(APPROVALS.c.status == bindparam("b_status"))
    if by_run:
        statement = statement.where(APPROVALS.c.run_id == bindparam("b_run"))
    return statement


APPROVALS_PAGE = {
    (by_status, by_run): approvals_of(
        select(APPROVALS)
        .order_by(APPROVALS.c.id)
        .limit(bindparam("b_limit"))
        .offset(bindparam("b_offset")),
        by_status=by_status,
        by_run=by_run,
    )
    for by_status in (False, True)
    for by_run in (False, True)
}
"""Approvals oldest first, one page (``b_limit``, ``b_offset``)."""
APPROVALS_TOTAL = {
    (by_status, by_run): approvals_of(
        select(func.count()).select_from(APPROVALS), by_status=by_status, by_run=by_run
    )
    for by_status in (False, True)
    for by_run in (False, True)
}
