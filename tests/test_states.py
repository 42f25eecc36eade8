"""The state machines: only the listed edges exist; derived tier and run states."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from enum import StrEnum

import pytest

from autopack.errors import IllegalTransition
from autopack.states import (
    APPROVAL_TRANSITIONS,
    PHASE_REQUEUEABLE,
    PHASE_TRANSITIONS,
    RUN_TRANSITIONS,
    ApprovalStatus,
    PhaseState,
    RunState,
    TierState,
    ensure_transition,
    run_outcome,
    tier_state,
)

MACHINES = [
    ("phase", PhaseState, PHASE_TRANSITIONS),
    ("run", RunState, RUN_TRANSITIONS),
    ("approval", ApprovalStatus, APPROVAL_TRANSITIONS),
]


@pytest.mark.parametrize(("kind", "states", "table"), MACHINES, ids=[m[0] for m in MACHINES])
def test_every_pair_outside_the_table_is_refused(
    kind: str, states: type[StrEnum], table: Mapping[str, frozenset[str]]
) -> None:
    for current, target in itertools.product(list(states), repeat=2):
        if target in table[current]:
            ensure_transition(kind, current, target)
        else:
            with pytest.raises(IllegalTransition) as caught:
                ensure_transition(kind, current, target, subject=f"{kind} x")
            assert f"{kind} x cannot go from {current} to {target}" in caught.value.message
            assert caught.value.details == {"current_state": current, "requested_state": target}


def test_terminal_states_have_no_way_out_except_requeue() -> None:
    # COMPLETE and DONE_SUCCESS reopen only for a requeue that names COMPLETE (the probe).
    assert PHASE_TRANSITIONS[PhaseState.COMPLETE] == {PhaseState.QUEUED}
    assert PhaseState.COMPLETE not in PHASE_REQUEUEABLE
    assert PHASE_TRANSITIONS[PhaseState.FAILED] == {PhaseState.QUEUED}
    assert RUN_TRANSITIONS[RunState.DONE_SUCCESS] == {RunState.RUNNING}
    assert RUN_TRANSITIONS[RunState.DONE_CANCELLED] == frozenset()
    assert RUN_TRANSITIONS[RunState.DONE_FAILED_PHASES] == {RunState.RUNNING}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["QUEUED", "QUEUED"], TierState.QUEUED),
        (["EXECUTING", "QUEUED"], TierState.RUNNING),
        (["COMPLETE", "QUEUED"], TierState.RUNNING),
        (["COMPLETE", "COMPLETE"], TierState.COMPLETE),
        (["COMPLETE", "FAILED", "SKIPPED"], TierState.FAILED),
        (["SKIPPED", "SKIPPED"], TierState.SKIPPED),
        (["COMPLETE", "SKIPPED"], TierState.SKIPPED),
        (["AWAITING_APPROVAL"], TierState.RUNNING),
    ],
)
def test_tier_state_is_derived_from_its_phases(states: list[str], expected: TierState) -> None:
    assert tier_state(states) == expected


def test_run_outcome() -> None:
    assert run_outcome(["COMPLETE", "EXECUTING"]) is None
    assert run_outcome(["COMPLETE", "AWAITING_APPROVAL"]) is None
    assert run_outcome(["COMPLETE", "COMPLETE"]) == RunState.DONE_SUCCESS
    assert run_outcome(["COMPLETE", "SKIPPED"]) == RunState.DONE_FAILED_PHASES
    assert run_outcome(["FAILED"]) == RunState.DONE_FAILED_PHASES
