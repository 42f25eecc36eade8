"""The background duties: reclaim expired leases, expire approvals, end overdue runs.

The API runs :func:`maintain` every few seconds (:mod:`autopack.api.maintenance`), each
duty in its own transaction. Several API replicas may run it at once: every recovery is a
conditional update, so a duplicate is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopack.control import lifecycle
from autopack.control.approvals import expire_approvals
from autopack.control.leases import reclaim_expired
from autopack.db import Database
from autopack.db import statements as sql
from autopack.db.records import RunRecord
from autopack.db.transaction import Tx, run_transaction
from autopack.states import RunState


@dataclass(frozen=True)
class MaintenancePass:
    """What one pass did."""

    reclaimed: int
    approvals_expired: int
    runs_over_duration: int

    def __bool__(self) -> bool:
        return bool(self.reclaimed or self.approvals_expired or self.runs_over_duration)


def end_overdue_runs(tx: Tx) -> int:
    """RUNNING runs past ``max_duration_minutes``: DONE_FAILED_BUDGET_EXHAUSTED."""
    ended = 0
    for run in tx.all(RunRecord, sql.OVERDUE_CANDIDATES):
        problem = lifecycle.budget_problem(tx, run, starting_new_phase=False)
        if problem and problem.startswith("duration"):
            lifecycle.end_run(
                tx, run.id, RunState.DONE_FAILED_BUDGET_EXHAUSTED, problem, cancel=False
            )
            ended += 1
    return ended


def maintain(database: Database) -> MaintenancePass:
    """One pass of the background task; each duty in its own transaction."""
    return MaintenancePass(
        reclaimed=run_transaction(database, reclaim_expired),
        approvals_expired=run_transaction(database, expire_approvals),
        runs_over_duration=run_transaction(database, end_overdue_runs),
    )
