"""Claims: lease the next claimable phase to a worker, in one transaction.

PostgreSQL: the claim query locks the row it returns with ``FOR UPDATE OF phases SKIP
LOCKED``, so concurrent claimers never wait on, nor double-take, a phase. SQLite: the
engine's ``BEGIN IMMEDIATE`` plus the process's writer lock make every write transaction
exclusive. Either way the flip to EXECUTING is also a conditional ``UPDATE … WHERE
state = 'QUEUED'`` whose row count is checked.

Expired leases are reclaimed before a claim is made: the claim query itself says whether
any lease has expired; if one has, or nothing was found, the reclaim runs and the pick is
made again, so a reclaimed phase is claimed in its order and never missed by a 204.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import RowMapping

from autopack.contract import ApprovedChange, Claim, ClaimIn
from autopack.control import lifecycle, views
from autopack.control.leases import holds_lease, reclaim_expired
from autopack.db import Database
from autopack.db import approvals as approval_sql
from autopack.db import statements as sql
from autopack.db.claim import claim_statement
from autopack.db.records import ApprovalRecord, AttemptRecord, PhaseRecord, RunRecord
from autopack.db.transaction import Tx, run_transaction
from autopack.errors import Conflict, InvalidInput
from autopack.logs import log_event
from autopack.states import (
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
    ensure_transition,
    stopped_from_outside,
)

P = PhaseState
R = RunState


def claim(database: Database, request: ClaimIn) -> Claim | None:
    """Lease the next claimable phase to ``request.worker_id``; None when there is none.

    Order: tier_index, phase_index, run creation; honours ``depends_on``, backoff and
    budgets (a run found over budget ends DONE_FAILED_BUDGET_EXHAUSTED here, and the
    claim looks in the other runs).
    """
    if request.phase_id is not None and request.run_id is None:
        raise InvalidInput("claiming a specific phase_id needs its run_id too")
    return run_transaction(database, lambda tx: _claim(tx, request))


def _claim(tx: Tx, request: ClaimIn) -> Claim | None:
    granted = _granted_before(tx, request)
    if granted is not None:
        return granted
    excluded: set[str] = set()
    reclaim_checked = False
    while True:
        found = _next_claimable(tx, request, excluded)
        if not reclaim_checked and (found is None or found["leases_expired"]):
            reclaim_checked = True
            if reclaim_expired(tx):
                continue
        if found is None:
            if not excluded and request.run_id is not None:  # say so when the ids are wrong
                if request.phase_id is not None:
                    lifecycle.load_phase(tx, request.run_id, request.phase_id)
                else:
                    lifecycle.load_run(tx, request.run_id)
            return None
        phase = PhaseRecord.from_row(found)
        run = RunRecord.from_row(found, prefix="r__")
        problem = lifecycle.budget_problem(tx, run, starting_new_phase=phase.started_at is None)
        if problem is None:
            started = _start_attempt(tx, phase, run, found["tier_state"], request)
            if started is not None:
                return started
        else:
            lifecycle.end_run(tx, run.id, R.DONE_FAILED_BUDGET_EXHAUSTED, problem, cancel=False)
        excluded.add(phase.run_id)


def _granted_before(tx: Tx, request: ClaimIn) -> Claim | None:
    """The lease an earlier try of this claim (same key, same worker) was granted, while
    that worker still holds it: the retry of a claim whose answer was lost gets it again.

    A retry carries the body of its first try, so a claim whose run_id/phase_id that lease
    is outside of is another claim reusing the key: a 409, rather than a lease outside what
    it asks for (returned) or a key naming two held leases (claimed afresh)."""
    if request.claim_key is None:
        return None
    if tx.pg:  # held to the commit: a concurrent try of this claim waits, then sees its attempt
        tx.execute(sql.LOCK_CLAIM_KEY, {"b_key": request.claim_key})
    params = {"b_key": request.claim_key, "b_worker": request.worker_id}
    attempt = tx.one(AttemptRecord, sql.ATTEMPT_BY_CLAIM_KEY, params)
    if attempt is None or attempt.lease_token is None:
        return None
    phase = lifecycle.load_phase(tx, attempt.run_id, attempt.phase_id, lock=True)
    if not holds_lease(phase, attempt.lease_token) or phase.attempts != attempt.attempt:
        return None  # it ended (expired, handed back): the retry claims afresh
    asked = (request.run_id or phase.run_id, request.phase_id or phase.phase_id)
    if asked != (phase.run_id, phase.phase_id):
        raise Conflict(
            f"claim_key {request.claim_key} is the key of worker {request.worker_id}'s claim "
            f"of phase {phase.run_id}/{phase.phase_id}, which it still holds; this claim asks "
            f"for {_asked_for(request)}: a new claim needs a new claim_key"
        )
    if phase.lease_expires_at is not None and phase.lease_expires_at <= tx.now:
        # Expired while the retry was on its way (a short lease, the client's backoff) but
        # not yet reclaimed: returned as it was, it was reclaimed by the next claim while
        # its worker began the attempt. The retry is its holder's sign of life: renewed.
        expires = tx.now + timedelta(seconds=request.lease_seconds)
        renewal: dict[str, Any] = {
            "lease_expires_at": expires,
            "lease_seconds": request.lease_seconds,
        }
        lifecycle.update_phase(tx, phase, **renewal, updated_at=tx.now)
        phase = replace(phase, **renewal, updated_at=tx.now)
    log_event(
        lifecycle.logger,
        "claim_repeated",
        run_id=phase.run_id,
        phase_id=phase.phase_id,
        attempt=attempt.attempt,
        worker_id=request.worker_id,
    )
    return _answer(tx, phase, lifecycle.load_run(tx, phase.run_id))


def _asked_for(request: ClaimIn) -> str:
    if request.phase_id is not None:
        return f"phase {request.run_id}/{request.phase_id}"
    return f"a phase of run {request.run_id}"


def _next_claimable(tx: Tx, request: ClaimIn, excluded_runs: set[str]) -> RowMapping | None:
    """Pick (on PostgreSQL: lock, skipping rows other claimers hold) the next phase."""
    params: dict[str, Any] = {"b_now": tx.now}
    if request.run_id is not None:
        params["b_run"] = request.run_id
    if request.phase_id is not None:
        params["b_phase"] = request.phase_id
    if excluded_runs:
        params["b_excluded"] = sorted(excluded_runs)
    statement = claim_statement(
        pg=tx.pg,
        by_run=request.run_id is not None,
        by_phase=request.phase_id is not None,
        excluding=bool(excluded_runs),
    )
    return tx.row(statement, params)


def _start_attempt(
    tx: Tx, phase: PhaseRecord, run: RunRecord, tier_state: str | None, request: ClaimIn
) -> Claim | None:
    ensure_transition("phase", phase.state, P.EXECUTING)
    number = phase.attempts + 1
    token = uuid.uuid4().hex
    expires = tx.now + timedelta(seconds=request.lease_seconds)
    changes: dict[str, Any] = {
        "state": P.EXECUTING,
        "attempts": number,
        "lease_owner": request.worker_id,
        "lease_token": token,
        "lease_expires_at": expires,
        "lease_seconds": request.lease_seconds,
        "started_at": phase.started_at or tx.now,
        "finished_at": None,
        "updated_at": tx.now,
    }
    flipped = tx.execute(sql.FLIP_PHASE, {"b_pk": phase.id, "b_state": P.QUEUED, **changes})
    if flipped.rowcount != 1:  # taken meanwhile (cannot happen under the row lock; be sure)
        return None
    tx.execute(
        sql.INSERT_ATTEMPT,
        {
            "run_id": phase.run_id,
            "phase_id": phase.phase_id,
            "attempt": number,
            "worker_id": request.worker_id,
            "lease_token": token,
            "claim_key": request.claim_key,
            "started_at": tx.now,
            "outcome": AttemptOutcome.EXECUTING,
            "files_written": [],
            "check_results": [],
            "details": {},
            "tokens_used": 0,
            "cost_usd": 0.0,
        },
    )
    run_state = run.state
    if run_state == R.QUEUED:
        ensure_transition("run", run_state, R.RUNNING, subject=f"run {run.id}")
        tx.execute(sql.START_RUN, {"b_run": run.id, "b_now": tx.now})
        run_state = R.RUNNING
        log_event(lifecycle.logger, "run_state", run_id=run.id, previous=R.QUEUED, state=R.RUNNING)
    if tier_state == TierState.QUEUED:
        tx.execute(sql.START_TIER, {"b_run": phase.run_id, "b_tier": phase.tier_index})
    return _answer(tx, replace(phase, **changes), replace(run, state=run_state))


def _last_ended_on_its_own(history: list[AttemptRecord]) -> int:
    """The number of the newest attempt its executor was not stopped in
    (:func:`~autopack.states.stopped_from_outside`). A change approved for an attempt is
    applied by the next one that runs to its end: it went only to the attempt right
    after the asking one, so an executor killed while applying it made the Builder
    answer again and the phase wait for a second approval of the same change."""
    for attempt in reversed(history):
        if not stopped_from_outside(attempt.outcome, attempt.stop_reason):
            return attempt.attempt
    return 0


def _answer(tx: Tx, phase: PhaseRecord, run: RunRecord) -> Claim:
    """The claim of ``phase``'s current attempt, as it stands (leased, EXECUTING)."""
    number = phase.attempts
    history: list[AttemptRecord] = []
    approved: ApprovedChange | None = None
    if number > 1:
        params = {"b_run": phase.run_id, "b_phase": phase.phase_id, "b_attempt": number}
        history = tx.all(AttemptRecord, sql.HISTORY, params)
        granted = tx.one(
            ApprovalRecord,
            approval_sql.APPROVED_FOR_ATTEMPT,
            {**params, "b_attempt": _last_ended_on_its_own(history)},
        )
        approved = views.approved_change(granted) if granted is not None else None
    dependencies = lifecycle.depends_on(tx, phase.run_id, phase.phase_id, committed=True)
    assert phase.lease_token is not None and phase.lease_expires_at is not None
    return Claim(
        run_id=phase.run_id,
        phase_id=phase.phase_id,
        attempt=number,
        lease_token=phase.lease_token,
        lease_expires_at=phase.lease_expires_at,
        lease_seconds=phase.lease_seconds,
        phase=views.phase_view(phase, dependencies[phase.phase_id]),
        history=[views.attempt_view(attempt) for attempt in history],
        run=views.run_brief(run),
        approved_change=approved,
    )
