"""The control plane's rules, on real SQLite and PostgreSQL databases (no HTTP here).

Claims in tier and dependency order, retries with backoff, failure cascades, budgets at
claim time, fenced (zombie-proof) leases, idempotent results, reclaims, cancel, requeue
and approvals. The HTTP contract is in test_control_plane_api.py; many processes at once
in test_claims_concurrency.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from autopack.contract import (
    ApprovalCreated,
    ApprovalIn,
    ApprovedChange,
    CancelIn,
    Claim,
    DecisionIn,
    HeartbeatIn,
    RequeueIn,
    ResultAnswer,
    ResultIn,
    UsageIn,
)
from autopack.control import approvals, leases, lifecycle, maintenance, results, runs
from autopack.db import Database, statements
from autopack.errors import (
    BranchMoved,
    Conflict,
    IllegalTransition,
    InvalidInput,
    LeaseLost,
    NotFound,
)
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState, RunState
from tests.conftest import _pg_conninfo
from tests.cp_support import (
    age_run,
    attempt_rows,
    claim,
    claimed,
    create,
    definition,
    expire_approval,
    expire_lease,
    finish,
    make_available,
    phase_row,
    run_row,
    snapshot,
    states,
)

# -- creating and reading -------------------------------------------------------------------


def test_created_run_is_queued_with_everything_in_order(db: Database) -> None:
    view = create(
        db,
        tiers=[("T1", ["a", {"phase_id": "b", "depends_on": ["a"]}]), ("T2", ["c"])],
        budgets={"token_cap": 500, "max_phases": 9},
    )
    assert view.run_id == "r" and view.state == "QUEUED"
    assert view.budgets.model_dump() == {
        "token_cap": 500,
        "cost_cap_usd": 10.0,
        "max_phases": 9,
        "max_duration_minutes": 240,
    }
    assert view.counts == {"QUEUED": 3}
    assert [(t.tier_id, t.tier_index, t.state) for t in view.tiers] == [
        ("T1", 0, "QUEUED"),
        ("T2", 1, "QUEUED"),
    ]
    b = view.tiers[0].phases[1]
    assert (b.phase_id, b.phase_index, b.depends_on, b.attempts_left) == (
        "b",
        1,
        ["a"],
        3,
    )
    assert b.created_at.tzinfo is not None


def test_duplicate_run_is_a_conflict_and_unknown_ids_name_the_database(db: Database) -> None:
    create(db)
    with pytest.raises(Conflict, match="run 'r' already exists in database"):
        create(db)
    with pytest.raises(NotFound) as missing:
        runs.get_run(db, "ghost")
    assert "ghost" in missing.value.message
    assert db.identity.instance_id in missing.value.message
    assert missing.value.details["database_instance_id"] == db.identity.instance_id
    with pytest.raises(NotFound, match="phase 'zz' not found in run 'r'"):
        runs.get_phase(db, "r", "zz")
    with pytest.raises(NotFound, match="run 'ghost' not found"):
        claim(db, run_id="ghost")


def test_list_runs_filters_and_pages(db: Database) -> None:
    for run_id in ("r1", "r2", "r3"):
        create(db, run_id, tiers=[("T1", ["a", "b"])])
    finish(db, claimed(db, run_id="r2"))
    page = runs.list_runs(db, limit=2)
    assert page.total == 3 and len(page.items) == 2
    assert [item.run_id for item in page.items] == ["r3", "r2"]
    assert page.items[1].counts == {"COMPLETE": 1, "QUEUED": 1}
    assert runs.list_runs(db, limit=2, offset=2).items[0].run_id == "r1"
    running = runs.list_runs(db, state=RunState.RUNNING)
    assert [item.run_id for item in running.items] == ["r2"]
    # an unknown state is refused by the state type itself, before any query
    with pytest.raises(ValueError, match="'BOGUS' is not a valid RunState"):
        runs.list_runs(db, state=RunState("BOGUS"))


# -- claiming order -------------------------------------------------------------------------


def test_claims_follow_tier_order_and_dependencies(db: Database) -> None:
    create(
        db,
        tiers=[
            ("T1", ["a", {"phase_id": "b", "depends_on": ["a"]}, "c"]),
            ("T2", ["d"]),
        ],
    )
    first = claimed(db)
    assert first.phase_id == "a" and first.attempt == 1
    assert run_row(db)["state"] == "RUNNING" and run_row(db)["started_at"] is not None
    second = claimed(db)
    assert second.phase_id == "c", "b waits for a, so c comes next"
    assert claim(db) is None, "b waits for a; T2 waits for all of T1"
    finish(db, first)
    third = claimed(db)
    assert third.phase_id == "b"
    finish(db, third)
    assert claim(db) is None, "c is still running, so T2 must wait"
    answer = finish(db, second)
    assert answer.run_state == "RUNNING"
    fourth = claimed(db)
    assert fourth.phase_id == "d"
    answer = finish(db, fourth)
    assert answer.model_dump() == {
        "run_id": "r",
        "phase_id": "d",
        "attempt": 1,
        "phase_state": "COMPLETE",
        "run_state": "DONE_SUCCESS",
        "requeued": False,
        "available_at": None,
        "branch_head": None,
        "stop_reason": "done",
    }
    view = runs.get_run(db, "r")
    assert view.state == "DONE_SUCCESS" and view.finished_at is not None
    assert [t.state for t in view.tiers] == ["COMPLETE", "COMPLETE"]


def test_claim_carries_phase_run_and_lease(db: Database) -> None:
    create(db, tiers=[("T1", [{"phase_id": "a", "scope": {"deliverables": ["x/a.py"]}}])])
    leased = claimed(db, lease_seconds=30)
    assert leased.lease_seconds == 30
    assert len(leased.lease_token) == 32
    delta = leased.lease_expires_at - phase_row(db, "r", "a")["started_at"]
    assert timedelta(seconds=29) < delta <= timedelta(seconds=30)
    phase = leased.phase
    assert phase.state == "EXECUTING" and phase.lease_owner == "w"
    assert phase.scope.model_dump() == {
        "paths": ["x/"],
        "read_only_context": [],
        "deliverables": ["x/a.py"],
    }
    assert leased.run.state == "RUNNING"
    assert leased.run.budgets.token_cap == 1_000_000
    assert leased.history == [] and leased.approved_change is None


def test_claim_of_one_phase_and_bad_arguments(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b"])])
    assert claimed(db, phase_id="b").phase_id == "b"
    assert claim(db, phase_id="b") is None
    with pytest.raises(InvalidInput, match="needs its run_id"):
        claim(db, run_id=None, phase_id="a")
    # the lease length is checked by the request model (ClaimIn) now
    with pytest.raises(ValidationError, match="lease_seconds"):
        claim(db, lease_seconds=1)


def test_claims_across_runs_follow_creation_order(db: Database) -> None:
    create(db, "older")
    create(db, "newer")
    assert claimed(db, run_id=None).run_id == "older"
    assert claimed(db, run_id=None).run_id == "newer"
    assert claim(db, run_id=None) is None


# -- failures, retries, cascades -----------------------------------------------------------


def test_retryable_failure_backs_off_then_the_window_runs_out(db: Database) -> None:
    create(
        db,
        tiers=[("T1", [{"phase_id": "a", "max_attempts": 2}])],
        policy={"retry_backoff_seconds": 2.0},
    )
    first = claimed(db)
    answer = finish(db, first, "FAILED", error="AssertionError: 1 != 2\nmore", feedback="fix")
    assert answer.phase_state == "QUEUED" and answer.requeued is True
    row = phase_row(db, "r", "a")
    backoff = row["available_at"] - row["updated_at"]
    assert timedelta(seconds=1.9) < backoff <= timedelta(seconds=2)
    assert row["last_failure_reason"] == "check_failed: AssertionError: 1 != 2"
    assert claim(db) is None, "backing off"
    make_available(db, "r", "a")
    second = claimed(db)
    assert second.attempt == 2
    assert [(h.attempt, h.outcome, h.feedback) for h in second.history] == [(1, "FAILED", "fix")]
    answer = finish(db, second, "FAILED", error="AssertionError: 1 != 2")
    assert answer.phase_state == "FAILED" and answer.requeued is False
    assert answer.run_state == "DONE_FAILED_PHASES"
    row = phase_row(db, "r", "a")
    assert row["failure_fingerprint"] and len(row["failure_fingerprint"]) == 12
    assert claim(db) is None


def test_backoff_doubles_and_is_capped() -> None:
    policy = parse_run_definition(definition(policy={"retry_backoff_seconds": 2.0})).policy
    assert [lifecycle.backoff_seconds(policy, n) for n in (1, 2, 3, 4, 5, 6, 7)] == [
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]


def test_same_failure_same_fingerprint(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b", "c"])])
    for phase_id, error in (("a", "E: x\n1"), ("b", "E: x\n2"), ("c", "E: y")):
        finish(db, claimed(db, phase_id=phase_id), "FAILED", retryable=False, error=error)
    prints = {p: phase_row(db, "r", p)["failure_fingerprint"] for p in "abc"}
    assert prints["a"] == prints["b"] != prints["c"]


def test_failure_skips_dependents_and_later_tiers_then_the_run_ends(db: Database) -> None:
    create(
        db,
        tiers=[
            (
                "T1",
                [
                    "a",
                    {"phase_id": "b", "depends_on": ["a"]},
                    {"phase_id": "e", "depends_on": ["b"]},
                    "c",
                ],
            ),
            ("T2", ["d"]),
        ],
    )
    a = claimed(db)
    c = claimed(db)
    assert c.phase_id == "c"
    finish(db, a, "FAILED", retryable=False, error="broken")
    assert states(db) == {
        "a": "FAILED",
        "b": "SKIPPED",
        "e": "SKIPPED",
        "c": "EXECUTING",
        "d": "SKIPPED",
    }
    assert phase_row(db, "r", "e")["last_failure_reason"] == "blocked by a (FAILED)"
    assert run_row(db)["state"] == "RUNNING", "c is still executing"
    answer = finish(db, c)
    assert answer.run_state == "DONE_FAILED_PHASES"
    view = runs.get_run(db, "r")
    assert view.failure_reason is not None
    assert (
        "4 phase(s) did not complete: a FAILED, b SKIPPED, e SKIPPED, d SKIPPED"
        in view.failure_reason
    )
    assert [t.state for t in view.tiers] == ["FAILED", "SKIPPED"]


# -- usage and budgets ----------------------------------------------------------------------


def test_usage_adds_up_on_attempt_phase_and_run(db: Database) -> None:
    create(db, tiers=[("T1", ["a"])], budgets={"token_cap": 1000, "cost_cap_usd": 1.0})
    token = claimed(db).lease_token
    leases.report_usage(db, "r", "a", UsageIn(lease_token=token, tokens=300, cost_usd=0.25))
    answer = leases.report_usage(
        db, "r", "a", UsageIn(lease_token=token, tokens=200, cost_usd=0.25)
    )
    assert answer.phase.model_dump() == {"tokens_used": 500, "cost_usd": 0.5}
    assert answer.run.tokens_used == 500 and answer.run.budget_exhausted is False
    answer = leases.report_usage(db, "r", "a", UsageIn(lease_token=token, tokens=600, cost_usd=0))
    assert answer.run.budget_exhausted is True
    assert answer.run.reason == "token budget exhausted: 1100 tokens used, token_cap 1000"
    assert attempt_rows(db, "r", "a")[0]["tokens_used"] == 1100
    # negative usage is refused by the request model (UsageIn) now
    with pytest.raises(ValidationError, match="tokens"):
        leases.report_usage(db, "r", "a", UsageIn(lease_token=token, tokens=-1, cost_usd=0))


@pytest.mark.parametrize(
    ("budgets", "usage", "words"),
    [
        ({"token_cap": 100}, (100, 0.0), "token budget exhausted"),
        ({"cost_cap_usd": 0.5}, (1, 0.75), "cost budget exhausted"),
    ],
)
def test_spent_budget_stops_claims_and_ends_the_run(
    db: Database, budgets: dict[str, float], usage: tuple[int, float], words: str
) -> None:
    create(db, tiers=[("T1", ["a", "b", "c"])], budgets=budgets)
    a = claimed(db)
    b = claimed(db)
    leases.report_usage(
        db, "r", "a", UsageIn(lease_token=a.lease_token, tokens=usage[0], cost_usd=usage[1])
    )
    assert claim(db) is None
    run = run_row(db)
    assert run["state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert run["failure_reason"].startswith(words)
    assert states(db) == {"a": "EXECUTING", "b": "EXECUTING", "c": "SKIPPED"}
    # running attempts may still report; the run keeps its verdict
    assert finish(db, b).run_state == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert finish(db, a, "FAILED").phase_state == "FAILED", "no retry in a finished run"


def test_max_phases_counts_started_phases_not_retries(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b", "c"])], budgets={"max_phases": 2})
    finish(db, claimed(db), "FAILED")
    again = claimed(db)
    assert (again.phase_id, again.attempt) == ("a", 2), "a retry is not a new phase"
    b = claimed(db)
    assert b.phase_id == "b"
    assert claim(db) is None
    assert run_row(db)["failure_reason"] == "phase budget exhausted: 2 phases started, max_phases 2"


def test_duration_budget_at_claim_and_in_maintenance(db: Database) -> None:
    create(db, "r1", tiers=[("T1", ["a", "b"])], budgets={"max_duration_minutes": 10})
    create(db, "r2", tiers=[("T1", ["a", "b"])], budgets={"max_duration_minutes": 10})
    claimed(db, run_id="r1")
    claimed(db, run_id="r2")
    age_run(db, "r1", 11)
    age_run(db, "r2", 11)
    assert claim(db, run_id="r1") is None
    assert run_row(db, "r1")["failure_reason"].startswith("duration budget exhausted: running 11")
    assert maintenance.maintain(db).runs_over_duration == 1
    assert run_row(db, "r2")["state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert states(db, "r2")["b"] == "SKIPPED"


# -- leases: heartbeats, reclaims, zombies ----------------------------------------------------


def test_heartbeat_renews_and_switches_between_executing_and_ci(db: Database) -> None:
    create(db)
    leased = claimed(db, lease_seconds=10)
    token = leased.lease_token
    beat = leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=token, lease_seconds=600))
    assert beat.state == "EXECUTING"
    assert beat.lease_expires_at - leased.lease_expires_at > timedelta(seconds=500)
    ci = leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=token, state=PhaseState.CI_RUNNING))
    assert ci.state == "CI_RUNNING"
    # without lease_seconds the lease is renewed for the length it had (600 s)
    renewed = leases.heartbeat(
        db, "r", "a", HeartbeatIn(lease_token=token, state=PhaseState.EXECUTING)
    )
    assert renewed.state == "EXECUTING"
    row = phase_row(db, "r", "a")
    assert row["lease_seconds"] == 600
    assert timedelta(seconds=599) < row["lease_expires_at"] - row["updated_at"]
    with pytest.raises(LeaseLost, match="the token was never issued"):
        leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token="f" * 32, lease_seconds=10))


def test_expired_lease_nobody_took_can_still_be_renewed(db: Database) -> None:
    create(db)
    leased = claimed(db)
    expire_lease(db, "r", "a")
    leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=leased.lease_token, lease_seconds=60))
    assert claim(db, worker="other") is None
    assert finish(db, leased).phase_state == "COMPLETE"


def test_a_claim_reclaims_an_expired_lease_when_nothing_else_is_queued(db: Database) -> None:
    create(db)
    claimed(db, worker="w1")
    expire_lease(db, "r", "a")
    fresh = claim(db, worker="w2")
    assert fresh is not None, "an expired lease is claimable work, not a 204"
    assert (fresh.phase_id, fresh.attempt, fresh.history[0].outcome) == (
        "a",
        2,
        "LOST",
    )


def test_a_zombie_gets_lease_lost_and_changes_nothing_but_what_it_spent(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b"])])
    zombie = claimed(db, worker="w1")
    expire_lease(db, "r", "a")
    fresh = claimed(db, worker="w2")
    assert (fresh.phase_id, fresh.attempt) == ("a", 2), "reclaimed before anything else"
    lost = attempt_rows(db, "r", "a")[0]
    assert (lost["outcome"], lost["stop_reason"], lost["worker_id"]) == (
        "LOST",
        "lease_expired",
        "w1",
    )
    assert [(h.attempt, h.outcome) for h in fresh.history] == [(1, "LOST")]
    token = zombie.lease_token
    # Its call was made and billed: counted on its attempt, phase and run, then refused.
    spent = UsageIn(lease_token=token, tokens=5, cost_usd=0.1, idempotency_key="k1")
    with pytest.raises(LeaseLost):
        leases.report_usage(db, "r", "a", spent)
    assert [row["tokens_used"] for row in attempt_rows(db, "r", "a")] == [5, 0]
    assert (phase_row(db, "r", "a")["tokens_used"], run_row(db)["tokens_used"]) == (5, 5)
    with pytest.raises(LeaseLost):  # a token never issued for the phase counts nothing
        leases.report_usage(db, "r", "a", UsageIn(lease_token="forged", tokens=7, cost_usd=1))
    before = snapshot(db)
    with pytest.raises(LeaseLost) as caught:
        finish(db, zombie)
    assert "your attempt 1 ended as LOST (lease_expired)" in caught.value.message
    assert "held by w2 (attempt 2)" in caught.value.message
    with pytest.raises(LeaseLost):
        finish(db, zombie, idempotency_key=None)
    with pytest.raises(LeaseLost):
        leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=token, lease_seconds=60))
    with pytest.raises(LeaseLost):  # the same report again: counted once
        leases.report_usage(db, "r", "a", spent)
    with pytest.raises(LeaseLost):
        approvals.request_approval(db, "r", "a", ApprovalIn(lease_token=token, reason="x"))
    assert snapshot(db) == before
    assert finish(db, fresh).phase_state == "COMPLETE"


def test_lost_last_attempt_fails_the_phase_once_its_free_losses_are_spent(db: Database) -> None:
    """A phase's first FREE_LOSSES lost attempts spend no retry (a killed executor is not
    the phase's doing: ``max_attempts: 1`` FAILED at the first kill); later ones do, so a
    phase that kills every executor still ends."""
    create(db, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}]), ("T2", ["b"])])
    for attempt in range(1, leases.FREE_LOSSES + 1):
        assert claimed(db, worker="w1", phase_id="a").attempt == attempt
        expire_lease(db, "r", "a")
        assert maintenance.maintain(db).reclaimed == 1
        assert phase_row(db, "r", "a")["state"] == "QUEUED"
    claimed(db, worker="w1", phase_id="a")
    expire_lease(db, "r", "a")
    assert maintenance.maintain(db).reclaimed == 1
    row = phase_row(db, "r", "a")
    assert row["state"] == "FAILED"
    assert row["last_failure_reason"].startswith("lease_expired: worker w1 stopped heartbeating")
    assert states(db)["b"] == "SKIPPED"
    assert run_row(db)["state"] == "DONE_FAILED_PHASES"


def test_stops_while_the_checks_ran_share_the_free_losses_and_others_stay_free(
    db: Database,
) -> None:
    """A check runs the Builder's code, and code that stops the executor running it had
    each attempt handed back without spending a retry, a new Builder call each time, for
    ever under a supervisor that restarts executors. Stops while the checks ran now count
    with lost attempts; stops elsewhere (the Builder's call, a provider refusing) never
    spend a retry."""
    create(db, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}, "c"]), ("T2", ["b"])])

    def stopped(in_checks: bool) -> str:
        leased = claimed(db, worker="w1", phase_id="a")
        if in_checks:
            token = leased.lease_token
            leases.heartbeat(
                db, "r", "a", HeartbeatIn(lease_token=token, state=PhaseState.CI_RUNNING)
            )
        return finish(db, leased, "FAILED", stop_reason="interrupted").phase_state

    for _ in range(leases.FREE_LOSSES + 2):
        assert stopped(in_checks=False) == "QUEUED"
    assert stopped(in_checks=True) == "QUEUED"
    claimed(db, worker="w1", phase_id="a")
    expire_lease(db, "r", "a")
    assert maintenance.maintain(db).reclaimed == 1  # the second free stop
    assert phase_row(db, "r", "a")["state"] == "QUEUED"
    assert stopped(in_checks=True) == "FAILED"
    row = phase_row(db, "r", "a")
    assert "again while its checks ran" in row["last_failure_reason"], row
    assert states(db)["b"] == "SKIPPED"
    stops = [a["details"].get("stopped_in") for a in attempt_rows(db, "r", "a")]
    assert stops == ["EXECUTING"] * 4 + ["CI_RUNNING", None, "CI_RUNNING"]
    # where a stop found the phase is the control plane's to say, not a worker's
    said = {"stopped_in": "CI_RUNNING", "summary": "done"}
    leased = claimed(db, worker="w1", phase_id="c")
    answer = results.post_result(
        db,
        "r",
        "c",
        ResultIn(
            lease_token=leased.lease_token,
            outcome="COMPLETE",
            stop_reason="completed",
            details=said,
        ),
    )
    assert answer.phase_state == "COMPLETE"
    assert attempt_rows(db, "r", "c")[0]["details"] == {"summary": "done"}


def test_a_repeated_or_concurrent_reclaim_applies_once(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b", "c"])])
    for _ in range(3):
        claimed(db)
    for phase_id in "abc":
        expire_lease(db, "r", phase_id)
    barrier = threading.Barrier(4)
    counts: list[int] = []
    errors: list[BaseException] = []

    def recover() -> None:
        try:
            barrier.wait(timeout=10)
            counts.append(maintenance.maintain(db).reclaimed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sum(counts) == 3
    assert maintenance.maintain(db).reclaimed == 0
    outcomes = [(a["phase_id"], a["attempt"], a["outcome"]) for a in attempt_rows(db, "r")]
    assert outcomes == [("a", 1, "LOST"), ("b", 1, "LOST"), ("c", 1, "LOST")]
    assert set(states(db).values()) == {"QUEUED"}


# -- idempotent results ---------------------------------------------------------------------


def test_another_phases_key_cannot_take_this_phases_result(db: Database) -> None:
    """Keys were one namespace for every phase: a worker holding phase a posted under
    b's future key (``r:b:1``), and b's real result was then refused (409)."""
    create(db, tiers=[("T1", ["a", "b"])])
    first, second = claimed(db), claimed(db)
    assert (first.phase_id, second.phase_id) == ("a", "b")
    finish(db, first, "FAILED", error="e", idempotency_key="r:b:1")
    answer = finish(db, second, "COMPLETE", idempotency_key="r:b:1")
    assert answer.phase_state == "COMPLETE"
    assert [row["outcome"] for row in attempt_rows(db, "r", "b")] == ["COMPLETE"]


def test_the_same_result_three_times_is_applied_once(db: Database) -> None:
    create(db, tiers=[("T1", ["a"])])
    leased = claimed(db)
    leases.report_usage(
        db, "r", "a", UsageIn(lease_token=leased.lease_token, tokens=10, cost_usd=0.1)
    )
    answers = [finish(db, leased, "FAILED", error="e") for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0].phase_state == "QUEUED" and answers[0].requeued is True
    rows = attempt_rows(db, "r", "a")
    assert len(rows) == 1 and rows[0]["outcome"] == "FAILED"
    assert rows[0]["result_key"] == results.stored_key("r", "a", "r:a:1")
    assert phase_row(db, "r", "a")["attempts"] == 1
    assert run_row(db)["tokens_used"] == 10
    # without the header, the spent lease token identifies the same attempt
    assert finish(db, leased, "FAILED", error="e", idempotency_key=None) == answers[0]
    # a key is one phase's: the same key on another phase is that phase's own
    create(db, "other")
    other = claimed(db, run_id="other")
    assert finish(db, other, idempotency_key="r:a:1").phase_state == "COMPLETE"
    assert finish(db, leased, "FAILED", error="e") == answers[0], "r/a's answer is kept"


def test_result_outcome_must_be_complete_or_failed(db: Database) -> None:
    create(db)
    leased = claimed(db)
    # the outcome is checked by the request model (ResultIn) now
    with pytest.raises(ValidationError, match=r"outcome\n.*'COMPLETE'.*'FAILED'"):
        finish(db, leased, "SKIPPED")


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_revokes_leases_skips_waiting_phases_and_approvals(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b", "c"])])
    a = claimed(db)
    b = claimed(db)
    asked = approvals.request_approval(
        db, "r", "b", ApprovalIn(lease_token=b.lease_token, reason="delete x")
    )
    view = runs.cancel_run(db, "r", CancelIn(reason="operator said so"))
    assert view.state == "DONE_CANCELLED"
    assert view.failure_reason == "run cancelled: operator said so"
    assert view.counts == {"SKIPPED": 3}
    assert [t.state for t in view.tiers] == ["SKIPPED"]
    with pytest.raises(LeaseLost):
        leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=a.lease_token, lease_seconds=60))
    with pytest.raises(LeaseLost):
        finish(db, a)
    attempts = {(x["phase_id"], x["attempt"]): x for x in attempt_rows(db, "r")}
    assert attempts[("a", 1)]["outcome"] == "CANCELLED"
    listed = approvals.list_approvals(db, status=None, run_id="r").items
    assert [(x.id, x.status) for x in listed] == [(asked.approval_id, "cancelled")]
    assert claim(db) is None
    with pytest.raises(IllegalTransition, match="run r cannot go from DONE_CANCELLED"):
        runs.cancel_run(db, "r", CancelIn())


# -- requeue ---------------------------------------------------------------------------------


def test_requeue_of_a_failed_phase_reopens_the_run_and_what_it_blocked(db: Database) -> None:
    create(
        db,
        tiers=[
            (
                "T1",
                [{"phase_id": "a", "max_attempts": 1}, {"phase_id": "b", "depends_on": ["a"]}, "c"],
            ),
            ("T2", ["d"]),
        ],
    )
    finish(db, claimed(db), "FAILED", retryable=False)
    finish(db, claimed(db))  # c
    assert run_row(db)["state"] == "DONE_FAILED_PHASES"
    view = runs.requeue_phase(db, "r", "a", RequeueIn(requested_by="alice", reason="fixed the env"))
    assert view.state == "QUEUED" and view.attempts == 2 and view.attempts_left == 1
    assert states(db) == {"a": "QUEUED", "b": "QUEUED", "c": "COMPLETE", "d": "QUEUED"}
    run = run_row(db)
    assert run["state"] == "RUNNING" and run["finished_at"] is None
    requeued = attempt_rows(db, "r", "a")[1]
    assert (requeued["attempt"], requeued["outcome"], requeued["worker_id"]) == (
        2,
        "REQUEUED",
        "alice",
    )
    assert requeued["details"]["reason"] == "fixed the env"
    again = claimed(db)
    assert (again.phase_id, again.attempt) == ("a", 3)
    finish(db, again)
    finish(db, claimed(db))  # b
    assert finish(db, claimed(db)).run_state == "DONE_SUCCESS"  # d


def test_requeue_of_a_phase_its_failed_blocker_still_holds_is_refused(db: Database) -> None:
    """Requeueing a phase that waits for a FAILED one reopened the finished run around a
    phase nobody could ever claim: the run stayed RUNNING and `drain run` waited forever."""
    create(
        db,
        tiers=[
            ("T1", [{"phase_id": "a", "max_attempts": 1}, {"phase_id": "b", "depends_on": ["a"]}]),
            ("T2", ["d"]),
        ],
    )
    finish(db, claimed(db), "FAILED", retryable=False)
    assert run_row(db)["state"] == "DONE_FAILED_PHASES"
    before = snapshot(db)
    for blocked in ("b", "d"):
        with pytest.raises(Conflict, match=r"it waits for a \(FAILED\).*; requeue a instead"):
            runs.requeue_phase(db, "r", blocked, RequeueIn())
    assert snapshot(db) == before
    runs.requeue_phase(db, "r", "a", RequeueIn())  # the blocker: it reopens them
    assert states(db) == {"a": "QUEUED", "b": "QUEUED", "d": "QUEUED"}


def test_requeue_of_a_stuck_phase_revokes_its_lease(db: Database) -> None:
    create(db)
    stuck = claimed(db, worker="w1")
    runs.requeue_phase(db, "r", "a", RequeueIn(requested_by="bob"))
    with pytest.raises(LeaseLost):
        leases.heartbeat(db, "r", "a", HeartbeatIn(lease_token=stuck.lease_token, lease_seconds=60))
    outcomes = [(x["attempt"], x["outcome"], x["stop_reason"]) for x in attempt_rows(db, "r")]
    assert outcomes == [(1, "CANCELLED", "requeued"), (2, "REQUEUED", "requeued")]
    assert claimed(db, worker="w2").attempt == 3


def test_requeue_refuses_complete_queued_and_cancelled(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b"])])
    finish(db, claimed(db))
    before = snapshot(db)
    with pytest.raises(IllegalTransition, match="phase r/a is COMPLETE: requeueing it runs it"):
        runs.requeue_phase(db, "r", "a", RequeueIn())
    with pytest.raises(IllegalTransition, match="from QUEUED to QUEUED"):
        runs.requeue_phase(db, "r", "b", RequeueIn())
    assert snapshot(db) == before
    runs.cancel_run(db, "r", CancelIn())
    with pytest.raises(IllegalTransition, match="run r cannot go from DONE_CANCELLED"):
        runs.requeue_phase(db, "r", "b", RequeueIn())


def test_requeue_in_a_run_still_over_budget_is_refused(db: Database) -> None:
    create(db, tiers=[("T1", ["a", "b"])], budgets={"token_cap": 10})
    a = claimed(db)
    leases.report_usage(db, "r", "a", UsageIn(lease_token=a.lease_token, tokens=50, cost_usd=0))
    assert claim(db) is None
    with pytest.raises(Conflict, match="still over budget"):
        runs.requeue_phase(db, "r", "b", RequeueIn())


# -- approvals -------------------------------------------------------------------------------


def ask(
    db: Database,
    leased: Claim,
    *,
    reason: str = "delete legacy.py",
    timeout_seconds: float | None = None,
) -> ApprovalCreated:
    return approvals.request_approval(
        db,
        leased.run_id,
        leased.phase_id,
        ApprovalIn(
            lease_token=leased.lease_token,
            reason=reason,
            context={"change": {"delete": ["legacy.py"]}},
            timeout_seconds=timeout_seconds,
        ),
    )


def test_approval_request_parks_the_phase_and_releases_the_lease(db: Database) -> None:
    create(db, policy={"approval_timeout_minutes": 30})
    leased = claimed(db)
    asked = ask(db, leased)
    assert asked.phase_state == "AWAITING_APPROVAL"
    approval = asked.approval
    assert approval.status == "pending" and approval.on_timeout == "fail"
    assert approval.timeout_at - approval.requested_at == timedelta(minutes=30)
    row = phase_row(db, "r", "a")
    assert row["state"] == "AWAITING_APPROVAL" and row["lease_token"] is None
    assert attempt_rows(db, "r", "a")[0]["outcome"] == "AWAITING_APPROVAL"
    assert ask(db, leased) == asked, "a retried request answers with the same approval"
    with pytest.raises(LeaseLost):
        leases.heartbeat(
            db, "r", "a", HeartbeatIn(lease_token=leased.lease_token, lease_seconds=60)
        )
    assert claim(db) is None
    assert approvals.list_approvals(db).items == [approval]


def test_approve_requeues_and_the_next_claim_gets_the_change_once(db: Database) -> None:
    create(db, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}])])
    asked = ask(db, claimed(db))
    decided = approvals.decide_approval(
        db, asked.approval_id, approve=True, decision=DecisionIn(responder="carol", note="fine")
    )
    assert decided.status == "approved" and decided.phase_state == "QUEUED"
    assert decided.responder == "carol" and decided.responded_at is not None
    again = claim(db)
    assert again is not None, "the approved continuation runs even on the last attempt"
    assert again.approved_change == ApprovedChange(
        approval_id=asked.approval_id,
        reason="delete legacy.py",
        context={"change": {"delete": ["legacy.py"]}},
        responder="carol",
        note="fine",
    )
    finish(db, again, "FAILED", retryable=True)
    runs.requeue_phase(db, "r", "a", RequeueIn())
    assert claimed(db).approved_change is None, "given once"
    with pytest.raises(IllegalTransition, match="approval 1 cannot go from approved"):
        approvals.decide_approval(
            db, asked.approval_id, approve=False, decision=DecisionIn(responder="dave")
        )


def test_reject_fails_the_phase_and_blocks_its_dependents(db: Database) -> None:
    create(db, tiers=[("T1", ["a", {"phase_id": "b", "depends_on": ["a"]}])])
    asked = ask(db, claimed(db))
    decided = approvals.decide_approval(
        db,
        asked.approval_id,
        approve=False,
        decision=DecisionIn(responder="erin", note="too risky"),
    )
    assert decided.phase_state == "FAILED"
    row = phase_row(db, "r", "a")
    assert row["last_failure_reason"] == "approval_rejected: too risky"
    first = attempt_rows(db, "r", "a")[0]
    assert (first["outcome"], first["stop_reason"]) == ("FAILED", "approval_rejected")
    assert states(db) == {"a": "FAILED", "b": "SKIPPED"}
    assert run_row(db)["state"] == "DONE_FAILED_PHASES"
    with pytest.raises(NotFound, match="approval 999 not found"):
        approvals.decide_approval(db, 999, approve=True, decision=DecisionIn(responder="x"))


@pytest.mark.parametrize(("policy", "expected"), [("fail", "FAILED"), ("requeue", "QUEUED")])
def test_expired_approval_follows_the_run_policy(db: Database, policy: str, expected: str) -> None:
    create(db, policy={"on_approval_timeout": policy})
    asked = ask(db, claimed(db), timeout_seconds=3600)
    assert maintenance.maintain(db).approvals_expired == 0
    expire_approval(db, asked.approval_id)
    assert maintenance.maintain(db).approvals_expired == 1
    assert maintenance.maintain(db).approvals_expired == 0
    (approval,) = approvals.list_approvals(db, status=None).items
    assert approval.status == "expired" and (approval.note or "").startswith("no decision by")
    assert phase_row(db, "r", "a")["state"] == expected
    if expected == "QUEUED":
        assert claimed(db).approved_change is None
    else:
        assert phase_row(db, "r", "a")["last_failure_reason"].startswith("approval_expired")
        with pytest.raises(IllegalTransition):
            approvals.decide_approval(
                db, asked.approval_id, approve=True, decision=DecisionIn(responder="late")
            )


@pytest.mark.parametrize(("policy", "expected"), [("fail", "FAILED"), ("requeue", "QUEUED")])
def test_a_decision_after_the_timeout_is_refused_and_the_approval_expires(
    db: Database, policy: str, expected: str
) -> None:
    """Past timeout_at, an approval could still be approved (its change applied) until the
    next maintenance pass expired it, up to AUTOPACK_MAINTENANCE_INTERVAL_SECONDS later."""
    create(db, policy={"on_approval_timeout": policy})
    asked = ask(db, claimed(db), timeout_seconds=3600)
    expire_approval(db, asked.approval_id)  # its time is up; no maintenance pass yet
    with pytest.raises(IllegalTransition, match="expired at"):
        approvals.decide_approval(
            db, asked.approval_id, approve=True, decision=DecisionIn(responder="late")
        )
    (approval,) = approvals.list_approvals(db, status=None).items
    assert approval.status == "expired" and approval.responder is None
    assert phase_row(db, "r", "a")["state"] == expected
    assert maintenance.maintain(db).approvals_expired == 0, "expired once"
    if expected == "QUEUED":
        assert claimed(db).approved_change is None, "the late approval gave nothing"


def test_requeue_of_a_waiting_phase_cancels_its_approval(db: Database) -> None:
    create(db)
    asked = ask(db, claimed(db))
    runs.requeue_phase(db, "r", "a", RequeueIn(requested_by="frank"))
    (approval,) = approvals.list_approvals(db, status=None).items
    assert (approval.id, approval.status) == (asked.approval_id, "cancelled")
    with pytest.raises(IllegalTransition):
        approvals.decide_approval(
            db, asked.approval_id, approve=True, decision=DecisionIn(responder="x")
        )
    assert claimed(db).attempt == 3


def test_last_phases_finishing_at_once_still_end_the_run(db: Database) -> None:
    """Write skew guard: two results that complete the last two open phases concurrently
    (each seeing the other still open when it starts) must not both miss the run's end."""
    for round_ in range(12):
        run_id = f"race{round_}"
        create(db, run_id, tiers=[("T1", ["a", "b", "c"])])
        held = [claimed(db, run_id=run_id) for _ in range(3)]
        finish(db, held[0])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def post(
            leased: Claim,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(timeout=10)
                finish(db, leased)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=post, args=(c,)) for c in held[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        view = runs.get_run(db, run_id)
        assert view.state == "DONE_SUCCESS", (round_, view.counts)
        assert [t.state for t in view.tiers] == ["COMPLETE"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_large_new_run_is_planned_with_fresh_statistics(db: Database) -> None:
    """Heartbeats and results find their phase by (run_id, phase_id), not by scanning the
    run: with the statistics from before the insert, PostgreSQL picked an index on run_id
    alone and filtered every phase of the run on each call."""
    create(db, tiers=[("T1", [f"p{i:04d}" for i in range(600)])])
    leased = claimed(db)
    compiled = statements.RENEW_LEASE.compile(dialect=db.engine.dialect)
    now = datetime.now(UTC)
    params = {
        **compiled.params,
        "b_run": "r",
        "b_phase": leased.phase_id,
        "b_token": leased.lease_token,
        "b_expires": now,
        "b_seconds": 60,
        "b_now": now,
    }
    with db.engine.connect() as connection:
        explained = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", params)
        (plan,) = explained.scalar_one()

    def scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if node.get("Relation Name") == "phases" and node["Node Type"].endswith("Scan"):
            yield node
        for child in node.get("Plans", []):
            yield from scans(child)

    (scan,) = scans(plan["Plan"])
    assert "phase_id" in scan.get("Index Cond", ""), scan


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_table_held_by_vacuum_does_not_stall_or_fail_run_creation(
    db: Database, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The statistics refresh after a create gives up after its lock timeout; the run,
    already committed, is answered as created and is claimable."""
    with psycopg.connect(_pg_conninfo(database_url)) as holder:
        holder.execute("LOCK TABLE phases IN SHARE UPDATE EXCLUSIVE MODE")  # as VACUUM does
        with caplog.at_level(logging.WARNING, logger=runs.logger.name):
            view = create(db, tiers=[("T1", ["a", "b"])])
    assert view.state == "QUEUED"
    assert [record.levelno for record in caplog.records if record.msg == "analyze_skipped"] == [
        logging.WARNING
    ]
    assert claimed(db).phase_id == "a"


# -- the run's branch: results carry commits, accepted by compare-and-swap ----------------------

C1, C2, C3 = "1" * 40, "2" * 40, "3" * 40


def _complete(db: Database, leased: Claim, commit: str, base: str | None) -> ResultAnswer:
    result = ResultIn(
        lease_token=leased.lease_token,
        outcome=PhaseState.COMPLETE,
        stop_reason="completed",
        commit=commit,
        base=base,
    )
    return results.post_result(
        db, leased.run_id, leased.phase_id, result, idempotency_key=leased.idempotency_key
    )


def test_completed_commits_are_accepted_in_a_chain_and_a_stale_base_is_refused(
    db: Database,
) -> None:
    create(db, tiers=[("T1", ["a", "b"])])
    a, b = claimed(db), claimed(db)
    assert a.run.branch_head is None and a.run.branch == "autopack/r"
    answer = _complete(db, a, C1, base=C3)  # the first commit: any base the executor had
    assert answer.branch_head == C1
    assert run_row(db)["branch_head"] == C1
    assert phase_row(db, "r", "a")["commit_sha"] == C1
    before = snapshot(db)
    with pytest.raises(BranchMoved) as moved:
        _complete(db, b, C2, base=C3)  # made on the old head: rebase and post again
    assert moved.value.details["branch_head"] == C1
    assert snapshot(db) == before, "nothing applied, the lease is still b's"
    answer = _complete(db, b, C2, base=C1)
    assert (answer.branch_head, answer.run_state) == (C2, RunState.DONE_SUCCESS)
    history = runs.get_phase(db, "r", "b").history
    assert [(h.commit_sha, h.base_sha) for h in history] == [(C2, C1)]
    assert runs.get_run(db, "r").branch_head == C2


def test_a_stale_executors_commit_never_becomes_the_head(db: Database) -> None:
    create(db)
    zombie = claimed(db, lease_seconds=5)
    expire_lease(db, "r", "a")
    fresh = claimed(db, "w2")
    assert _complete(db, fresh, C1, base=None).branch_head == C1
    with pytest.raises(LeaseLost):
        _complete(db, zombie, C2, base=C1)
    assert run_row(db)["branch_head"] == C1


def test_a_failed_result_never_moves_the_branch(db: Database) -> None:
    create(db)
    leased = claimed(db)
    finish(db, leased, "FAILED")
    assert run_row(db)["branch_head"] is None


def test_a_result_commit_must_be_a_full_object_name() -> None:
    with pytest.raises(ValidationError, match="commit"):
        ResultIn(lease_token="t", outcome=PhaseState.COMPLETE, stop_reason="x", commit="HEAD")
