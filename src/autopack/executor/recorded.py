"""What the database recorded of an attempt, for the drain's progress and summary.

An attempt that did not post its own result (its lease refused) or whose result another
post answered (a stop's hand-back after the attempt's own result landed) knows only a
stop reason: ``lease_lost`` where the database says ``lease_expired`` or ``requeued``,
and no files for a phase recorded COMPLETE with them. One read of the phase says how
the database recorded it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from autopack.contract import failed_checks_line
from autopack.errors import AutopackError
from autopack.executor.outcome import AttemptResult, Outcome
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
