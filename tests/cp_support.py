"""Helpers for the control-plane tests: build runs, drive claims, peek at rows, travel in time.

Time travel is done the honest way: the test moves a stored timestamp (a lease expiry, a
backoff, a run's start) into the past with an UPDATE, then lets the real code decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from autopack.db import Database, runs, work
from autopack.db.models import ApprovalRequest, Phase, PhaseAttempt, Run, utcnow
from autopack.rundef import parse_run_definition

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


def create(db: Database, run_id: str = "r", tiers: Any = (("T1", ["a"]),), **kw: Any) -> Any:
    return runs.create_run(db, parse_run_definition(definition(run_id, tiers, **kw)))


def claim(db: Database, worker: str = "w", run_id: str | None = "r", **kw: Any) -> Any:
    return work.claim(db, worker_id=worker, run_id=run_id, **kw)


def key(claimed: Mapping[str, Any]) -> str:
    return f"{claimed['run_id']}:{claimed['phase_id']}:{claimed['attempt']}"


def finish(
    db: Database,
    claimed: Mapping[str, Any],
    outcome: str = "COMPLETE",
    *,
    stop_reason: str | None = None,
    retryable: bool = True,
    error: str | None = None,
    feedback: str | None = None,
    idempotency_key: str | None = "auto",
) -> dict[str, Any]:
    result = work.ResultIn(
        lease_token=claimed["lease_token"],
        outcome=outcome,
        stop_reason=stop_reason or ("done" if outcome == "COMPLETE" else "check_failed"),
        retryable=retryable,
        error=error,
        feedback=feedback,
    )
    return work.post_result(
        db,
        claimed["run_id"],
        claimed["phase_id"],
        result,
        idempotency_key=key(claimed) if idempotency_key == "auto" else idempotency_key,
    )


def states(db: Database, run_id: str = "r") -> dict[str, str]:
    view = runs.get_run(db, run_id)
    return {p["phase_id"]: p["state"] for tier in view["tiers"] for p in tier["phases"]}


def phase_row(db: Database, run_id: str, phase_id: str) -> dict[str, Any]:
    with db.session() as session:
        row = (
            session.execute(
                select(Phase.__table__).where(Phase.run_id == run_id, Phase.phase_id == phase_id)
            )
            .mappings()
            .one()
        )
        return dict(row)


def attempt_rows(db: Database, run_id: str, phase_id: str | None = None) -> list[dict[str, Any]]:
    statement = select(PhaseAttempt.__table__).where(PhaseAttempt.run_id == run_id)
    if phase_id is not None:
        statement = statement.where(PhaseAttempt.phase_id == phase_id)
    with db.session() as session:
        rows = session.execute(
            statement.order_by(PhaseAttempt.phase_id, PhaseAttempt.attempt)
        ).mappings()
        return [dict(row) for row in rows]


def run_row(db: Database, run_id: str = "r") -> dict[str, Any]:
    with db.session() as session:
        return dict(session.execute(select(Run.__table__).where(Run.id == run_id)).mappings().one())


def snapshot(db: Database, run_id: str = "r") -> tuple[Any, ...]:
    """Everything a stale request must not change."""
    with db.session() as session:
        approvals = session.execute(
            select(ApprovalRequest.__table__).where(ApprovalRequest.run_id == run_id)
        ).mappings()
        approval_rows = [dict(row) for row in approvals]
    phases = [phase_row(db, run_id, p) for p in states(db, run_id)]
    return (run_row(db, run_id), phases, attempt_rows(db, run_id), approval_rows)


def expire_lease(db: Database, run_id: str, phase_id: str, seconds_ago: float = 1.0) -> None:
    with db.session() as session:
        session.execute(
            update(Phase)
            .where(Phase.run_id == run_id, Phase.phase_id == phase_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=seconds_ago))
        )


def make_available(db: Database, run_id: str, phase_id: str) -> None:
    """Skip a retry backoff."""
    with db.session() as session:
        session.execute(
            update(Phase)
            .where(Phase.run_id == run_id, Phase.phase_id == phase_id)
            .values(available_at=utcnow() - timedelta(seconds=1))
        )


def age_run(db: Database, run_id: str, minutes: float) -> None:
    """Pretend the run started ``minutes`` ago."""
    with db.session() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(started_at=utcnow() - timedelta(minutes=minutes))
        )


def expire_approval(db: Database, approval_id: int) -> None:
    with db.session() as session:
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id)
            .values(timeout_at=utcnow() - timedelta(seconds=1))
        )
