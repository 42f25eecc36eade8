"""Runs as a whole: create from a definition, read, list, cancel; read and requeue a phase.

Cancel and requeue reuse the cascades of :mod:`autopack.control.lifecycle` (skipping,
reopening, settling), so every state change still goes through the one state machine
in :mod:`autopack.states`.
"""

from __future__ import annotations

import logging
from collections import Counter

from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidRequestError

from autopack.contract import (
    CancelIn,
    PhaseDetail,
    PhaseView,
    RequeueIn,
    RunBrief,
    RunList,
    RunView,
)
from autopack.control import lifecycle, views
from autopack.db import Database
from autopack.db import approvals as approval_sql
from autopack.db import statements as sql
from autopack.db import telemetry as telemetry_sql
from autopack.db.records import ApprovalRecord, AttemptRecord, PhaseRecord, RunRecord, TierRecord
from autopack.db.transaction import Tx, run_transaction
from autopack.errors import Conflict, DatabaseUnavailable, IllegalTransition
from autopack.logs import log_event
from autopack.repoident import repository_identity, without_password
from autopack.rundef import RunDefinition, default_branch
from autopack.states import (
    PHASE_ACTIVE,
    RUN_ACTIVE,
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
    ensure_transition,
)

logger = lifecycle.logger
P = PhaseState
R = RunState
ANALYZE_LOCK_TIMEOUT = "2s"


def create_run(database: Database, definition: RunDefinition) -> RunView:
    """Insert the run, its tiers, phases and dependency edges; 409 if the id exists."""

    def work(tx: Tx) -> RunView:
        existing = tx.one(RunRecord, sql.RUN, {"b_run": definition.run_id})
        if existing is not None:
            raise _exists(tx, definition.run_id, existing.state)
        branch = definition.branch or default_branch(definition.run_id)
        _ensure_branch_free(tx, definition.repository, branch)
        budgets = definition.budgets
        tx.execute(
            sql.INSERT_RUN,
            {
                "id": definition.run_id,
                "state": R.QUEUED,
                "goal": definition.goal,
                "token_cap": budgets.token_cap,
                "cost_cap_usd": budgets.cost_cap_usd,
                "max_phases": budgets.max_phases,
                "max_duration_minutes": budgets.max_duration_minutes,
                "policy": definition.policy.model_dump(),
                "repository": definition.repository,
                "branch": branch,
                "tokens_used": 0,
                "cost_usd": 0.0,
                "created_at": tx.now,
                "updated_at": tx.now,
            },
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
        tx.execute(sql.INSERT_TIERS, tiers)
        tx.execute(sql.INSERT_PHASES, phases)
        if edges:
            tx.execute(sql.INSERT_DEPENDENCIES, edges)
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
    _refresh_planner_statistics(database, definition.phase_count())
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
        with database.transaction() as conn:
            known = conn.execute(sql.REL_TUPLES, {"b_table": "phases"}).scalar_one()
            if new_phases >= 0.1 * max(known, 0):
                # A VACUUM or another ANALYZE holding the table must not stall run creation.
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ANALYZE_LOCK_TIMEOUT}'")
                conn.execute(sql.ANALYZE_WORK_TABLES)
    except (DBAPIError, InvalidRequestError, DatabaseUnavailable) as exc:  # the run is
        reason = str(getattr(exc, "orig", None) or exc).strip()  # committed: analyzed later
        log_event(logger, "analyze_skipped", logging.WARNING, reason=reason)


def check_branch(database: Database, run_id: str, repository: str) -> RunView:
    """The run, once no *other* active run works on its branch of ``repository``: the
    repository a drain moves the branch in when ``--repo``/``--workspace`` name it instead
    of the run's ``repository`` (or when the run names none), which creation never saw.
    Conflict (409) as at creation; else recorded as the run's ``drained_in`` (the last one
    named), which later creations and checks compare too: without a URL's password, which
    the server never clones with and must not keep. Named its own ``repository`` again,
    the run forgets the other: it left no claim there refusing others while it is active.
    A finished run is answered as it is (the CLI does not even ask for one): a 409 telling
    it to take another branch was nonsense, and a claim for it would hold nothing."""

    def work(tx: Tx) -> RunView:
        run = lifecycle.load_run(tx, run_id)
        if run.state not in RUN_ACTIVE:  # its drain moves nothing, its export only
            return _run_view(tx, run_id)  # fast-forwards: no claim ("give it another branch")
        branch = run.branch or default_branch(run_id)
        _ensure_branch_free(tx, repository, branch, other_than=run_id)
        own = run.repository is not None and (
            repository_identity(run.repository) == repository_identity(repository)
        )
        drained_in = None if own else without_password(repository)
        tx.execute(sql.UPDATE_RUN, {"b_run": run_id, "drained_in": drained_in})
        return _run_view(tx, run_id)

    return run_transaction(database, work)


def _ensure_branch_free(
    tx: Tx, repository: str | None, branch: str, *, other_than: str | None = None
) -> None:
    """Refuse a run on the repository's branch another active run is still draining onto.

    Each run's branch moves by a compare-and-swap against *its own* accepted head: with
    two runs on one branch, whichever advanced the git branch first won and every commit
    of the other stayed off it (its phases COMPLETE, its code on no branch). A run's
    repository is its ``repository`` and the one its drains last named (``drained_in``,
    :func:`check_branch`); a run in neither, drained only in its default workspace
    (``autopack-workspaces/RUN_ID``), shares it with no run. A finished run's branch may
    be continued by a new run. Repositories are compared by
    :func:`~autopack.repoident.repository_identity` (``/x.git/`` is ``file:///x.git``),
    the stored values as given: rows written before are read the same.
    """
    if repository is None:
        return
    identity = repository_identity(repository)
    if tx.pg:
        tx.execute(sql.LOCK_BRANCH, {"b_branch_key": f"{identity}\n{branch}"})
    for found in tx.rows(sql.ACTIVE_RUNS_ON_BRANCH, {"b_branch": branch}):
        theirs = [(found["repository"], False), (found["drained_in"], True)]
        spelled, by_drain = next(
            ((r, drain) for r, drain in theirs if r and repository_identity(r) == identity),
            (None, False),
        )
        if found["id"] == other_than or spelled is None:
            continue
        named, spelled = without_password(repository), without_password(spelled)
        said = [f"as {spelled}"] if spelled != named else []
        if by_drain:  # not its `repository`: `run show` says so too
            said.append("where a drain of it ran last")
        same = f" ({', '.join(said)})" if said else ""
        raise Conflict(
            f"branch: run {found['id']!r} ({found['state']}) in {tx.where()} is still "
            f"working on branch {branch!r} of repository {named}{same}: give this run "
            "another `branch` (or wait until that run is finished or cancelled)",
            branch=branch,
            repository=named,
            run_id=found["id"],
        )


def _exists(tx: Tx, run_id: str, state: str) -> Conflict:
    return Conflict(
        f"run {run_id!r} already exists in {tx.where()} (state {state})",
        run_id=run_id,
        state=state,
    )


def _run_view(tx: Tx, run_id: str, dependencies: dict[str, list[str]] | None = None) -> RunView:
    run = lifecycle.load_run(tx, run_id)
    tiers = tx.all(TierRecord, sql.TIERS_OF_RUN, {"b_run": run_id})
    phases = tx.all(PhaseRecord, sql.PHASES_OF_RUN, {"b_run": run_id})
    if dependencies is None:
        dependencies = lifecycle.depends_on(tx, run_id)
    return views.run_view(run, tiers, phases, dependencies, _unpriced_calls(tx, [run_id])[run_id])


def _unpriced_calls(tx: Tx, run_ids: list[str]) -> Counter[str]:
    """Each run's LLM calls whose cost is unknown (its ``cost_usd`` leaves them out: a
    cost of $0.00 said nothing of them)."""
    rows = tx.rows(telemetry_sql.UNPRICED_CALLS_OF_RUNS, {"b_runs": run_ids})
    return Counter({row["run_id"]: row["n"] for row in rows})


def get_run(database: Database, run_id: str) -> RunView:
    """The run with its tiers and phases; NotFound names run and database."""
    return run_transaction(database, lambda tx: _run_view(tx, run_id))


def get_run_brief(database: Database, run_id: str) -> RunBrief:
    """The run without its tiers and phases (its state, budgets and accepted head): what an
    executor asks once per attempt whose checks saw the branch move. The whole run was
    every phase's view, each time: 0.12 s and 1.1 MB at 1,500 phases, so a drain's cost
    grew with the square of its phases."""
    return run_transaction(database, lambda tx: views.run_brief(lifecycle.load_run(tx, run_id)))


def list_runs(
    database: Database, *, state: RunState | None = None, limit: int = 50, offset: int = 0
) -> RunList:
    """Run summaries, newest first, with phase counts per state."""
    params = views.page_params(limit, offset)
    if state is not None:
        params["b_state"] = state

    def work(tx: Tx) -> RunList:
        total = tx.count(sql.RUNS_TOTAL[state is not None], params)
        page = tx.all(RunRecord, sql.RUNS_PAGE[state is not None], params)
        counts: dict[str, Counter[str]] = {run.id: Counter() for run in page}
        if page:
            for row in tx.rows(sql.PHASE_COUNTS_OF_RUNS, {"b_runs": list(counts)}):
                counts[row["run_id"]][row["state"]] = row["n"]
        unpriced = _unpriced_calls(tx, list(counts)) if page else Counter[str]()
        items = [views.run_summary(run, counts[run.id], unpriced[run.id]) for run in page]
        return RunList(items=items, total=total, limit=limit, offset=offset)

    return run_transaction(database, work)


def get_phase(database: Database, run_id: str, phase_id: str) -> PhaseDetail:
    """The phase with every attempt (oldest first) and its approvals."""

    def work(tx: Tx) -> PhaseDetail:
        phase = lifecycle.load_phase(tx, run_id, phase_id)
        params = {"b_run": run_id, "b_phase": phase_id}
        history = tx.all(AttemptRecord, sql.ATTEMPTS_OF_PHASE, params)
        approvals = tx.all(ApprovalRecord, approval_sql.APPROVALS_OF_PHASE, params)
        view = views.phase_view(phase, lifecycle.depends_on(tx, run_id, phase_id)[phase_id])
        return PhaseDetail(
            **view.model_dump(),
            history=[views.attempt_view(a) for a in history],
            approvals=[views.approval_view(a) for a in approvals],
        )

    return run_transaction(database, work)


def cancel_run(database: Database, run_id: str, request: CancelIn) -> RunView:
    """DONE_CANCELLED: waiting phases SKIPPED, executing leases revoked, approvals cancelled."""
    text = f"run cancelled: {request.reason}" if request.reason else "run cancelled"

    def work(tx: Tx) -> RunView:
        lifecycle.end_run(tx, run_id, R.DONE_CANCELLED, text, cancel=True)
        return _run_view(tx, run_id)

    return run_transaction(database, work)


def requeue_phase(database: Database, run_id: str, phase_id: str, request: RequeueIn) -> PhaseView:
    """Put a FAILED, SKIPPED or stuck (EXECUTING, CI_RUNNING, AWAITING_APPROVAL) phase back
    in the queue with a fresh retry window; recorded as a REQUEUED attempt.

    A stuck phase's lease is revoked (its worker's next call is a 409). Phases SKIPPED only
    because this one failed are re-queued with it, and a finished-failed run reopens. A
    COMPLETE phase is requeued only when the request says so (``complete``: the probe
    re-running a phase to measure it again); its finished run reopens too. A phase that
    waits for one still FAILED (an earlier tier's, a dependency) is refused (409): queued,
    it could never be claimed; requeueing the failed one reopens it.
    """

    def work(tx: Tx) -> PhaseView:
        phase = lifecycle.load_phase(tx, run_id, phase_id, lock=True)
        run = lifecycle.load_run(tx, run_id)
        subject = f"phase {run_id}/{phase_id}"
        if phase.state == P.COMPLETE and not request.complete:
            raise IllegalTransition(
                f"{subject} is COMPLETE: requeueing it runs it again, which must be asked "
                f"for: `autopack run requeue {run_id} {phase_id} --complete` (the API's "
                "complete=true)",
                current_state=phase.state,
                requested_state=P.QUEUED,
            )
        if run.state not in RUN_ACTIVE:
            ensure_transition("run", run.state, R.RUNNING, subject=f"run {run_id}")
            problem = lifecycle.budget_problem(tx, run, starting_new_phase=False)
            if run.state == R.DONE_FAILED_BUDGET_EXHAUSTED and problem:
                raise Conflict(
                    f"cannot requeue {subject}: run {run_id} is still over budget ({problem})",
                    run_id=run_id,
                )
        ensure_transition("phase", phase.state, P.QUEUED, subject=subject)
        if phase.state in PHASE_ACTIVE:
            tx.execute(
                sql.UPDATE_ATTEMPT_IF,
                {
                    "b_run": run_id,
                    "b_phase": phase_id,
                    "b_attempt": phase.attempts,
                    "b_outcome": AttemptOutcome.EXECUTING,
                    "outcome": AttemptOutcome.CANCELLED,
                    "stop_reason": "requeued",
                    "finished_at": tx.now,
                },
            )
        tx.execute(
            approval_sql.CANCEL_PENDING_APPROVALS_OF_PHASE,
            {
                "b_run": run_id,
                "b_phase": phase_id,
                "b_now": tx.now,
                "b_responder": request.requested_by,
                "b_note": "phase requeued",
            },
        )
        number = phase.attempts + 1
        tx.execute(
            sql.INSERT_ATTEMPT,
            {
                "run_id": run_id,
                "phase_id": phase_id,
                "attempt": number,
                "worker_id": request.requested_by,
                "started_at": tx.now,
                "finished_at": tx.now,
                "outcome": AttemptOutcome.REQUEUED,
                "stop_reason": "requeued",
                "files_written": [],
                "check_results": [],
                "details": {
                    "previous_state": phase.state,
                    "requested_by": request.requested_by,
                    "reason": request.reason,
                },
                "tokens_used": 0,
                "cost_usd": 0.0,
            },
        )
        lifecycle.update_phase(
            tx,
            phase,
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
        reopened = lifecycle.reopen_unblocked(tx, run_id)
        blockers = lifecycle.unmet_blockers(tx, phase)
        if blockers:  # queued, it could never be claimed and its run would never end
            failed = [name for name, state in blockers if state == P.FAILED]
            raise Conflict(
                f"cannot requeue {subject}: it waits for "
                + ", ".join(f"{name} ({state})" for name, state in blockers)
                + f"; requeue {' and '.join(failed or [blockers[0][0]])} instead "
                f"(that reopens {phase_id})",
                run_id=run_id,
                phase_id=phase_id,
            )
        if run.state not in RUN_ACTIVE:
            locked = lifecycle.load_run(tx, run_id, lock=True)
            if locked.state not in RUN_ACTIVE:  # another requeue may have reopened it
                lifecycle.set_run_state(tx, locked, R.RUNNING, None)
        lifecycle.settle_run(tx, run_id)
        log_event(
            logger,
            "phase_requeued",
            run_id=run_id,
            phase_id=phase_id,
            previous_state=phase.state,
            requested_by=request.requested_by,
            reason=request.reason,
            reopened=",".join(reopened),
        )
        updated = lifecycle.load_phase(tx, run_id, phase_id)
        return views.phase_view(updated, lifecycle.depends_on(tx, run_id, phase_id)[phase_id])

    return run_transaction(database, work)
