"""Helpers for the control-plane tests: build runs, drive claims, peek at rows, travel in time.

Time travel is done the honest way: the test moves a stored timestamp (a lease expiry, a
backoff, a run's start) into the past with an UPDATE, then lets the real code decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from autopack.clock import utcnow
from autopack.contract import Claim, ClaimIn, ResultAnswer, ResultIn, RunView
from autopack.control import claims, results, runs
from autopack.db import Database
from autopack.db.models import ApprovalRequest, Phase, PhaseAttempt, Run
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState

PhaseSpec = str | Mapping[str, Any]


def definition(
    run_id: str = "r",
    tiers: Iterable[tuple[str, Iterable[PhaseSpec]]] = (("T1", ["a"]),),
    *,
    budgets: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A run definition: ``[("T1", ["a", {"phase_id": "b", "depends_on": ["a"]}])]``."""
    built = []
    for tier_id, phases in tiers:
        items = []
        for spec in phases:
            item = {"phase_id": spec, "name": spec} if isinstance(spec, str) else dict(spec)
            item.setdefault("name", item["phase_id"])
            items.append(item)
        built.append({"tier_id": tier_id, "name": tier_id, "phases": items})
    return {
        "run_id": run_id,
        "budgets": dict(budgets or {}),
        "policy": {"retry_backoff_seconds": 0.0, **(policy or {})},
        "tiers": built,
    }


def create(db: Database, run_id: str = "r", tiers: Any = (("T1", ["a"]),), **kw: Any) -> RunView:
    return runs.create_run(db, parse_run_definition(definition(run_id, tiers, **kw)))


def claim(
    db: Database,
    worker: str = "w",
    run_id: str | None = "r",
    *,
    phase_id: str | None = None,
    lease_seconds: int = 60,
) -> Claim | None:
    request = ClaimIn(
        worker_id=worker, run_id=run_id, phase_id=phase_id, lease_seconds=lease_seconds
    )
    return claims.claim(db, request)


def claimed(db: Database, worker: str = "w", run_id: str | None = "r", **kw: Any) -> Claim:
    """:func:`claim` that must find something."""
    found = claim(db, worker, run_id, **kw)
    assert found is not None, "nothing was claimable"
    return found


def finish(
    db: Database,
    leased: Claim,
    outcome: str = "COMPLETE",
    *,
    stop_reason: str | None = None,
    retryable: bool = True,
    error: str | None = None,
    feedback: str | None = None,
    idempotency_key: str | None = "auto",
) -> ResultAnswer:
    result = ResultIn(
        lease_token=leased.lease_token,
        outcome=PhaseState(outcome),
        stop_reason=stop_reason or ("done" if outcome == "COMPLETE" else "check_failed"),
        retryable=retryable,
        error=error,
        feedback=feedback,
    )
    return results.post_result(
        db,
        leased.run_id,
        leased.phase_id,
        result,
        idempotency_key=leased.idempotency_key if idempotency_key == "auto" else idempotency_key,
    )


def states(db: Database, run_id: str = "r") -> dict[str, str]:
    return {p.phase_id: p.state for p in runs.get_run(db, run_id).phases()}


def _rows(db: Database, statement: Any) -> list[dict[str, Any]]:
    with db.transaction() as connection:
        return [dict(row) for row in connection.execute(statement).mappings()]


def _change(db: Database, statement: Any) -> None:
    with db.transaction() as connection:
        connection.execute(statement)


def phase_row(db: Database, run_id: str, phase_id: str) -> dict[str, Any]:
    [row] = _rows(
        db, select(Phase.__table__).where(Phase.run_id == run_id, Phase.phase_id == phase_id)
    )
    return row


def attempt_rows(db: Database, run_id: str, phase_id: str | None = None) -> list[dict[str, Any]]:
    statement = select(PhaseAttempt.__table__).where(PhaseAttempt.run_id == run_id)
    if phase_id is not None:
        statement = statement.where(PhaseAttempt.phase_id == phase_id)
    return _rows(db, statement.order_by(PhaseAttempt.phase_id, PhaseAttempt.attempt))


def run_row(db: Database, run_id: str = "r") -> dict[str, Any]:
    [row] = _rows(db, select(Run.__table__).where(Run.id == run_id))
    return row


def snapshot(db: Database, run_id: str = "r") -> tuple[Any, ...]:
    """Everything a stale request must not change."""
    approvals = _rows(db, select(ApprovalRequest.__table__).where(ApprovalRequest.run_id == run_id))
    phases = [phase_row(db, run_id, p) for p in states(db, run_id)]
    return (run_row(db, run_id), phases, attempt_rows(db, run_id), approvals)


def expire_lease(db: Database, run_id: str, phase_id: str, seconds_ago: float = 1.0) -> None:
    _change(
        db,
        update(Phase)
        .where(Phase.run_id == run_id, Phase.phase_id == phase_id)
        .values(lease_expires_at=utcnow() - timedelta(seconds=seconds_ago)),
    )


def make_available(db: Database, run_id: str, phase_id: str) -> None:
    """Skip a retry backoff."""
    _change(
        db,
        update(Phase)
        .where(Phase.run_id == run_id, Phase.phase_id == phase_id)
        .values(available_at=utcnow() - timedelta(seconds=1)),
    )


def age_run(db: Database, run_id: str, minutes: float) -> None:
    """Pretend the run started ``minutes`` ago."""
    _change(
        db,
        update(Run)
        .where(Run.id == run_id)
        .values(started_at=utcnow() - timedelta(minutes=minutes)),
    )


def expire_approval(db: Database, approval_id: int) -> None:
    _change(
        db,
        update(ApprovalRequest)
        .where(ApprovalRequest.id == approval_id)
        .values(timeout_at=utcnow() - timedelta(seconds=1)),
    )
