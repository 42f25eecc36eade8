"""The state machines of runs, tiers, phases, attempts and approvals: the ONE place they live.

Every state change in the control plane goes through :func:`ensure_transition` (or its
approval twin) before it is written, so an edge that is not in the tables below is an
:class:`~autopack.errors.IllegalTransition` (HTTP 409) and is never applied.

Phase::

    QUEUED ──claim──▶ EXECUTING ──heartbeat(state)──▶ CI_RUNNING
      ▲  ▲               │  ▲                           │
      │  │               │  └───────────────────────────┘
      │  │               ├─▶ AWAITING_APPROVAL ─approve / expire(requeue)─▶ QUEUED
      │  │               │         └─reject / expire(fail)─▶ FAILED
      │  │               ├─▶ COMPLETE                     (terminal)
      │  └─retry/lost/requeue─┤
      │                  └─▶ FAILED ─requeue─▶ QUEUED
      └──requeue / reopen── SKIPPED ◀─ blocked, cancelled, budget exhausted
    COMPLETE ─requeue asked for a COMPLETE phase (``probe --force``)─▶ QUEUED

Run::

    QUEUED ─first claim─▶ RUNNING ─▶ DONE_SUCCESS | DONE_FAILED_* | DONE_CANCELLED
    DONE_FAILED_* ─requeue of a phase─▶ RUNNING    (DONE_CANCELLED is final)
    DONE_SUCCESS ─requeue of a COMPLETE phase, asked for by name─▶ RUNNING

Tier states are *derived* from their phases (:func:`tier_state`), never set by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from autopack.errors import IllegalTransition

INTERRUPTED = "interrupted"
"""The stop reason of an attempt its executor handed back because it was stopped."""


def stopped_from_outside(outcome: str, stop_reason: str | None) -> bool:
    """Did an attempt end because its executor was stopped (killed: ``LOST``, its lease
    reclaimed; SIGTERM or Ctrl-C: ``FAILED``/``interrupted``), not by its own doing? What
    an attempt hands on to the next (a change a human approved for it, the larger budget
    its truncation earned) passes over such attempts: taken by the next attempt only, it
    was lost with an executor killed while using it."""
    return outcome == "LOST" or (outcome == "FAILED" and stop_reason == INTERRUPTED)


class PhaseState(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    CI_RUNNING = "CI_RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class RunState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE_SUCCESS = "DONE_SUCCESS"
    DONE_FAILED_PHASES = "DONE_FAILED_PHASES"
    DONE_FAILED_BUDGET_EXHAUSTED = "DONE_FAILED_BUDGET_EXHAUSTED"
    DONE_FAILED_POLICY = "DONE_FAILED_POLICY"
    DONE_FAILED_NEEDS_HUMAN = "DONE_FAILED_NEEDS_HUMAN"
    DONE_FAILED_ENV = "DONE_FAILED_ENV"
    DONE_CANCELLED = "DONE_CANCELLED"


class TierState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class AttemptOutcome(StrEnum):
    EXECUTING = "EXECUTING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    LOST = "LOST"
    REQUEUED = "REQUEUED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    CANCELLED = "CANCELLED"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    """The phase moved on without a decision (run cancelled or ended, phase requeued)."""


P = PhaseState
R = RunState

PHASE_TRANSITIONS: Mapping[PhaseState, frozenset[PhaseState]] = {
    P.QUEUED: frozenset({P.EXECUTING, P.SKIPPED}),
    P.EXECUTING: frozenset(
        {P.CI_RUNNING, P.AWAITING_APPROVAL, P.COMPLETE, P.FAILED, P.QUEUED, P.SKIPPED}
    ),
    P.CI_RUNNING: frozenset(
        {P.EXECUTING, P.AWAITING_APPROVAL, P.COMPLETE, P.FAILED, P.QUEUED, P.SKIPPED}
    ),
    P.AWAITING_APPROVAL: frozenset({P.QUEUED, P.FAILED, P.SKIPPED}),
    P.COMPLETE: frozenset({P.QUEUED}),  # only a requeue that names COMPLETE (see below)
    P.FAILED: frozenset({P.QUEUED}),
    P.SKIPPED: frozenset({P.QUEUED}),
}

_DONE_FAILED = frozenset(
    {
        R.DONE_FAILED_PHASES,
        R.DONE_FAILED_BUDGET_EXHAUSTED,
        R.DONE_FAILED_POLICY,
        R.DONE_FAILED_NEEDS_HUMAN,
        R.DONE_FAILED_ENV,
    }
)

RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    R.QUEUED: frozenset({R.RUNNING, R.DONE_CANCELLED, R.DONE_FAILED_BUDGET_EXHAUSTED}),
    R.RUNNING: frozenset({R.DONE_SUCCESS, R.DONE_CANCELLED, *_DONE_FAILED}),
    R.DONE_SUCCESS: frozenset({R.RUNNING}),  # a COMPLETE phase requeued on purpose
    R.DONE_CANCELLED: frozenset(),
    **{state: frozenset({R.RUNNING}) for state in _DONE_FAILED},
}

APPROVAL_TRANSITIONS: Mapping[ApprovalStatus, frozenset[ApprovalStatus]] = {
    ApprovalStatus.PENDING: frozenset(
        {
            ApprovalStatus.APPROVED,
            ApprovalStatus.REJECTED,
            ApprovalStatus.EXPIRED,
            ApprovalStatus.CANCELLED,
        }
    ),
    ApprovalStatus.APPROVED: frozenset(),
    ApprovalStatus.REJECTED: frozenset(),
    ApprovalStatus.EXPIRED: frozenset(),
    ApprovalStatus.CANCELLED: frozenset(),
}

PHASE_ACTIVE = frozenset({P.EXECUTING, P.CI_RUNNING})
"""States in which a worker holds a lease on the phase."""
PHASE_TERMINAL = frozenset({P.COMPLETE, P.FAILED, P.SKIPPED})
PHASE_OPEN = frozenset(PhaseState) - PHASE_TERMINAL
"""States that keep a run from finishing."""
PHASE_GAVE_UP = frozenset({P.FAILED, P.SKIPPED})
"""Finished without success: a drain leaves them alone, only a requeue (or ``--force``)
queues them again."""
PHASE_REQUEUEABLE = frozenset(
    s for s, targets in PHASE_TRANSITIONS.items() if P.QUEUED in targets and s != P.COMPLETE
)
"""States a requeue (``autopack run requeue``, ``drain phase --force``) can move to QUEUED;
COMPLETE only when the request says so (``RequeueIn.complete``: ``probe --force``)."""
RUN_ACTIVE = frozenset({R.QUEUED, R.RUNNING})
"""Runs whose phases may still be claimed."""
RUN_FINISHED = frozenset(RunState) - RUN_ACTIVE


def ensure_transition(kind: str, current: str, target: str, *, subject: str = "") -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is an edge of ``kind``.

    ``kind`` is ``"phase"`` or ``"run"``; ``subject`` names the object for the message
    (``"phase r1/p1"``) so a 409 tells the caller exactly what refused to move.
    """
    table: Mapping[str, frozenset[str]]
    if kind == "phase":
        table = PHASE_TRANSITIONS  # type: ignore[assignment]
    elif kind == "run":
        table = RUN_TRANSITIONS  # type: ignore[assignment]
    elif kind == "approval":
        table = APPROVAL_TRANSITIONS  # type: ignore[assignment]
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown state machine {kind!r}")
    allowed = table.get(current)
    if allowed is None or target not in allowed:
        what = subject or kind
        options = ", ".join(sorted(allowed)) if allowed else "none (final state)"
        raise IllegalTransition(
            f"{what} cannot go from {current} to {target} (allowed from {current}: {options})",
            current_state=current,
            requested_state=target,
        )


def tier_state(phase_states: Iterable[str]) -> TierState:
    """A tier's state from its phases' states (tiers have no transitions of their own).

    COMPLETE when every phase is COMPLETE; FAILED once every phase is terminal and one
    FAILED; SKIPPED when every phase is terminal, none FAILED and some were SKIPPED (a
    cancelled run, an exhausted budget, an earlier tier's failure); QUEUED before any phase
    started; RUNNING otherwise.
    """
    states = list(phase_states)
    if not states:
        return TierState.COMPLETE
    if all(s == P.COMPLETE for s in states):
        return TierState.COMPLETE
    if all(s in PHASE_TERMINAL for s in states):
        return TierState.FAILED if any(s == P.FAILED for s in states) else TierState.SKIPPED
    if all(s == P.QUEUED for s in states):
        return TierState.QUEUED
    return TierState.RUNNING


def run_outcome(phase_states: Iterable[str]) -> RunState | None:
    """The state a RUNNING run ends in when no phase is open any more, else None."""
    states = list(phase_states)
    if any(s in PHASE_OPEN for s in states):
        return None
    if all(s == P.COMPLETE for s in states):
        return R.DONE_SUCCESS
    return R.DONE_FAILED_PHASES
