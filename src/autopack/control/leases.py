"""Leases: the fencing check, heartbeats, usage reports, and reclaiming expired leases.

* **Leases are fencing tokens**: a heartbeat, usage report, approval request or result is
  applied only while the phase still carries the caller's ``lease_token`` (and holds a
  lease: EXECUTING or CI_RUNNING); otherwise :class:`~autopack.errors.LeaseLost` (409)
  and nothing changes. An expired lease nobody reclaimed yet may still be renewed:
  nobody else holds the phase.
* **Usage reports** are idempotent: each carries a key, and the attempt remembers the key
  of the report it counted last, so a report retried after its answer was lost (a 5xx, a
  dropped connection) is answered again but counted once. Money spent is a fact, not a
  state change: a report under a stale token still counts on the attempt it was issued
  to (then answers LeaseLost); one never issued for the phase counts nothing.
* **Reclaims** of expired leases are conditional ``UPDATE … WHERE lease_token = <old>``, so
  two recoveries racing (a claim and the maintenance task, or two API replicas) apply
  once. The lost attempt is recorded ``LOST``/``lease_expired``; the phase is re-QUEUED at
  once (no backoff: the lease time was the wait) or FAILED when its window is spent.
  A phase's first :data:`FREE_LOSSES` lost attempts spend no retry (their executors were
  killed, ran out of memory, lost their machine: not the phase's doing, like a stop that
  hands the lease back); later ones do, so a phase that kills every executor that tries
  it still ends. Stops handed back while the phase's checks ran count with them
  (:func:`stop_spends_no_retry`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, InvalidRequestError

from autopack.clock import utcnow
from autopack.contract import (
    ORDERED_USAGE_KEY,
    HeartbeatIn,
    LeaseRenewed,
    PhaseUsage,
    UsageAnswer,
    UsageIn,
)
from autopack.control import lifecycle
from autopack.control.telemetry import set_phase_outcome
from autopack.control.views import run_budget
from autopack.db import Database
from autopack.db import statements as sql
from autopack.db.records import AttemptRecord, PhaseRecord, RunRecord
from autopack.db.transaction import Tx, connection_lost, run_transaction
from autopack.errors import LeaseLost
from autopack.logs import log_event
from autopack.states import PHASE_ACTIVE, RUN_ACTIVE, AttemptOutcome, PhaseState, ensure_transition

logger = logging.getLogger("autopack.control")

P = PhaseState
DEFAULT_LEASE_SECONDS = 60


def issued_attempt(tx: Tx, phase: PhaseRecord, lease_token: str) -> AttemptRecord | None:
    """The attempt of ``phase`` that ``lease_token`` was issued to, if any."""
    return tx.one(
        AttemptRecord,
        sql.ATTEMPT_BY_TOKEN,
        {"b_run": phase.run_id, "b_phase": phase.phase_id, "b_token": lease_token},
    )


def lease_lost(tx: Tx, phase: PhaseRecord, lease_token: str) -> LeaseLost:
    """Explain exactly why the token is stale: which attempt it was and how it ended."""
    mine = issued_attempt(tx, phase, lease_token)
    if mine is None:
        why = "the token was never issued for this phase"
    else:
        why = f"your attempt {mine.attempt} ended as {mine.outcome}"
        if mine.stop_reason:
            why += f" ({mine.stop_reason})"
    now_held = f"; it is now {phase.state}"
    if phase.lease_owner:
        now_held += f", held by {phase.lease_owner} (attempt {phase.attempts})"
    return LeaseLost(
        f"lease on phase {phase.run_id}/{phase.phase_id} is no longer yours: {why}{now_held}",
        run_id=phase.run_id,
        phase_id=phase.phase_id,
        phase_state=phase.state,
        attempt=phase.attempts,
    )


def holds_lease(phase: PhaseRecord, lease_token: str) -> bool:
    return phase.lease_token == lease_token and phase.state in PHASE_ACTIVE


def held_phase(tx: Tx, run_id: str, phase_id: str, lease_token: str) -> PhaseRecord:
    """Lock the phase and check the caller still holds its lease (the fencing check)."""
    phase = lifecycle.load_phase(tx, run_id, phase_id, lock=True)
    if not holds_lease(phase, lease_token):
        raise lease_lost(tx, phase, lease_token)
    return phase


# -- heartbeats ---------------------------------------------------------------------------------


def heartbeat(database: Database, run_id: str, phase_id: str, beat: HeartbeatIn) -> LeaseRenewed:
    """Renew the lease (for ``lease_seconds``, default: the length it was claimed with).

    ``state`` moves EXECUTING <-> CI_RUNNING. The common case (same state, explicit
    length) is one conditional UPDATE, run as its own transaction; anything else, or a
    renewal that matched no row (to say why), runs the full locked check.
    """
    if beat.state is None and beat.lease_seconds is not None:
        now = utcnow()
        expires = now + timedelta(seconds=beat.lease_seconds)
        try:
            with database.single_statement() as connection:
                renewed = connection.execute(
                    sql.RENEW_LEASE,
                    {
                        "b_run": run_id,
                        "b_phase": phase_id,
                        "b_token": beat.lease_token,
                        "b_expires": expires,
                        "b_seconds": beat.lease_seconds,
                        "b_now": now,
                    },
                ).first()
        except (DBAPIError, InvalidRequestError) as exc:
            if not connection_lost(exc):
                raise
            renewed = None  # the full path below runs it again, on a new connection
        if renewed is not None:
            return LeaseRenewed(lease_expires_at=expires, state=renewed.state)
    return run_transaction(database, lambda tx: _renew(tx, run_id, phase_id, beat))


def _renew(tx: Tx, run_id: str, phase_id: str, beat: HeartbeatIn) -> LeaseRenewed:
    phase = held_phase(tx, run_id, phase_id, beat.lease_token)
    seconds = beat.lease_seconds or phase.lease_seconds or DEFAULT_LEASE_SECONDS
    target = beat.state or phase.state
    if target != phase.state:
        ensure_transition("phase", phase.state, target, subject=f"phase {run_id}/{phase_id}")
    expires = tx.now + timedelta(seconds=seconds)
    lifecycle.update_phase(
        tx, phase, state=target, lease_expires_at=expires, lease_seconds=seconds, updated_at=tx.now
    )
    return LeaseRenewed(lease_expires_at=expires, state=target)


# -- usage --------------------------------------------------------------------------------------


def report_usage(database: Database, run_id: str, phase_id: str, usage: UsageIn) -> UsageAnswer:
    """Add one LLM call's tokens and cost to the attempt, phase and run; answer the budget.

    A report under a lease no longer held (its executor was stopped past the lease, the
    run was cancelled while the call was out) is still counted, on the attempt the token
    was issued to, then answered :class:`~autopack.errors.LeaseLost` as before: the call
    was made and billed, and the run's totals and budgets left it out (a cancelled run
    said 672 tokens where its calls had spent 9,406). A token never issued for the
    phase counts nothing."""

    key = usage.idempotency_key or uuid.uuid4().hex  # no key (an old client): never a retry

    def work(tx: Tx) -> UsageAnswer | LeaseLost:
        phase = lifecycle.load_phase(tx, run_id, phase_id, lock=True)
        attempt, stale = phase.attempts, None
        if not holds_lease(phase, usage.lease_token):
            stale = lease_lost(tx, phase, usage.lease_token)
            issued = issued_attempt(tx, phase, usage.lease_token)
            if issued is None:
                raise stale
            attempt = issued.attempt
        amounts = {"b_tokens": usage.tokens, "b_cost": usage.cost_usd}
        counted = tx.execute(
            sql.ADD_ATTEMPT_USAGE,
            {
                "b_run": run_id,
                "b_phase": phase_id,
                "b_attempt": attempt,
                "b_key": key,
                "b_ordered": ORDERED_USAGE_KEY.fullmatch(key) is not None,
                **amounts,
            },
        ).rowcount
        if counted:
            totals = tx.row(sql.ADD_PHASE_USAGE, {"b_pk": phase.id, "b_now": tx.now, **amounts})
            run = tx.one(
                RunRecord, sql.ADD_RUN_USAGE, {"b_run": run_id, "b_now": tx.now, **amounts}
            )
            assert run is not None and totals is not None
            used = PhaseUsage(tokens_used=totals["tokens_used"], cost_usd=totals["cost_usd"])
        else:  # the same report again (its answer was lost): counted once, answered again
            run = lifecycle.load_run(tx, run_id)
            used = PhaseUsage(tokens_used=phase.tokens_used, cost_usd=phase.cost_usd)
        if stale is not None:
            return stale  # raised once the count is committed
        problem = lifecycle.budget_problem(tx, run, starting_new_phase=False)
        return UsageAnswer(run=run_budget(run, problem), phase=used)

    answer = run_transaction(database, work)
    if isinstance(answer, LeaseLost):
        raise answer
    return answer


# -- reclaiming expired leases ------------------------------------------------------------------


FREE_LOSSES = 2
"""Lost attempts of a phase that spend no retry: a phase of ``max_attempts: 1`` FAILED
when its one executor was killed (a spot machine reclaimed), an approval given for its
last attempt with it."""


def stop_spends_no_retry(tx: Tx, phase: PhaseRecord) -> bool:
    """Whether a stop of ``phase``'s executor that the phase may have caused is free.

    Killed at any step, or stopped (SIGTERM, Ctrl-C) while the phase's checks ran: those
    checks run the Builder's code, and code that kills or stops the executor running it
    (``kill $PPID``, a test that signals its parent) had each attempt handed back without
    spending a retry, a new Builder call each time, for ever under a supervisor that
    restarts executors. The first :data:`FREE_LOSSES` such stops are free; later ones
    spend a retry, so such a phase ends. A stop elsewhere (the Builder's call, a provider
    refusing) is never the phase's doing and stays free.
    """
    params = {"b_run": phase.run_id, "b_phase": phase.phase_id}
    stops: int = sum(
        attempt["outcome"] == AttemptOutcome.LOST
        or (attempt["details"] or {}).get(sql.STOPPED_IN) == P.CI_RUNNING
        for attempt in tx.rows(sql.ATTEMPTS_SINCE_REQUEUE, params)
    )
    return stops < FREE_LOSSES


def reclaim_expired(tx: Tx) -> int:
    """Expired leases: record the attempt LOST (``lease_expired``), re-QUEUE or FAIL the phase.

    Each recovery is a conditional UPDATE on the old lease token, so a recovery that lost a
    race (another replica, the maintenance task) changes nothing.
    """
    statement = sql.EXPIRED_LEASES_SKIP_LOCKED if tx.pg else sql.EXPIRED_LEASES
    pks = list(tx.execute(statement, {"b_now": tx.now}).scalars())
    expired = tx.all(PhaseRecord, sql.PHASES_BY_ID, {"b_pks": pks}) if pks else []
    reclaimed = 0
    for phase in expired:
        run = lifecycle.load_run(tx, phase.run_id)
        free = stop_spends_no_retry(tx, phase)
        retry = (free or phase.window_open) and run.state in RUN_ACTIVE
        target = P.QUEUED if retry else P.FAILED
        ensure_transition("phase", phase.state, target)
        expired_at = f"{phase.lease_expires_at:%H:%M:%S}" if phase.lease_expires_at else "?"
        reason = (
            f"lease_expired: worker {phase.lease_owner} stopped heartbeating "
            f"(attempt {phase.attempts}, lease expired {expired_at})"
        )
        values: dict[str, Any] = {
            "state": target,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "available_at": tx.now,
            "last_failure_reason": reason,
            "updated_at": tx.now,
        }
        if target == P.FAILED:
            values.update(
                finished_at=tx.now, failure_fingerprint=lifecycle.fingerprint("lease_expired", "")
            )
        elif free:
            values.update(retry_window_start=phase.retry_window_start + 1)
        recovered = tx.execute(
            sql.RECOVER_PHASE, {"b_pk": phase.id, "b_token": phase.lease_token, **values}
        )
        if recovered.rowcount != 1:
            continue
        tx.execute(
            sql.UPDATE_ATTEMPT_IF,
            {
                "b_run": phase.run_id,
                "b_phase": phase.phase_id,
                "b_attempt": phase.attempts,
                "b_outcome": AttemptOutcome.EXECUTING,
                "outcome": AttemptOutcome.LOST,
                "stop_reason": "lease_expired",
                "finished_at": tx.now,
                "error": reason,
            },
        )
        reclaimed += 1
        log_event(
            logger,
            "lease_reclaimed",
            logging.WARNING,
            run_id=phase.run_id,
            phase_id=phase.phase_id,
            attempt=phase.attempts,
            worker_id=phase.lease_owner,
            phase_state=target,
        )
        if target == P.FAILED:
            set_phase_outcome(tx, phase.run_id, phase.phase_id, target)
            lifecycle.skip_blocked(tx, phase)
            lifecycle.settle_run(tx, phase.run_id)
    return reclaimed
