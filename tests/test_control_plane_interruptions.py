"""Control-plane rules of issue 13, on both backends: an interrupted attempt is recorded but
spends no retry, and a COMPLETE phase is requeued only when the request names it."""

from __future__ import annotations

from autopack.contract import RequeueIn
from autopack.control import runs
from autopack.db import Database
from tests.cp_support import attempt_rows, claim, claimed, create, finish, phase_row, run_row


def test_an_interrupted_attempt_is_requeued_at_once_without_spending_a_retry(
    db: Database,
) -> None:
    create(
        db,
        tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}])],
        policy={"retry_backoff_seconds": 30.0},
    )
    for attempt in (1, 2, 3):  # with one attempt allowed, three interruptions in a row
        leased = claimed(db)
        assert leased.attempt == attempt
        answer = finish(db, leased, "FAILED", stop_reason="interrupted", retryable=False)
        assert (answer.phase_state, answer.requeued) == ("QUEUED", True)
        row = phase_row(db, "r", "a")
        assert row["available_at"] <= row["updated_at"], "no backoff: it did not fail"
        assert row["lease_owner"] is None
    last = claimed(db)  # still claimable now, and its one real attempt still counts
    finish(db, last, "FAILED", error="boom")
    assert phase_row(db, "r", "a")["state"] == "FAILED"
    outcomes = [(r["attempt"], r["outcome"], r["stop_reason"]) for r in attempt_rows(db, "r")]
    assert outcomes == [
        (1, "FAILED", "interrupted"),
        (2, "FAILED", "interrupted"),
        (3, "FAILED", "interrupted"),
        (4, "FAILED", "check_failed"),
    ]


def test_an_ordinary_failure_still_spends_the_window(db: Database) -> None:
    """The control for the test above: the same phase failing for real is done at once."""
    create(db, tiers=[("T1", [{"phase_id": "a", "max_attempts": 1}])])
    finish(db, claimed(db), "FAILED", stop_reason="checks_failed")
    assert phase_row(db, "r", "a")["state"] == "FAILED"
    assert claim(db) is None


def test_a_complete_phase_is_requeued_only_when_asked_and_its_run_reopens(db: Database) -> None:
    create(db, tiers=[("T1", ["a"])])
    finish(db, claimed(db))
    assert run_row(db)["state"] == "DONE_SUCCESS"
    view = runs.requeue_phase(db, "r", "a", RequeueIn(requested_by="probe", complete=True))
    assert (view.state, view.attempts_left) == ("QUEUED", 3)
    assert run_row(db)["state"] == "RUNNING"
    again = claimed(db)
    assert again.attempt == 3  # 1 COMPLETE, 2 REQUEUED
    finish(db, again)
    assert run_row(db)["state"] == "DONE_SUCCESS"
