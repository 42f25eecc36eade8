"""Results: how an attempt ended, applied once under its lease.

* **Fenced**: a result counts only while the phase carries the poster's lease token.
* **Idempotent**: the answer is stored with the attempt under its Idempotency-Key; the
  same key (or, without one, the same spent lease token) gets the stored answer, so an
  executor that lost the answer to a timeout can post again safely.
* FAILED + retryable + window left -> QUEUED after ``retry_backoff_seconds * 2**(n-1)``
  (max 60 s); otherwise FAILED with ``last_failure_reason`` and a 12-hex
  ``failure_fingerprint``, and every phase that can never run becomes SKIPPED. When no
  phase is open the run ends DONE_SUCCESS or DONE_FAILED_PHASES.
* FAILED with stop reason ``interrupted`` (the executor was stopped: SIGTERM, Ctrl-C, and
  it handed the lease back) is not the phase's failure: it goes back to QUEUED at once,
  and its retry window moves on by one, so the attempt is recorded but does not count
  against the phase's retries (while its run may still run). Unless it came while the
  phase's checks ran, once too often: the phase's code may be what stops its executors
  (:func:`~autopack.control.leases.stop_spends_no_retry`); that stop spends a retry.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from autopack import redact
from autopack.contract import AuditVerdict, ResultAnswer, ResultIn, failed_checks_line
from autopack.control import lifecycle
from autopack.control.leases import FREE_LOSSES, holds_lease, lease_lost, stop_spends_no_retry
from autopack.control.telemetry import set_phase_outcome
from autopack.db import Database
from autopack.db import statements as sql
from autopack.db.records import AttemptRecord, PhaseRecord
from autopack.db.transaction import Tx, run_transaction
from autopack.errors import BranchMoved, Conflict
from autopack.logs import log_event
from autopack.rundef import Policy
from autopack.states import INTERRUPTED, RUN_ACTIVE, PhaseState, ensure_transition

P = PhaseState


def post_result(
    database: Database,
    run_id: str,
    phase_id: str,
    result: ResultIn,
    *,
    idempotency_key: str | None = None,
) -> ResultAnswer:
    """Apply an attempt's result once; the same key or spent token gets the stored answer."""
    result = redacted(result)
    try:
        return run_transaction(
            database, lambda tx: _post_result(tx, run_id, phase_id, result, idempotency_key)
        )
    except IntegrityError as exc:  # the key is already stored with another attempt
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used for another attempt",
            idempotency_key=idempotency_key,
        ) from exc


def stored_key(run_id: str, phase_id: str, key: str) -> str:
    """An Idempotency-Key as stored: within its phase. Keys were one namespace for every
    phase, so a worker could post under another phase's future key (``RUN:PHASE:N``) and
    that attempt's real result was refused as a reused key."""
    return hashlib.sha256(f"{run_id}\0{phase_id}\0{key}".encode()).hexdigest()


def _attempt_key(run_id: str, phase_id: str, attempt: int) -> str:
    """The key a result posted without one is stored under: the one an executor posts
    with (:attr:`~autopack.contract.Claim.idempotency_key`), stored hashed like any key.
    Stored as it was, two ids of up to 200 characters did not fit the column (300): on
    PostgreSQL such a result was a 500, and its phase stayed held until its lease expired."""
    return f"{run_id}:{phase_id}:{attempt}"


def _stored_answer(
    tx: Tx, run_id: str, phase_id: str, result: ResultIn, key: str | None
) -> ResultAnswer | None:
    """The stored answer for this key (or, without one, for this spent lease token)."""
    if key is not None:
        stored = tx.row(sql.ANSWER_BY_KEY, {"b_key": stored_key(run_id, phase_id, key)})
        if stored is not None:
            return ResultAnswer.model_validate(stored["result_response"])
    spent = tx.one(
        AttemptRecord,
        sql.ATTEMPT_BY_TOKEN,
        {"b_run": run_id, "b_phase": phase_id, "b_token": result.lease_token},
    )
    return spent.result_response if spent is not None else None


def _advance_branch(tx: Tx, run_id: str, commit: str, base: str | None) -> str:
    """Accept ``commit`` as the run's branch head if it was made on the current head.

    The compare-and-swap that orders integration: results of one run are accepted one at
    a time onto a linear chain, each commit's parent the head before it, so every
    completed phase's commit reaches the branch exactly once. A commit made on an older
    head is refused with :class:`BranchMoved` naming the new one (nothing applied: the
    transaction rolls back): the executor rebases and posts again. The run row is locked
    here, after the phase (lock order).
    """
    params = {"b_run": run_id, "b_commit": commit, "b_base": base}
    if tx.execute(sql.ADVANCE_BRANCH, params).rowcount == 1:
        return commit
    if tx.execute(sql.START_BRANCH, params).rowcount == 1:
        return commit
    head = lifecycle.load_run(tx, run_id).branch_head
    raise BranchMoved(
        f"run {run_id}'s branch is at {(head or '?')[:12]}, not at {(base or 'none')[:12]} "
        "where this commit was made: rebase it on the new head and post again",
        run_id=run_id,
        branch_head=head,
    )


def _post_result(
    tx: Tx, run_id: str, phase_id: str, result: ResultIn, key: str | None
) -> ResultAnswer:
    params = {"b_run": run_id, "b_phase": phase_id}
    found = tx.row(sql.PHASE_AND_RUN_STATE_FOR_UPDATE if tx.pg else sql.PHASE_AND_RUN_STATE, params)
    if found is None:
        lifecycle.load_phase(tx, run_id, phase_id)  # raises NotFound naming run and db
        raise AssertionError("unreachable")
    phase, run_state = PhaseRecord.from_row(found), str(found["run_state"])
    if not holds_lease(phase, result.lease_token):
        # Not (or no longer) the holder: a retry of an applied result, or a zombie.
        stored = _stored_answer(tx, run_id, phase_id, result, key)
        if stored is not None:
            return stored
        raise lease_lost(tx, phase, result.lease_token)

    number = phase.attempts
    branch_head = None
    if result.outcome == P.COMPLETE and result.commit is not None:
        branch_head = _advance_branch(tx, run_id, result.commit, result.base)
    target = P.COMPLETE
    policy = None
    interrupted = result.outcome == P.FAILED and result.stop_reason == INTERRUPTED
    # where a stop found the phase is the control plane's to say, not the worker's
    details = {k: v for k, v in result.details.items() if k != sql.STOPPED_IN}
    free = False
    if interrupted:
        details[sql.STOPPED_IN] = phase.state
        free = phase.state != P.CI_RUNNING or stop_spends_no_retry(tx, phase)
    if result.outcome == P.FAILED:
        run = lifecycle.load_run(tx, run_id)
        policy = run.policy
        retry = (free or (result.retryable and phase.window_open)) and (run.state in RUN_ACTIVE)
        target = P.QUEUED if retry else P.FAILED
    ensure_transition("phase", phase.state, target, subject=f"phase {run_id}/{phase_id}")

    values, available_at = _phase_values(tx, phase, result, target, policy, free=free)
    lifecycle.update_phase(tx, phase, **values)
    if target != P.QUEUED:
        set_phase_outcome(tx, run_id, phase_id, target)

    if target == P.FAILED:
        lifecycle.skip_blocked(tx, phase)
        run_state = lifecycle.settle_run(tx, run_id)
    elif target == P.COMPLETE:
        run_state = lifecycle.settle_run(tx, run_id, finished=phase, run_state=run_state)

    answer = ResultAnswer(
        run_id=run_id,
        phase_id=phase_id,
        attempt=number,
        phase_state=target,
        run_state=run_state,
        requeued=target == P.QUEUED,
        available_at=available_at,
        branch_head=branch_head,
        stop_reason=result.stop_reason,
    )
    lifecycle.update_attempt(
        tx,
        run_id,
        phase_id,
        number,
        outcome=result.outcome,
        finished_at=tx.now,
        stop_reason=result.stop_reason,
        max_tokens=result.max_tokens,
        files_written=result.files_written,
        check_results=[check.model_dump(mode="json") for check in result.check_results],
        audit_verdict=result.audit_verdict.model_dump(mode="json")
        if result.audit_verdict
        else None,
        feedback=result.feedback,
        error=result.error,
        details=details,
        result_key=stored_key(run_id, phase_id, key or _attempt_key(run_id, phase_id, number)),
        result_response=answer.model_dump(mode="json"),
        commit_sha=result.commit,
        base_sha=result.base,
    )
    log_event(
        lifecycle.logger,
        "result",
        logging.DEBUG if target == P.COMPLETE else logging.INFO,
        run_id=run_id,
        phase_id=phase_id,
        attempt=number,
        outcome=result.outcome,
        stop_reason=result.stop_reason,
        phase_state=target,
    )
    return answer


def _failure_line(result: ResultIn) -> str:
    """What ``run show`` and the dashboard say failed: the error's first line, the first
    failing check of an attempt its checks failed, else the feedback's first line."""
    line = result.error or failed_checks_line(result.stop_reason, result.check_results)
    lines = (line or result.feedback or "").strip().splitlines()
    return lines[0] if lines else ""


def _phase_values(
    tx: Tx,
    phase: PhaseRecord,
    result: ResultIn,
    target: PhaseState,
    policy: Policy | None,
    *,
    free: bool,
) -> tuple[dict[str, Any], datetime | None]:
    """The phase row's new values for ``result`` moving it to ``target``, and when it is
    available again (re-queued); ``free``: a stop that spends no retry."""
    values: dict[str, Any] = {
        "state": target,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": tx.now,
    }
    available_at = None
    if target == P.COMPLETE:
        values.update(finished_at=tx.now, commit_sha=result.commit)
        return values, None
    line = _failure_line(result)
    if result.stop_reason == INTERRUPTED and not free:
        line = (
            f"{line}, again while its checks ran: stops there spend a retry after "
            f"{FREE_LOSSES} (its code may be what stops executors)"
        )
    reason = result.stop_reason + (f": {line[:300]}" if line else "")
    values.update(
        last_failure_reason=reason,
        failure_fingerprint=lifecycle.fingerprint(result.stop_reason, result.error),
    )
    if target == P.QUEUED and free:
        # not a failure: no backoff, no retry spent
        available_at = tx.now
        values.update(available_at=available_at, retry_window_start=phase.retry_window_start + 1)
    elif target == P.QUEUED:
        assert policy is not None
        delay = lifecycle.backoff_seconds(policy, phase.attempts - phase.retry_window_start)
        available_at = tx.now + timedelta(seconds=delay)
        values.update(available_at=available_at)
    else:
        values.update(finished_at=tx.now)
    return values, available_at


def redacted(result: ResultIn) -> ResultIn:
    """The result as it may be stored: errors, feedback, check output and details with
    secrets replaced (:mod:`autopack.redact`), whatever the executor sent."""
    verdict = result.audit_verdict
    return result.model_copy(
        update={
            "error": redact.text(result.error) if result.error else result.error,
            "feedback": redact.text(result.feedback) if result.feedback else result.feedback,
            "details": redact.data(result.details),
            "check_results": [
                check.model_copy(
                    update={
                        "command": redact.text(check.command),
                        "output_tail": redact.text(check.output_tail),
                    }
                )
                for check in result.check_results
            ],
            "audit_verdict": None
            if verdict is None
            else AuditVerdict.model_validate(redact.data(verdict.model_dump())),
        }
    )
