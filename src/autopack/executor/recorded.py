"""An attempt's result, recorded: posted, handed back, and read as the database has it.

A result is posted under the lease token and the attempt's idempotency key, so a post
retried while the API is unreachable, or answered for another post already made (a stop's
hand-back), is recorded once. An attempt that did not post its own result (its lease
refused) or whose result another post answered (a stop's hand-back after the attempt's
own result landed) knows only a stop reason: ``lease_lost`` where the database says
``lease_expired`` or ``requeued``, and no files for a phase recorded COMPLETE with them.
One read of the phase says how the database recorded it, for the drain's progress and
summary.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from autopack.bounds import clipped
from autopack.client import patiently
from autopack.contract import Claim, ResultAnswer, ResultIn, failed_checks_line
from autopack.errors import AutopackError
from autopack.executor.outcome import AttemptResult, Finish, Outcome, failed
from autopack.logs import log_event
from autopack.states import AttemptOutcome, PhaseState

if TYPE_CHECKING:
    from autopack.client import ApiClient

logger = logging.getLogger("autopack.executor")


_OUTCOMES: dict[str, Outcome] = {
    AttemptOutcome.COMPLETE: PhaseState.COMPLETE,
    AttemptOutcome.FAILED: PhaseState.FAILED,
    AttemptOutcome.AWAITING_APPROVAL: PhaseState.AWAITING_APPROVAL,
}
"""Recorded outcomes an attempt reports as its own; any other (``LOST``, ``CANCELLED``) is
one the control plane decided for it: ``LEASE_LOST``."""


def recorded_attempt(client: ApiClient, result: AttemptResult) -> AttemptResult:
    """``result`` as the database recorded its attempt: outcome, stop reason, files and
    error. One read, retried for the client's bounded time only; unanswered (or the
    attempt not ended there yet), ``result`` is said as it is. (The database keeps an
    attempt's total tokens, not its output ones: those stay as they are.)"""
    try:
        history = client.get_phase(result.run_id, result.phase_id).history
    except AutopackError as exc:
        log_event(logger, "attempt_read_failed", logging.WARNING, reason=exc.message)
        return result
    view = next((a for a in history if a.attempt == result.attempt), None)
    if view is None or view.outcome == AttemptOutcome.EXECUTING:
        return result
    stop_reason = view.stop_reason or result.stop_reason
    return replace(
        result,
        outcome=_OUTCOMES.get(view.outcome, "LEASE_LOST"),
        stop_reason=stop_reason,
        files_written=tuple(view.files_written),
        detail=view.error
        or failed_checks_line(stop_reason, view.check_results)
        or view.feedback
        or "",
    )


def post_result(client: ApiClient, claim: Claim, result: ResultIn) -> ResultAnswer:
    """Post ``result``, made again while the API is unreachable (the idempotency key makes
    a repeat harmless; unrecorded if the API stays away: redone after the lease expires);
    a refusal raises :class:`~autopack.errors.LeaseLost` or
    :class:`~autopack.errors.BranchMoved`."""
    return patiently(
        lambda: client.post_result(
            claim.run_id, claim.phase_id, result, idempotency_key=claim.idempotency_key
        )
    )


def hand_back(client: ApiClient, claim: Claim, cause: BaseException) -> None:
    """Interrupted (Ctrl-C, SIGTERM, a provider no call can succeed with): re-queue the
    phase now rather than at lease expiry; the attempt's error says which (a provider's
    refusal read "interrupted (Ctrl-C or SIGTERM)").

    Best effort: if the API does not answer, the lease still expires and the phase is
    reclaimed then.
    """
    try:
        client.post_result(
            claim.run_id,
            claim.phase_id,
            ResultIn(
                lease_token=claim.lease_token,
                outcome=PhaseState.FAILED,
                stop_reason="interrupted",
                error=clipped(
                    f"the drain stopped mid-attempt: {cause.message}"
                    if isinstance(cause, AutopackError)
                    else "the executor was interrupted (Ctrl-C or SIGTERM) mid-attempt"
                ),
            ),
            idempotency_key=claim.idempotency_key,
        )
    except Exception as exc:  # never in place of the reason the drain stops
        reason = exc.message if isinstance(exc, AutopackError) else repr(exc)
        log_event(logger, "hand_back_failed", logging.WARNING, reason=reason)


def as_recorded(finish: Finish, answer: ResultAnswer) -> Finish:
    """How the attempt ended as the database recorded it.

    SIGTERM hands the lease back as ``interrupted`` while the attempt may go on to post a
    result of its own (a COMPLETE, an audit's rejection) under the same idempotency key;
    it gets the hand-back's stored answer: nothing of its own was recorded, and the
    progress line and the summary must not say it was. (A check the stop killed ends the
    attempt ``interrupted`` too, whichever result is posted first.)
    """
    recorded = answer.stop_reason
    if recorded is None or recorded == finish.stop_reason:
        return finish
    return failed(recorded, error="recorded before this attempt's own result could be")
