"""Runs as a whole: create from a definition, read (run, phase with history), list, cancel,
requeue a phase.

The statements that move single phases between workers live in :mod:`autopack.db.work`;
cancel and requeue reuse its cascades (skipping, reopening, settling) so every state
change still goes through the one state machine in :mod:`autopack.states`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from autopack.db import views
from autopack.db.work import (
    APPROVALS,
    ATTEMPTS,
    DEPS,
    PHASES,
    RUNS,
    TIERS,
    Tx,
    budget_problem,
    depends_on,
    end_run,
    get_phase_row,
    get_run_row,
    reopen_unblocked,
    run_transaction,
    set_run_state,
    settle_run,
)
from autopack.errors import Conflict, InvalidInput
from autopack.logs import log_event
from autopack.rundef import RunDefinition
from autopack.states import (
    PHASE_ACTIVE,
    RUN_ACTIVE,
    ApprovalStatus,
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
    ensure_transition,
)

if TYPE_CHECKING:
    from autopack.db import Database

logger = logging.getLogger("autopack.runs")

P = PhaseState
R = RunState
REL_TUPLES = text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:b_table)")
"""PostgreSQL's row estimate for a table (-1 before its first ANALYZE)."""
ANALYZE_LOCK_TIMEOUT = "2s"


def create_run(database: Database, definition: RunDefinition) -> dict[str, Any]:
    """Insert the run, its tiers, phases and dependency edges; 409 if the id exists."""

    def work(tx: Tx) -> dict[str, Any]:
        existing = tx.row(select(RUNS.c.id, RUNS.c.state).where(RUNS.c.id == definition.run_id))
        if existing is not None:
            raise _exists(tx, definition.run_id, existing["state"])
        budgets = definition.budgets
        tx.execute(
            insert(RUNS).values(
                id=definition.run_id,
                state=R.QUEUED,
                goal=definition.goal,
                token_cap=budgets.token_cap,
                cost_cap_usd=budgets.cost_cap_usd,
                max_phases=budgets.max_phases,
                max_duration_minutes=budgets.max_duration_minutes,
                policy=definition.policy.model_dump(),
                tokens_used=0,
                cost_usd=0.0,
                created_at=tx.now,
                updated_at=tx.now,
            )
        )
        tiers, phases, edges = [], [], []
        for tier_index, tier in enumerate(definition.tiers):
            tiers.append(
                {
                    "run_id": definition.run_id,
                    "tier_id": tier.tier_id,
                    "tier_index": tier_index,
                    "name": tier.name,
                    "state": TierState.QUEUED,
                }
            )
            for phase_index, phase in enumerate(tier.phases):
                phases.append(
                    {
                        "run_id": definition.run_id,
                        "phase_id": phase.phase_id,
                        "tier_id": tier.tier_id,
                        "tier_index": tier_index,
                        "phase_index": phase_index,
                        "name": phase.name,
                        "description": phase.description,
                        "task_category": phase.task_category,
                        "complexity": phase.complexity,
                        "scope": phase.scope.model_dump(),
                        "checks": list(phase.checks),
                        "state": P.QUEUED,
                        "attempts": 0,
                        "max_attempts": phase.max_attempts,
                        "retry_window_start": 0,
                        "available_at": tx.now,
                        "tokens_used": 0,
                        "cost_usd": 0.0,
                        "created_at": tx.now,
                        "updated_at": tx.now,
                    }
                )
                edges += [
                    {"run_id": definition.run_id, "phase_id": phase.phase_id, "depends_on": dep}
                    for dep in phase.depends_on
                ]
        tx.execute(insert(TIERS), tiers)
        tx.execute(insert(PHASES), phases)
        if edges:
            tx.execute(insert(DEPS), edges)
        log_event(
            logger,
            "run_created",
            run_id=definition.run_id,
            tiers=len(tiers),
            phases=len(phases),
            database=tx.identity.public_url,
        )
        # the edges come from the definition: this transaction may still roll back, so the
        # dependency cache must not learn them from it
        graph = {p.phase_id: list(p.depends_on) for t in definition.tiers for p in t.phases}
        return _run_view(tx, definition.run_id, graph)

    try:
        created = run_transaction(database, work)
    except IntegrityError as exc:  # two creators raced past the existence check
        raise Conflict(
            f"run {definition.run_id!r} already exists in database "
            f"{database.identity.public_url} (instance_id {database.identity.instance_id})",
            run_id=definition.run_id,
        ) from exc
    _refresh_planner_statistics(database, sum(len(tier.phases) for tier in definition.tiers))
    return created


def _refresh_planner_statistics(database: Database, new_phases: int) -> None:
    """PostgreSQL: ANALYZE the work tables when this run is a large share of them.

    A run is drained right after it is created, long before autovacuum's next look.
    Planning with statistics from before the insert, PostgreSQL took an index on
    ``run_id`` alone for the lookups by ``(run_id, phase_id)`` and scanned every phase of
    the run on each heartbeat and result (measured: 599 rows filtered per heartbeat in a
    600-phase run). Same rule as autoanalyze (10 % new rows), applied at once.
    """
    if not database.postgresql:
        return
    try:
        with database.engine.begin() as conn:
            known = conn.execute(REL_TUPLES, {"b_table": "phases"}).scalar_one()
            if new_phases >= 0.1 * max(known, 0):
                # A VACUUM or another ANALYZE holding the table must not stall run creation.
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ANALYZE_LOCK_TIMEOUT}'")
                conn.exec_driver_sql("ANALYZE phases, tiers, phase_dependencies")
    except DBAPIError as exc:  # the run is committed; autovacuum will analyze later
        reason = str(exc.orig or exc).strip()
        log_event(logger, "analyze_skipped", logging.WARNING, reason=reason)


def _exists(tx: Tx, run_id: str, state: str) -> Conflict:
    return Conflict(
        f"run {run_id!r} already exists in {tx.where()} (state {state})",
        run_id=run_id,
        state=state,
    )


def _run_view(
    tx: Tx, run_id: str, dependencies: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    run = get_run_row(tx, run_id)
    tiers = tx.rows(select(TIERS).where(TIERS.c.run_id == run_id))
    phases = tx.rows(select(PHASES).where(PHASES.c.run_id == run_id))
    if dependencies is None:
        dependencies = depends_on(tx, run_id)
    return views.run_view(run, tiers, phases, dependencies)


def get_run(database: Database, run_id: str) -> dict[str, Any]:
    """The RunView: the run with its tiers and phases; NotFound names run and database."""
    return run_transaction(database, lambda tx: _run_view(tx, run_id))


def list_runs(
    database: Database, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """Newest first: ``{items: [run summary], total, limit, offset}``."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidInput(f"limit must be 1..1000 and offset >= 0 (got {limit}, {offset})")
    if state is not None and state not in RunState.__members__:
        raise InvalidInput(
            f"state must be one of {', '.join(RunState)} (got {state!r})", value=state
        )

    def work(tx: Tx) -> dict[str, Any]:
        where = [RUNS.c.state == state] if state else []
        total = tx.execute(select(func.count()).select_from(RUNS).where(*where)).scalar_one()
        page = tx.rows(
            select(RUNS)
            .where(*where)
            .order_by(RUNS.c.created_at.desc(), RUNS.c.id)
            .limit(limit)
            .offset(offset)
        )
        counts: dict[str, Counter[str]] = {run["id"]: Counter() for run in page}
        if page:
            for row in tx.rows(
                select(PHASES.c.run_id, PHASES.c.state, func.count().label("n"))
                .where(PHASES.c.run_id.in_(list(counts)))
                .group_by(PHASES.c.run_id, PHASES.c.state)
            ):
                counts[row["run_id"]][row["state"]] = row["n"]
        return {
            "items": [views.run_summary(run, counts[run["id"]]) for run in page],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    return run_transaction(database, work)


def get_phase(database: Database, run_id: str, phase_id: str) -> dict[str, Any]:
    """PhaseView plus its attempts (oldest first) and approvals."""

    def work(tx: Tx) -> dict[str, Any]:
        phase = get_phase_row(tx, run_id, phase_id)
        attempts = tx.rows(
            select(ATTEMPTS)
            .where(ATTEMPTS.c.run_id == run_id, ATTEMPTS.c.phase_id == phase_id)
            .order_by(ATTEMPTS.c.attempt)
        )
        approvals = tx.rows(
            select(APPROVALS)
            .where(APPROVALS.c.run_id == run_id, APPROVALS.c.phase_id == phase_id)
            .order_by(APPROVALS.c.id)
        )
        view = views.phase_view(phase, depends_on(tx, run_id, phase_id)[phase_id])
        # The contract's detail view replaces PhaseView.attempts (a count) by the list of
        # attempt records; the count stays available as attempt_count.
        view["attempt_count"] = view.pop("attempts")
        view["attempts"] = [views.attempt_view(a) for a in attempts]
        view["approvals"] = [views.approval_view(a) for a in approvals]
        return view

    return run_transaction(database, work)


def cancel_run(database: Database, run_id: str, reason: str | None = None) -> dict[str, Any]:
    """DONE_CANCELLED: waiting phases SKIPPED, executing leases revoked, approvals cancelled."""
    text = f"run cancelled: {reason}" if reason else "run cancelled"

    def work(tx: Tx) -> dict[str, Any]:
        end_run(tx, run_id, R.DONE_CANCELLED, text, cancel=True)
        return _run_view(tx, run_id)

    return run_transaction(database, work)


def requeue_phase(
    database: Database,
    run_id: str,
    phase_id: str,
    *,
    requested_by: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Put a FAILED, SKIPPED or stuck (EXECUTING, CI_RUNNING, AWAITING_APPROVAL) phase back
    in the queue with a fresh retry window; recorded as a REQUEUED attempt.

    A stuck phase's lease is revoked (its worker's next call is a 409). Phases SKIPPED only
    because this one failed are re-queued with it, and a finished-failed run reopens.
    """

    def work(tx: Tx) -> dict[str, Any]:
        phase = get_phase_row(tx, run_id, phase_id, lock=True)
        run = get_run_row(tx, run_id)
        subject = f"phase {run_id}/{phase_id}"
        if run["state"] not in RUN_ACTIVE:
            ensure_transition("run", run["state"], R.RUNNING, subject=f"run {run_id}")
            problem = budget_problem(tx, run, starting_new_phase=False)
            if run["state"] == R.DONE_FAILED_BUDGET_EXHAUSTED and problem:
                raise Conflict(
                    f"cannot requeue {subject}: run {run_id} is still over budget ({problem})",
                    run_id=run_id,
                )
        ensure_transition("phase", phase["state"], P.QUEUED, subject=subject)
        previous = phase["state"]
        if previous in PHASE_ACTIVE:
            tx.execute(
                update(ATTEMPTS)
                .where(
                    ATTEMPTS.c.run_id == run_id,
                    ATTEMPTS.c.phase_id == phase_id,
                    ATTEMPTS.c.attempt == phase["attempts"],
                    ATTEMPTS.c.outcome == AttemptOutcome.EXECUTING,
                )
                .values(
                    outcome=AttemptOutcome.CANCELLED, stop_reason="requeued", finished_at=tx.now
                )
            )
        tx.execute(
            update(APPROVALS)
            .where(
                APPROVALS.c.run_id == run_id,
                APPROVALS.c.phase_id == phase_id,
                APPROVALS.c.status == ApprovalStatus.PENDING,
            )
            .values(
                status=ApprovalStatus.CANCELLED,
                responded_at=tx.now,
                responder=requested_by,
                note="phase requeued",
            )
        )
        number = phase["attempts"] + 1
        tx.execute(
            insert(ATTEMPTS).values(
                run_id=run_id,
                phase_id=phase_id,
                attempt=number,
                worker_id=requested_by,
                started_at=tx.now,
                finished_at=tx.now,
                outcome=AttemptOutcome.REQUEUED,
                stop_reason="requeued",
                files_written=[],
                check_results=[],
                details={
                    "previous_state": previous,
                    "requested_by": requested_by,
                    "reason": reason,
                },
                tokens_used=0,
                cost_usd=0.0,
            )
        )
        tx.execute(
            update(PHASES)
            .where(PHASES.c.id == phase["id"])
            .values(
                state=P.QUEUED,
                attempts=number,
                retry_window_start=number,
                available_at=tx.now,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                finished_at=None,
                updated_at=tx.now,
            )
        )
        reopened = reopen_unblocked(tx, run_id)
        if run["state"] not in RUN_ACTIVE:
            locked = get_run_row(tx, run_id, lock=True)
            if locked["state"] not in RUN_ACTIVE:  # another requeue may have reopened it
                set_run_state(tx, locked, R.RUNNING, None)
        settle_run(tx, run_id)
        log_event(
            logger,
            "phase_requeued",
            run_id=run_id,
            phase_id=phase_id,
            previous_state=previous,
            requested_by=requested_by,
            reason=reason,
            reopened=",".join(reopened),
        )
        updated = get_phase_row(tx, run_id, phase_id)
        return views.phase_view(updated, depends_on(tx, run_id, phase_id)[phase_id])

    return run_transaction(database, work)
