"""Approvals: a phase parks for a human, who approves or rejects; unanswered ones expire.

Asking parks the phase in AWAITING_APPROVAL and releases its lease: no worker waits for a
human. Approve -> QUEUED (its retry window is extended if the asking attempt was the
last one) and the next claim carries ``approved_change`` (again after an executor stopped
while applying it: ``claims._last_ended_on_its_own``); reject ->
FAILED ``approval_rejected``; expiry (maintenance) -> FAILED ``approval_expired`` or
QUEUED per ``policy.on_approval_timeout``. Approvals of a phase that moves on without a
decision (cancel, requeue, budget end) become ``cancelled``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from autopack import redact
from autopack.contract import (
    ApprovalCreated,
    ApprovalIn,
    ApprovalList,
    ApprovalView,
    DecidedApproval,
    DecisionIn,
)
from autopack.control import lifecycle, views
from autopack.control.leases import holds_lease, lease_lost
from autopack.control.telemetry import set_phase_outcome
from autopack.db import Database
from autopack.db import approvals as sql
from autopack.db.records import ApprovalRecord
from autopack.db.transaction import Tx, run_transaction
from autopack.errors import IllegalTransition, NotFound
from autopack.logs import log_event
from autopack.states import (
    ApprovalStatus,
    AttemptOutcome,
    PhaseState,
    ensure_transition,
)

P = PhaseState
logger = lifecycle.logger


def request_approval(
    database: Database, run_id: str, phase_id: str, request: ApprovalIn
) -> ApprovalCreated:
    """Park the phase in AWAITING_APPROVAL and release the lease (fenced, idempotent)."""

    def work(tx: Tx) -> ApprovalCreated:
        phase = lifecycle.load_phase(tx, run_id, phase_id, lock=True)
        if not holds_lease(phase, request.lease_token):
            asked = tx.one(  # a retried request: answer with the approval it created
                ApprovalRecord,
                sql.APPROVAL_ASKED_WITH_TOKEN,
                {"b_run": run_id, "b_phase": phase_id, "b_token": request.lease_token},
            )
            if asked is not None:
                return _created(asked, phase.state)
            raise lease_lost(tx, phase, request.lease_token)
        ensure_transition(
            "phase", phase.state, P.AWAITING_APPROVAL, subject=f"phase {run_id}/{phase_id}"
        )
        policy = lifecycle.load_run(tx, run_id).policy
        seconds = request.timeout_seconds or policy.approval_timeout_minutes * 60
        approval_id = tx.execute(
            sql.INSERT_APPROVAL,
            {
                "run_id": run_id,
                "phase_id": phase_id,
                "attempt": phase.attempts,
                "reason": redact.text(request.reason),
                "context": request.context,  # the change to apply, as the Builder wrote it
                "status": ApprovalStatus.PENDING,
                "on_timeout": policy.on_approval_timeout,
                "requested_at": tx.now,
                "timeout_at": tx.now + timedelta(seconds=seconds),
            },
        ).scalar_one()
        lifecycle.update_attempt(
            tx,
            run_id,
            phase_id,
            phase.attempts,
            outcome=AttemptOutcome.AWAITING_APPROVAL,
            stop_reason="approval_requested",
            finished_at=tx.now,
            details={"approval_id": approval_id},
        )
        lifecycle.update_phase(
            tx,
            phase,
            state=P.AWAITING_APPROVAL,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=tx.now,
        )
        log_event(
            logger,
            "approval_requested",
            run_id=run_id,
            phase_id=phase_id,
            approval_id=approval_id,
            reason=request.reason,
        )
        return _created(_load(tx, approval_id), P.AWAITING_APPROVAL)

    return run_transaction(database, work)


def _created(approval: ApprovalRecord, phase_state: str) -> ApprovalCreated:
    return ApprovalCreated(
        approval_id=approval.id,
        timeout_at=approval.timeout_at,
        phase_state=phase_state,
        approval=views.approval_view(approval),
    )


def _load(tx: Tx, approval_id: int, *, lock: bool = False) -> ApprovalRecord:
    statement = sql.APPROVAL_FOR_UPDATE if lock and tx.pg else sql.APPROVAL
    approval = tx.one(ApprovalRecord, statement, {"b_id": approval_id})
    if approval is None:
        raise NotFound(
            f"approval {approval_id} not found in {tx.where()}",
            approval_id=approval_id,
            database_instance_id=tx.identity.instance_id,
        )
    return approval


def get_approval(database: Database, approval_id: int) -> ApprovalView:
    """One approval, whatever its status (404 naming the database if there is none)."""
    found = run_transaction(database, lambda tx: _load(tx, approval_id))
    return views.approval_view(found)


def list_approvals(
    database: Database,
    *,
    status: ApprovalStatus | None = ApprovalStatus.PENDING,
    run_id: str | None = None,
    limit: int = 500,
    offset: int = 0,
) -> ApprovalList:
    """One page of approvals, oldest first, and how many there are; ``status=None`` lists
    every status."""
    params = views.page_params(limit, offset)
    if status is not None:
        params["b_status"] = status
    if run_id is not None:
        params["b_run"] = run_id
    which = (status is not None, run_id is not None)

    def work(tx: Tx) -> ApprovalList:
        total = tx.count(sql.APPROVALS_TOTAL[which], params)
        page = tx.all(ApprovalRecord, sql.APPROVALS_PAGE[which], params)
        items = [views.approval_view(approval) for approval in page]
        return ApprovalList(items=items, total=total, limit=limit, offset=offset)

    return run_transaction(database, work)


def decide_approval(
    database: Database, approval_id: int, *, approve: bool, decision: DecisionIn
) -> DecidedApproval:
    """Approve (phase back to QUEUED; its next claim gets ``approved_change``) or reject
    (phase FAILED, ``approval_rejected``). Deciding a non-pending approval is a 409."""
    status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED

    def work(tx: Tx) -> DecidedApproval | datetime:
        approval = _load(tx, approval_id, lock=True)
        if approval.status == ApprovalStatus.PENDING and approval.timeout_at <= tx.now:
            _expire(tx, approval)  # its time is up, whether or not maintenance ran since
            return approval.timeout_at
        ensure_transition("approval", approval.status, status, subject=f"approval {approval_id}")
        phase_state = _settle(
            tx,
            approval,
            status,
            responder=decision.responder,
            note=decision.note,
            stop_reason="approval_approved" if approve else "approval_rejected",
        )
        decided = views.approval_view(_load(tx, approval_id))
        return DecidedApproval(**decided.model_dump(), phase_state=phase_state)

    answer = run_transaction(database, work)
    if isinstance(answer, datetime):  # expired, and that is committed: now refuse
        raise IllegalTransition(
            f"approval {approval_id} expired at {answer:%Y-%m-%d %H:%M:%S} UTC, before this "
            "decision; the phase followed the run's on_approval_timeout policy",
            approval_id=approval_id,
        )
    return answer


def _settle(
    tx: Tx,
    approval: ApprovalRecord,
    decision: ApprovalStatus,
    *,
    responder: str | None,
    note: str | None,
    stop_reason: str,
) -> PhaseState:
    """Record the decision and move the waiting phase: QUEUED to go on, FAILED to stop."""
    run_id, phase_id = approval.run_id, approval.phase_id
    phase = lifecycle.load_phase(tx, run_id, phase_id, lock=True)
    if phase.state != P.AWAITING_APPROVAL or phase.attempts != approval.attempt:
        raise IllegalTransition(
            f"approval {approval.id} no longer applies: phase {run_id}/{phase_id} is "
            f"{phase.state} (attempt {phase.attempts}), the approval was asked by "
            f"attempt {approval.attempt}",
            phase_state=phase.state,
        )
    go_on = decision == ApprovalStatus.APPROVED or (
        decision == ApprovalStatus.EXPIRED and approval.on_timeout == "requeue"
    )
    target = P.QUEUED if go_on else P.FAILED
    ensure_transition("phase", phase.state, target, subject=f"phase {run_id}/{phase_id}")
    tx.execute(
        sql.DECIDE_APPROVAL,
        {
            "b_id": approval.id,
            "status": decision,
            "responded_at": tx.now,
            "responder": responder,
            "note": note,
        },
    )
    attempt_values: dict[str, Any] = {"stop_reason": stop_reason}
    if target == P.FAILED:
        attempt_values["outcome"] = AttemptOutcome.FAILED
    lifecycle.update_attempt(tx, run_id, phase_id, approval.attempt, **attempt_values)
    values: dict[str, Any] = {"state": target, "updated_at": tx.now}
    if target == P.QUEUED:
        # The continuation a human allowed must be able to run even if the attempt that
        # asked was the last one of its retry window.
        window_start = max(phase.retry_window_start, phase.attempts - phase.max_attempts + 1)
        values.update(available_at=tx.now, retry_window_start=window_start)
    else:
        detail = note or approval.reason
        values.update(
            finished_at=tx.now,
            last_failure_reason=f"{stop_reason}: {detail}" if detail else stop_reason,
            failure_fingerprint=lifecycle.fingerprint(stop_reason, None),
        )
    lifecycle.update_phase(tx, phase, **values)
    log_event(
        logger,
        "approval_settled",
        run_id=run_id,
        phase_id=phase_id,
        approval_id=approval.id,
        status=decision,
        phase_state=target,
    )
    if target == P.FAILED:
        set_phase_outcome(tx, run_id, phase_id, target)
        lifecycle.skip_blocked(tx, phase)
        lifecycle.settle_run(tx, run_id)
    return target


def expire_approvals(tx: Tx) -> int:
    """Pending approvals past ``timeout_at``: expired; the phase FAILS or re-QUEUES per policy."""
    statement = sql.EXPIRED_APPROVALS_SKIP_LOCKED if tx.pg else sql.EXPIRED_APPROVALS
    expired = 0
    for approval in tx.all(ApprovalRecord, statement, {"b_now": tx.now}):
        _expire(tx, approval)
        expired += 1
    return expired


def _expire(tx: Tx, approval: ApprovalRecord) -> None:
    """Record ``approval`` expired and move its phase as the run's policy says."""
    try:  # _settle checks before it writes anything
        _settle(
            tx,
            approval,
            ApprovalStatus.EXPIRED,
            responder=None,
            note=f"no decision by {approval.timeout_at:%Y-%m-%d %H:%M:%S} UTC",
            stop_reason="approval_expired",
        )
    except IllegalTransition as exc:  # the phase moved on: the approval just lapses
        tx.execute(
            sql.UPDATE_APPROVAL,
            {
                "b_id": approval.id,
                "status": ApprovalStatus.EXPIRED,
                "responded_at": tx.now,
                "note": exc.message,
            },
        )
