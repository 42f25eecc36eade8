"""How an attempt ends: :class:`Finish` (raised by any step, posted as the result) and
:class:`AttemptResult` (what the executor reports to its summary and progress display)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autopack.states import PhaseState

Outcome = Literal[
    PhaseState.COMPLETE, PhaseState.FAILED, PhaseState.AWAITING_APPROVAL, "LEASE_LOST"
]
"""How an attempt ended: the phase state its result asked for, or its lease was lost."""


class Finish(Exception):
    """Raised by any step to end the attempt with a result to post: COMPLETE or FAILED with
    its stop reason, feedback for the next attempt, the error, and whether to retry."""

    def __init__(
        self,
        outcome: Literal[PhaseState.COMPLETE, PhaseState.FAILED],
        stop_reason: str,
        *,
        feedback: str | None = None,
        error: str | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(stop_reason)
        self.outcome = outcome
        self.stop_reason = stop_reason
        self.feedback = feedback
        self.error = error
        self.retryable = retryable


def failed(
    stop_reason: str,
    *,
    feedback: str | None = None,
    error: str | None = None,
    retryable: bool = True,
) -> Finish:
    return Finish(
        PhaseState.FAILED, stop_reason, feedback=feedback, error=error, retryable=retryable
    )


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt ended, as the executor reports it."""

    run_id: str
    phase_id: str
    attempt: int
    outcome: Outcome
    stop_reason: str
    phase_state: str | None = None
    files_written: tuple[str, ...] = ()
    output_tokens: int = 0
    detail: str = ""
