"""Every statement that moves work: claims, heartbeats, reclaims, usage, results, approvals.

One module so the concurrency rules can be read in one place (STYLE.md habits 1-2):

* **Claims** pick the next claimable phase and flip it in one transaction. PostgreSQL:
  ``SELECT … FOR UPDATE OF phases SKIP LOCKED`` (concurrent claimers never wait on, nor
  double-take, a row); SQLite: the engine's ``BEGIN IMMEDIATE`` plus a per-process lock
  make every write transaction exclusive. The flip is also a conditional ``UPDATE … WHERE
  state = 'QUEUED'`` whose row count is checked.
* **Leases** are fencing tokens: a heartbeat, usage report, approval request or result is
  applied only while the phase still carries the caller's ``lease_token``; otherwise
  :class:`~autopack.errors.LeaseLost` (409) and nothing changes.
* **Reclaims** of expired leases are conditional ``UPDATE … WHERE lease_token = <old>``, so
  two recoveries racing (a claim and the maintenance task, or two API replicas) apply once.
* **Results** are idempotent: the answer is stored with the attempt under its
  Idempotency-Key; the same key (or the same spent lease token) gets the stored answer.
* **Lock order** is phases first, the ``runs`` row last, everywhere. A transaction that
  makes a phase terminal locks the run row before deciding whether the run is finished,
  so two last phases finishing at once cannot both miss the run's end (write skew).
  Deadlocks the order cannot exclude (two cascades) are retried by :func:`run_transaction`.

The statements of the hot path (claim, heartbeat, result) are built once, below, with
bind parameters, and run on the transaction's connection: building a SQLAlchemy
statement costs more CPU than PostgreSQL spends executing it. Public functions take a
:class:`~autopack.db.Database` and run their own transaction; functions taking a
:class:`Tx` compose inside one.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql import Executable

from autopack.db import views
from autopack.db.models import (
    ApprovalRequest,
    Phase,
    PhaseAttempt,
    PhaseDependency,
    Run,
    Tier,
    utcnow,
)
from autopack.db.telemetry import set_phase_outcome
from autopack.errors import Conflict, IllegalTransition, InvalidInput, LeaseLost, NotFound
from autopack.logs import log_event
from autopack.rundef import Policy
from autopack.states import (
    PHASE_ACTIVE,
    PHASE_OPEN,
    RUN_ACTIVE,
    ApprovalStatus,
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
    ensure_transition,
    run_outcome,
    tier_state,
)

if TYPE_CHECKING:
    from autopack.db import Database
    from autopack.db.identity import DbIdentity

logger = logging.getLogger("autopack.work")

PHASES = cast(Table, Phase.__table__)
RUNS = cast(Table, Run.__table__)
TIERS = cast(Table, Tier.__table__)
ATTEMPTS = cast(Table, PhaseAttempt.__table__)
DEPS = cast(Table, PhaseDependency.__table__)
APPROVALS = cast(Table, ApprovalRequest.__table__)

P = PhaseState
R = RunState
T = TypeVar("T")
Row = Mapping[str, Any]
"""A result row by column name (what every function here reads)."""
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]

DEFAULT_LEASE_SECONDS = 60
MIN_LEASE_SECONDS = 5
MAX_LEASE_SECONDS = 3600
MAX_BACKOFF_SECONDS = 60.0
RECLAIM_BATCH = 100
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure
MAX_TRANSACTION_TRIES = 5
BLOCKED_PREFIX = "blocked by "


def _one_of(column: ColumnElement[str], values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN (...)`` over a constant set, as ordinary bound parameters.

    ``in_()`` with plain values makes an "expanding" parameter that SQLAlchemy splices
    into the SQL text again on every execution (measured: ~0.1 ms of CPU per statement
    on the claim path); a fixed set of states never needs that.
    """
    return column.in_([literal(value) for value in sorted(values)])


ACTIVE = _one_of(PHASES.c.state, PHASE_ACTIVE)
"""The phase holds a live lease (EXECUTING or CI_RUNNING)."""


# -- transactions ---------------------------------------------------------------------------


@dataclass
class Tx:
    """One transaction: its connection, its single ``now``, and the database it is in."""

    conn: Connection
    now: datetime
    identity: DbIdentity
    pg: bool

    def execute(self, statement: Executable, params: Params | None = None) -> CursorResult[Any]:
        return self.conn.execute(statement, params)

    def rows(self, statement: Executable, params: Params | None = None) -> Sequence[Row]:
        return cast(Sequence[Row], self.execute(statement, params).mappings().all())

    def row(self, statement: Executable, params: Params | None = None) -> Row | None:
        return cast(Row | None, self.execute(statement, params).mappings().first())

    def where(self) -> str:
        """Which database, for messages: a 404 must say where it looked."""
        return f"database {self.identity.public_url} (instance_id {self.identity.instance_id})"


def run_transaction(database: Database, work: Callable[[Tx], T]) -> T:
    """Run ``work`` in one transaction; retry it on a PostgreSQL deadlock or serialization
    failure (nothing was applied), raise everything else."""
    for attempt in range(1, MAX_TRANSACTION_TRIES + 1):
        try:
            with database.transaction() as connection:
                return work(Tx(connection, utcnow(), database.identity, database.postgresql))
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in RETRYABLE_SQLSTATES or attempt == MAX_TRANSACTION_TRIES:
                raise
            log_event(logger, "transaction_retry", logging.WARNING, sqlstate=code, tries=attempt)
            time.sleep(random.uniform(0, 0.02 * attempt))
    raise AssertionError("unreachable")


# -- named statements of the hot path ----------------------------------------------------------
# Bind parameters are prefixed ``b_`` (a bare column name is reserved for SET values).

_PHASE_IS = and_(PHASES.c.run_id == bindparam("b_run"), PHASES.c.phase_id == bindparam("b_phase"))
_ATTEMPT_IS = and_(
    ATTEMPTS.c.run_id == bindparam("b_run"),
    ATTEMPTS.c.phase_id == bindparam("b_phase"),
    ATTEMPTS.c.attempt == bindparam("b_attempt"),
)

PHASE = select(PHASES).where(_PHASE_IS)
PHASE_FOR_UPDATE = PHASE.with_for_update()
PHASE_AND_RUN_STATE = (
    select(PHASES, RUNS.c.state.label("run_state"))
    .join(RUNS, RUNS.c.id == PHASES.c.run_id)
    .where(_PHASE_IS)
)
"""What a result needs in one statement: the phase, and its run's state for the answer."""
PHASE_AND_RUN_STATE_FOR_UPDATE = PHASE_AND_RUN_STATE.with_for_update(of=PHASES)
RUN = select(RUNS).where(RUNS.c.id == bindparam("b_run"))
RUN_FOR_UPDATE = RUN.with_for_update()
UPDATE_PHASE = update(PHASES).where(PHASES.c.id == bindparam("b_pk"))
"""SET columns come from the parameters' other keys."""
FLIP_PHASE = update(PHASES).where(
    PHASES.c.id == bindparam("b_pk"), PHASES.c.state == bindparam("b_state")
)
RECOVER_PHASE = update(PHASES).where(
    PHASES.c.id == bindparam("b_pk"),
    PHASES.c.lease_token == bindparam("b_token"),
    ACTIVE,
)
RENEW_LEASE = (
    update(PHASES)
    .where(_PHASE_IS, PHASES.c.lease_token == bindparam("b_token"), ACTIVE)
    .values(
        lease_expires_at=bindparam("b_expires"),
        lease_seconds=bindparam("b_seconds"),
        updated_at=bindparam("b_now"),
    )
    .returning(PHASES.c.state)
)
EXPIRED_LEASES = (
    select(PHASES.c.id)
    .where(ACTIVE, PHASES.c.lease_expires_at < bindparam("b_now"))
    .order_by(PHASES.c.lease_expires_at)
    .limit(RECLAIM_BATCH)
)
"""Ids only: every claim asks, and the answer is nearly always none."""
EXPIRED_LEASES_SKIP_LOCKED = EXPIRED_LEASES.with_for_update(skip_locked=True)
PHASES_BY_ID = (
    select(PHASES)
    .where(PHASES.c.id.in_(bindparam("b_pks", expanding=True)))
    .order_by(PHASES.c.lease_expires_at)
)
INSERT_ATTEMPT = insert(ATTEMPTS)
UPDATE_ATTEMPT = update(ATTEMPTS).where(_ATTEMPT_IS)
UPDATE_ATTEMPT_IF = update(ATTEMPTS).where(
    _ATTEMPT_IS, ATTEMPTS.c.outcome == bindparam("b_outcome")
)
HISTORY = (
    select(ATTEMPTS)
    .where(
        ATTEMPTS.c.run_id == bindparam("b_run"),
        ATTEMPTS.c.phase_id == bindparam("b_phase"),
        ATTEMPTS.c.attempt < bindparam("b_attempt"),
    )
    .order_by(ATTEMPTS.c.attempt)
)
ANSWER_BY_KEY = select(ATTEMPTS.c.run_id, ATTEMPTS.c.phase_id, ATTEMPTS.c.result_response).where(
    ATTEMPTS.c.result_key == bindparam("b_key")
)
ATTEMPT_BY_TOKEN = select(
    ATTEMPTS.c.attempt, ATTEMPTS.c.outcome, ATTEMPTS.c.stop_reason, ATTEMPTS.c.result_response
).where(
    ATTEMPTS.c.run_id == bindparam("b_run"),
    ATTEMPTS.c.phase_id == bindparam("b_phase"),
    ATTEMPTS.c.lease_token == bindparam("b_token"),
)
RUN_DEPENDENCIES = (
    select(DEPS.c.phase_id, DEPS.c.depends_on)
    .where(DEPS.c.run_id == bindparam("b_run"))
    .order_by(DEPS.c.phase_id, DEPS.c.depends_on)
)
PHASE_STATES = (
    select(PHASES.c.tier_index, PHASES.c.state, func.count().label("n"))
    .where(PHASES.c.run_id == bindparam("b_run"))
    .group_by(PHASES.c.tier_index, PHASES.c.state)
)
OPEN_IN_TIER = (
    select(func.count())
    .select_from(PHASES)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        _one_of(PHASES.c.state, PHASE_OPEN),
        PHASES.c.tier_index == bindparam("b_tier"),
    )
)
OPEN_PEER_SHARED = (
    select(PHASES.c.id)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        _one_of(PHASES.c.state, PHASE_OPEN),
        PHASES.c.tier_index == bindparam("b_tier"),
        PHASES.c.id != bindparam("b_pk"),
    )
    .limit(1)
    .with_for_update(read=True, key_share=True, skip_locked=True)
)
RUN_TIERS = select(TIERS.c.id, TIERS.c.tier_index, TIERS.c.state).where(
    TIERS.c.run_id == bindparam("b_run")
)
UPDATE_TIER = update(TIERS).where(TIERS.c.id == bindparam("b_pk"))
START_TIER = (
    update(TIERS)
    .where(
        TIERS.c.run_id == bindparam("b_run"),
        TIERS.c.tier_index == bindparam("b_tier"),
        TIERS.c.state == TierState.QUEUED,
    )
    .values(state=TierState.RUNNING)
)
UPDATE_RUN = update(RUNS).where(RUNS.c.id == bindparam("b_run"))
START_RUN = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"), RUNS.c.state == R.QUEUED)
    .values(state=R.RUNNING, started_at=bindparam("b_now"), updated_at=bindparam("b_now"))
)
STARTED_PHASES = (
    select(func.count())
    .select_from(PHASES)
    .where(PHASES.c.run_id == bindparam("b_run"), PHASES.c.started_at.is_not(None))
)


def _claim_statement(*, pg: bool, by_run: bool, by_phase: bool, excluding: bool) -> Any:
    """The claim query: the next claimable phase with its run's columns (``r__*``) and its
    tier's state, in claim order; and ``leases_expired``: whether any lease anywhere has
    expired, so that the common claim (none has) costs no statement of its own for it.

    The tier gate reads the ``tiers`` rows, whose state is re-derived under the run lock
    whenever a phase becomes terminal: a tier is COMPLETE exactly when all its phases
    are, so the gate is one small lookup instead of a scan of every earlier phase.
    Ordering by ``phases.id`` after tier and phase index is ordering by run creation (ids
    are handed out in insertion order); with a run_id the ``ix_phases_run_queue`` index
    yields rows already in that order, so the scan stops at the first free phase.
    """
    earlier_tier = TIERS.alias("earlier_tier")
    own_tier = TIERS.alias("own_tier")
    prerequisite = PHASES.alias("prerequisite")
    held = PHASES.alias("held")
    statement = (
        select(
            PHASES,
            *[column.label(f"r__{column.name}") for column in RUNS.c],
            select(own_tier.c.state)
            .where(
                own_tier.c.run_id == PHASES.c.run_id,
                own_tier.c.tier_index == PHASES.c.tier_index,
            )
            .scalar_subquery()
            .label("tier_state"),
            exists()
            .where(
                _one_of(held.c.state, PHASE_ACTIVE),
                held.c.lease_expires_at < bindparam("b_now"),
            )
            .label("leases_expired"),
        )
        .join(RUNS, RUNS.c.id == PHASES.c.run_id)
        .where(
            PHASES.c.state == P.QUEUED,
            or_(PHASES.c.available_at.is_(None), PHASES.c.available_at <= bindparam("b_now")),
            PHASES.c.attempts - PHASES.c.retry_window_start < PHASES.c.max_attempts,
            _one_of(RUNS.c.state, RUN_ACTIVE),
            ~exists().where(
                earlier_tier.c.run_id == PHASES.c.run_id,
                earlier_tier.c.tier_index < PHASES.c.tier_index,
                earlier_tier.c.state != TierState.COMPLETE,
            ),
            ~exists()
            .select_from(
                DEPS.join(
                    prerequisite,
                    and_(
                        prerequisite.c.run_id == DEPS.c.run_id,
                        prerequisite.c.phase_id == DEPS.c.depends_on,
                    ),
                )
            )
            .where(
                DEPS.c.run_id == PHASES.c.run_id,
                DEPS.c.phase_id == PHASES.c.phase_id,
                prerequisite.c.state != P.COMPLETE,
            ),
        )
        .order_by(PHASES.c.tier_index, PHASES.c.phase_index, PHASES.c.id)
        .limit(1)
    )
    if by_run:
        statement = statement.where(PHASES.c.run_id == bindparam("b_run"))
    if by_phase:
        statement = statement.where(PHASES.c.phase_id == bindparam("b_phase"))
    if excluding:
        statement = statement.where(PHASES.c.run_id.not_in(bindparam("b_excluded", expanding=True)))
    if pg:
        statement = statement.with_for_update(skip_locked=True, of=PHASES)
    return statement


CLAIM = {
    (pg, by_run, by_phase, excluding): _claim_statement(
        pg=pg, by_run=by_run, by_phase=by_phase, excluding=excluding
    )
    for pg in (False, True)
    for by_run in (False, True)
    for by_phase in (False, True)
    for excluding in (False, True)
}
"""The claim query in each of its shapes, keyed (pg, by_run, by_phase, excluding)."""


# -- small shared queries -------------------------------------------------------------------


def run_not_found(tx: Tx, run_id: str) -> NotFound:
    return NotFound(
        f"run {run_id!r} not found in {tx.where()}",
        run_id=run_id,
        database_instance_id=tx.identity.instance_id,
    )


def get_run_row(tx: Tx, run_id: str, *, lock: bool = False) -> Row:
    run = tx.row(RUN_FOR_UPDATE if lock and tx.pg else RUN, {"b_run": run_id})
    if run is None:
        raise run_not_found(tx, run_id)
    return run


def get_phase_row(tx: Tx, run_id: str, phase_id: str, *, lock: bool = False) -> Row:
    """The phase row (``lock``: ``FOR UPDATE`` on PostgreSQL); NotFound names run and db."""
    statement = PHASE_FOR_UPDATE if lock and tx.pg else PHASE
    phase = tx.row(statement, {"b_run": run_id, "b_phase": phase_id})
    if phase is None:
        get_run_row(tx, run_id)  # the run itself missing is the clearer message
        raise NotFound(
            f"phase {phase_id!r} not found in run {run_id!r} ({tx.where()})",
            run_id=run_id,
            phase_id=phase_id,
            database_instance_id=tx.identity.instance_id,
        )
    return phase


_DEPENDENCY_CACHE: OrderedDict[tuple[str, str], dict[str, list[str]]] = OrderedDict()
_DEPENDENCY_CACHE_GUARD = threading.Lock()
_DEPENDENCY_CACHE_SIZE = 512


def depends_on(
    tx: Tx, run_id: str, phase_id: str | None = None, *, committed: bool = False
) -> dict[str, list[str]]:
    """``{phase_id: [dependency, ...]}`` for one phase or for the whole run.

    A run's dependency edges never change after it is created, so they are cached per
    (database instance, run): the claim path does not pay a query for them. An empty
    answer is remembered only when the caller knows the run is ``committed`` (a claim
    found its phase); otherwise it may be a run not created yet.
    """
    key = (tx.identity.instance_id, run_id)
    with _DEPENDENCY_CACHE_GUARD:
        graph = _DEPENDENCY_CACHE.get(key)
        if graph is not None:
            _DEPENDENCY_CACHE.move_to_end(key)
    if graph is None:
        graph = {}
        for row in tx.rows(RUN_DEPENDENCIES, {"b_run": run_id}):
            graph.setdefault(row["phase_id"], []).append(row["depends_on"])
        if graph or committed:
            with _DEPENDENCY_CACHE_GUARD:
                _DEPENDENCY_CACHE[key] = graph
                while len(_DEPENDENCY_CACHE) > _DEPENDENCY_CACHE_SIZE:
                    _DEPENDENCY_CACHE.popitem(last=False)
    if phase_id is not None:
        return {phase_id: list(graph.get(phase_id, []))}
    return {name: list(deps) for name, deps in graph.items()}


def _fingerprint(stop_reason: str | None, error: str | None) -> str:
    """Short hash of stop_reason + first line of error: equal failures group together."""
    first_line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return hashlib.sha256(f"{stop_reason or ''}|{first_line}".encode()).hexdigest()[:12]


def _backoff_seconds(policy: Policy, attempts_in_window: int) -> float:
    exponent = max(attempts_in_window - 1, 0)
    return float(min(policy.retry_backoff_seconds * 2**exponent, MAX_BACKOFF_SECONDS))


def _window_open(phase: Mapping[str, Any]) -> bool:
    attempts: int = phase["attempts"] - phase["retry_window_start"]
    return bool(attempts < phase["max_attempts"])


def _lease_lost(tx: Tx, phase: Mapping[str, Any], lease_token: str) -> LeaseLost:
    """Explain exactly why the token is stale: which attempt it was and how it ended."""
    mine = tx.row(
        ATTEMPT_BY_TOKEN,
        {"b_run": phase["run_id"], "b_phase": phase["phase_id"], "b_token": lease_token},
    )
    where = f"phase {phase['run_id']}/{phase['phase_id']}"
    if mine is None:
        why = "the token was never issued for this phase"
    else:
        why = f"your attempt {mine['attempt']} ended as {mine['outcome']}"
        if mine["stop_reason"]:
            why += f" ({mine['stop_reason']})"
    now_held = (
        f"; it is now {phase['state']}, held by {phase['lease_owner']} "
        f"(attempt {phase['attempts']})"
        if phase["lease_owner"]
        else f"; it is now {phase['state']}"
    )
    return LeaseLost(
        f"lease on {where} is no longer yours: {why}{now_held}",
        run_id=phase["run_id"],
        phase_id=phase["phase_id"],
        phase_state=phase["state"],
        attempt=phase["attempts"],
    )


def _held_phase(tx: Tx, run_id: str, phase_id: str, lease_token: str) -> Row:
    """Lock the phase and check the caller still holds its lease (the fencing check)."""
    phase = get_phase_row(tx, run_id, phase_id, lock=True)
    if phase["lease_token"] != lease_token or phase["state"] not in PHASE_ACTIVE:
        raise _lease_lost(tx, phase, lease_token)
    return phase


def _update_phase(tx: Tx, pk: int, **values: Any) -> None:
    tx.execute(UPDATE_PHASE, {"b_pk": pk, **values})


def _update_attempt(tx: Tx, run_id: str, phase_id: str, attempt: int, **values: Any) -> None:
    tx.execute(
        UPDATE_ATTEMPT, {"b_run": run_id, "b_phase": phase_id, "b_attempt": attempt, **values}
    )


# -- budgets --------------------------------------------------------------------------------


def budget_problem(tx: Tx, run: Mapping[str, Any], *, starting_new_phase: bool) -> str | None:
    """Why ``run`` may not hand out more work, or None. Checked at every claim."""
    if run["token_cap"] is not None and run["tokens_used"] >= run["token_cap"]:
        return (
            f"token budget exhausted: {run['tokens_used']} tokens used, "
            f"token_cap {run['token_cap']}"
        )
    if run["cost_cap_usd"] is not None and run["cost_usd"] >= run["cost_cap_usd"]:
        return (
            f"cost budget exhausted: ${run['cost_usd']:.4f} spent, "
            f"cost_cap_usd ${run['cost_cap_usd']:.4f}"
        )
    minutes = run["max_duration_minutes"]
    if minutes is not None and run["started_at"] is not None:
        elapsed = tx.now - run["started_at"]
        if elapsed >= timedelta(minutes=minutes):
            return (
                f"duration budget exhausted: running {elapsed.total_seconds() / 60:.1f} "
                f"minutes, max_duration_minutes {minutes}"
            )
    if starting_new_phase and run["max_phases"] is not None:
        started = tx.execute(STARTED_PHASES, {"b_run": run["id"]}).scalar_one()
        if started >= run["max_phases"]:
            return (
                f"phase budget exhausted: {started} phases started, max_phases {run['max_phases']}"
            )
    return None


def _budget_answer(run: Mapping[str, Any], problem: str | None) -> dict[str, Any]:
    return {
        "state": run["state"],
        "tokens_used": run["tokens_used"],
        "cost_usd": run["cost_usd"],
        "token_cap": run["token_cap"],
        "cost_cap_usd": run["cost_cap_usd"],
        "budget_exhausted": problem is not None,
        "reason": problem,
    }


# -- run settlement: tiers, cascades, finishing -----------------------------------------------


def _refresh_tiers(tx: Tx, run_id: str, states_by_tier: Mapping[int, list[str]]) -> None:
    for tier in tx.rows(RUN_TIERS, {"b_run": run_id}):
        derived = tier_state(states_by_tier.get(tier["tier_index"], []))
        if derived != tier["state"]:
            tx.execute(UPDATE_TIER, {"b_pk": tier["id"], "state": derived})


def _phase_states(tx: Tx, run_id: str) -> dict[int, list[str]]:
    by_tier: dict[int, list[str]] = defaultdict(list)
    for row in tx.rows(PHASE_STATES, {"b_run": run_id}):
        by_tier[row["tier_index"]].extend([row["state"]] * row["n"])
    return by_tier


def settle_run(tx: Tx, run_id: str, *, finished: Row | None = None) -> str:
    """Lock the run, re-derive tier states, end the run if no phase is open. Its state.

    ``finished``: the one phase that just became terminal (a result, no cascade), read
    with its run's state as ``run_state``. While its tier still has another open phase
    neither the tier nor the run can change state.
    On PostgreSQL that other phase is share-locked (``FOR KEY SHARE SKIP LOCKED``), so it
    cannot finish before this transaction commits, and whoever finishes it will see this
    one done: the run row need not be locked at all, and results of one run do not queue
    behind each other. Only when no such phase exists does the full, locked check run.
    """
    if finished is not None and tx.pg:
        params = {
            "b_run": run_id,
            "b_tier": finished["tier_index"],
            "b_pk": finished["id"],
        }
        if tx.execute(OPEN_PEER_SHARED, params).first() is not None:
            return str(finished["run_state"])
    run = get_run_row(tx, run_id, lock=True)
    if finished is not None and run["state"] == R.RUNNING:
        still_open = tx.execute(
            OPEN_IN_TIER, {"b_run": run_id, "b_tier": finished["tier_index"]}
        ).scalar()
        if still_open:
            return str(run["state"])
    by_tier = _phase_states(tx, run_id)
    _refresh_tiers(tx, run_id, by_tier)
    if run["state"] != R.RUNNING:
        return str(run["state"])
    outcome = run_outcome(state for states in by_tier.values() for state in states)
    if outcome is None:
        return str(run["state"])
    reason = None
    if outcome != R.DONE_SUCCESS:
        failed = tx.rows(
            select(PHASES.c.phase_id, PHASES.c.state)
            .where(PHASES.c.run_id == run_id, PHASES.c.state != P.COMPLETE)
            .order_by(PHASES.c.tier_index, PHASES.c.phase_index)
        )
        names = [f"{row['phase_id']} {row['state']}" for row in failed]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        reason = f"{len(names)} phase(s) did not complete: {shown}"
    set_run_state(tx, run, outcome, reason)
    return str(outcome)


def set_run_state(tx: Tx, run: Mapping[str, Any], target: RunState, reason: str | None) -> None:
    ensure_transition("run", run["state"], target, subject=f"run {run['id']}")
    values: dict[str, Any] = {"state": target, "updated_at": tx.now}
    if target in RUN_ACTIVE:
        values.update(finished_at=None, failure_reason=None)
    else:
        values.update(finished_at=tx.now, failure_reason=reason)
    tx.execute(UPDATE_RUN, {"b_run": run["id"], **values})
    log_event(
        logger, "run_state", run_id=run["id"], previous=run["state"], state=target, reason=reason
    )


def _dependents(graph: Mapping[str, list[str]], roots: Iterable[str]) -> set[str]:
    """Every phase that (transitively) depends on one of ``roots``."""
    reverse: dict[str, list[str]] = defaultdict(list)
    for phase_id, deps in graph.items():
        for dep in deps:
            reverse[dep].append(phase_id)
    found: set[str] = set()
    stack = list(roots)
    while stack:
        for child in reverse.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def skip_blocked(tx: Tx, phase: Mapping[str, Any]) -> int:
    """``phase`` just FAILED: SKIP every QUEUED phase that can now never run.

    That is every phase of a later tier (tiers wait for all earlier phases to COMPLETE) and
    every transitive ``depends_on`` dependent in its own tier. The reason names the blocker
    so a requeue of it can reopen exactly these (:func:`reopen_unblocked`).
    """
    ensure_transition("phase", P.QUEUED, P.SKIPPED)
    run_id = phase["run_id"]
    dependents = _dependents(depends_on(tx, run_id), [phase["phase_id"]])
    blocked = PHASES.c.tier_index > phase["tier_index"]
    if dependents:
        blocked = or_(blocked, PHASES.c.phase_id.in_(sorted(dependents)))
    result = tx.execute(
        update(PHASES)
        .where(PHASES.c.run_id == run_id, PHASES.c.state == P.QUEUED, blocked)
        .values(
            state=P.SKIPPED,
            last_failure_reason=f"{BLOCKED_PREFIX}{phase['phase_id']} (FAILED)",
            finished_at=tx.now,
            updated_at=tx.now,
        )
    )
    if result.rowcount:
        log_event(
            logger,
            "phases_skipped",
            run_id=run_id,
            blocked_by=phase["phase_id"],
            count=result.rowcount,
        )
    return result.rowcount


def reopen_unblocked(tx: Tx, run_id: str) -> list[str]:
    """Re-QUEUE phases SKIPPED as blocked whose blockers are no longer FAILED."""
    phases = tx.rows(
        select(
            PHASES.c.phase_id, PHASES.c.tier_index, PHASES.c.state, PHASES.c.last_failure_reason
        ).where(PHASES.c.run_id == run_id)
    )
    failed = [p for p in phases if p["state"] == P.FAILED]
    dependents_of_failed = _dependents(depends_on(tx, run_id), [p["phase_id"] for p in failed])
    lowest_failed_tier = min((p["tier_index"] for p in failed), default=None)
    reopen = [
        p["phase_id"]
        for p in phases
        if p["state"] == P.SKIPPED
        and (p["last_failure_reason"] or "").startswith(BLOCKED_PREFIX)
        and p["phase_id"] not in dependents_of_failed
        and (lowest_failed_tier is None or p["tier_index"] <= lowest_failed_tier)
    ]
    if reopen:
        ensure_transition("phase", P.SKIPPED, P.QUEUED)
        tx.execute(
            update(PHASES)
            .where(
                PHASES.c.run_id == run_id,
                PHASES.c.state == P.SKIPPED,
                PHASES.c.phase_id.in_(reopen),
            )
            .values(
                state=P.QUEUED,
                last_failure_reason=None,
                available_at=tx.now,
                finished_at=None,
                updated_at=tx.now,
            )
        )
        log_event(logger, "phases_reopened", run_id=run_id, phases=",".join(reopen))
    return reopen


def end_run(tx: Tx, run_id: str, target: RunState, reason: str, *, cancel: bool) -> None:
    """Stop a run: SKIP its waiting phases, cancel its pending approvals, set ``target``.

    ``cancel`` also takes the lease from executing phases, so their next heartbeat or
    result is a 409, and refuses (409) a run that is already finished. Otherwise (budget
    exhausted) running attempts may finish and report, and a run another transaction
    ended meanwhile is left as it is. Phases are updated before the run row is locked
    (lock order).
    """
    run = get_run_row(tx, run_id)
    if run["state"] not in RUN_ACTIVE and not cancel:
        return
    ensure_transition("run", run["state"], target, subject=f"run {run_id}")
    skip_states = [P.QUEUED, P.AWAITING_APPROVAL]
    if cancel:
        skip_states += [P.EXECUTING, P.CI_RUNNING]
    for state in skip_states:
        ensure_transition("phase", state, P.SKIPPED)
    if cancel:
        tx.execute(
            update(ATTEMPTS)
            .where(ATTEMPTS.c.run_id == run_id, ATTEMPTS.c.outcome == AttemptOutcome.EXECUTING)
            .values(
                outcome=AttemptOutcome.CANCELLED, stop_reason="run_cancelled", finished_at=tx.now
            )
        )
    tx.execute(
        update(PHASES)
        .where(PHASES.c.run_id == run_id, PHASES.c.state.in_(skip_states))
        .values(
            state=P.SKIPPED,
            last_failure_reason=reason,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            finished_at=tx.now,
            updated_at=tx.now,
        )
    )
    tx.execute(
        update(APPROVALS)
        .where(APPROVALS.c.run_id == run_id, APPROVALS.c.status == ApprovalStatus.PENDING)
        .values(status=ApprovalStatus.CANCELLED, responded_at=tx.now, note=reason)
    )
    run = get_run_row(tx, run_id, lock=True)
    if run["state"] not in RUN_ACTIVE and not cancel:
        return  # ended meanwhile by another transaction; the budget stop is moot
    set_run_state(tx, run, target, reason)
    _refresh_tiers(tx, run_id, _phase_states(tx, run_id))


# -- claims -----------------------------------------------------------------------------------


def claim(
    database: Database,
    *,
    worker_id: str,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    run_id: str | None = None,
    phase_id: str | None = None,
) -> dict[str, Any] | None:
    """Lease the next claimable phase to ``worker_id``; None when there is none (HTTP 204).

    Claimable: QUEUED, past its backoff, retry window not exhausted, run QUEUED/RUNNING and
    within budget, every phase of an earlier tier COMPLETE, every ``depends_on`` COMPLETE.
    Order: tier_index, phase_index, run created_at. Expired leases are reclaimed first
    (the claim query says whether there are any).
    """
    if phase_id is not None and run_id is None:
        raise InvalidInput("claiming a specific phase_id needs its run_id too")
    if not MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS:
        raise InvalidInput(
            f"lease_seconds must be between {MIN_LEASE_SECONDS} and {MAX_LEASE_SECONDS} "
            f"(got {lease_seconds})"
        )
    return run_transaction(
        database, lambda tx: _claim(tx, worker_id, lease_seconds, run_id, phase_id)
    )


def _claim(
    tx: Tx, worker_id: str, lease_seconds: int, run_id: str | None, phase_id: str | None
) -> dict[str, Any] | None:
    excluded: set[str] = set()
    reclaim_checked = False
    while True:
        found = _next_claimable(tx, run_id, phase_id, excluded)
        if not reclaim_checked and (found is None or found["leases_expired"]):
            # Expired leases go back into the queue first and the pick is made again, so
            # a reclaimed phase is claimed in its order (and never missed by a 204).
            reclaim_checked = True
            if reclaim_expired(tx):
                continue
        if found is None:
            if not excluded and run_id is not None:  # say so when the ids are wrong
                if phase_id is not None:
                    get_phase_row(tx, run_id, phase_id)
                else:
                    get_run_row(tx, run_id)
            return None
        phase = {
            k: v
            for k, v in found.items()
            if not k.startswith("r__") and k not in ("tier_state", "leases_expired")
        }
        run = {k[3:]: v for k, v in found.items() if k.startswith("r__")}
        problem = budget_problem(tx, run, starting_new_phase=phase["started_at"] is None)
        if problem is None:
            started = _start_attempt(tx, phase, run, found["tier_state"], worker_id, lease_seconds)
            if started is not None:
                return started
        else:
            end_run(tx, run["id"], R.DONE_FAILED_BUDGET_EXHAUSTED, problem, cancel=False)
        excluded.add(phase["run_id"])


def _next_claimable(
    tx: Tx, run_id: str | None, phase_id: str | None, excluded_runs: set[str]
) -> Row | None:
    """Pick (on PostgreSQL: lock, skipping rows other claimers hold) the next phase."""
    shape = (tx.pg, run_id is not None, phase_id is not None, bool(excluded_runs))
    params: dict[str, Any] = {"b_now": tx.now}
    if run_id is not None:
        params["b_run"] = run_id
    if phase_id is not None:
        params["b_phase"] = phase_id
    if excluded_runs:
        params["b_excluded"] = sorted(excluded_runs)
    return tx.row(CLAIM[shape], params)


def _start_attempt(
    tx: Tx,
    phase: Row,
    run: Row,
    current_tier_state: str | None,
    worker_id: str,
    lease_seconds: int,
) -> dict[str, Any] | None:
    ensure_transition("phase", phase["state"], P.EXECUTING)
    number = phase["attempts"] + 1
    token = uuid.uuid4().hex
    expires = tx.now + timedelta(seconds=lease_seconds)
    changes: dict[str, Any] = {
        "state": P.EXECUTING,
        "attempts": number,
        "lease_owner": worker_id,
        "lease_token": token,
        "lease_expires_at": expires,
        "lease_seconds": lease_seconds,
        "started_at": phase["started_at"] or tx.now,
        "finished_at": None,
        "updated_at": tx.now,
    }
    flipped = tx.execute(FLIP_PHASE, {"b_pk": phase["id"], "b_state": P.QUEUED, **changes})
    if flipped.rowcount != 1:  # taken meanwhile (cannot happen under the row lock; be sure)
        return None
    tx.execute(
        INSERT_ATTEMPT,
        {
            "run_id": phase["run_id"],
            "phase_id": phase["phase_id"],
            "attempt": number,
            "worker_id": worker_id,
            "lease_token": token,
            "started_at": tx.now,
            "outcome": AttemptOutcome.EXECUTING,
            "files_written": [],
            "check_results": [],
            "details": {},
            "tokens_used": 0,
            "cost_usd": 0.0,
        },
    )
    run_state = run["state"]
    if run_state == R.QUEUED:
        ensure_transition("run", run_state, R.RUNNING, subject=f"run {run['id']}")
        tx.execute(START_RUN, {"b_run": run["id"], "b_now": tx.now})
        run_state = R.RUNNING
        log_event(logger, "run_state", run_id=run["id"], previous=R.QUEUED, state=R.RUNNING)
    if current_tier_state == TierState.QUEUED:
        tx.execute(START_TIER, {"b_run": phase["run_id"], "b_tier": phase["tier_index"]})
    history: list[dict[str, Any]] = []
    approved: dict[str, Any] | None = None
    if number > 1:
        earlier = tx.rows(
            HISTORY, {"b_run": phase["run_id"], "b_phase": phase["phase_id"], "b_attempt": number}
        )
        history = [views.attempt_view(row) for row in earlier]
        approved = _approved_change(tx, phase, number - 1)
    updated = {**phase, **changes}
    return {
        "run_id": phase["run_id"],
        "phase_id": phase["phase_id"],
        "attempt": number,
        "lease_token": token,
        "lease_expires_at": expires,
        "lease_seconds": lease_seconds,
        "phase": views.phase_view(
            updated,
            depends_on(tx, phase["run_id"], phase["phase_id"], committed=True)[phase["phase_id"]],
        ),
        "history": history,
        "run": {**views.run_brief(run), "state": run_state},
        "approved_change": approved,
    }


def _approved_change(tx: Tx, phase: Mapping[str, Any], previous: int) -> dict[str, Any] | None:
    """The approval granted to the attempt just before this claim: given to it, once."""
    approval = tx.row(
        select(APPROVALS)
        .where(
            APPROVALS.c.run_id == phase["run_id"],
            APPROVALS.c.phase_id == phase["phase_id"],
            APPROVALS.c.attempt == previous,
            APPROVALS.c.status == ApprovalStatus.APPROVED,
        )
        .order_by(APPROVALS.c.id.desc())
    )
    if approval is None:
        return None
    return {
        "approval_id": approval["id"],
        "reason": approval["reason"],
        "context": dict(approval["context"] or {}),
        "responder": approval["responder"],
        "note": approval["note"],
    }


# -- reclaiming expired leases --------------------------------------------------------------------


def reclaim_expired(tx: Tx) -> int:
    """Expired leases: record the attempt LOST (``lease_expired``), re-QUEUE or FAIL the phase.

    Each recovery is a conditional UPDATE on the old lease token, so a recovery that lost a
    race (another replica, the maintenance task) changes nothing.
    """
    statement = EXPIRED_LEASES_SKIP_LOCKED if tx.pg else EXPIRED_LEASES
    pks = list(tx.execute(statement, {"b_now": tx.now}).scalars())
    expired = tx.rows(PHASES_BY_ID, {"b_pks": pks}) if pks else []
    reclaimed = 0
    for phase in expired:
        run = get_run_row(tx, phase["run_id"])
        retry = _window_open(phase) and run["state"] in RUN_ACTIVE
        target = P.QUEUED if retry else P.FAILED
        ensure_transition("phase", phase["state"], target)
        reason = (
            f"lease_expired: worker {phase['lease_owner']} stopped heartbeating "
            f"(attempt {phase['attempts']}, lease expired {phase['lease_expires_at']:%H:%M:%S})"
        )
        values: dict[str, Any] = {
            "state": target,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "available_at": tx.now,
            "last_failure_reason": reason,
            "updated_at": tx.now,
        }
        if target == P.FAILED:
            values.update(finished_at=tx.now, failure_fingerprint=_fingerprint("lease_expired", ""))
        recovered = tx.execute(
            RECOVER_PHASE, {"b_pk": phase["id"], "b_token": phase["lease_token"], **values}
        )
        if recovered.rowcount != 1:
            continue
        tx.execute(
            UPDATE_ATTEMPT_IF,
            {
                "b_run": phase["run_id"],
                "b_phase": phase["phase_id"],
                "b_attempt": phase["attempts"],
                "b_outcome": AttemptOutcome.EXECUTING,
                "outcome": AttemptOutcome.LOST,
                "stop_reason": "lease_expired",
                "finished_at": tx.now,
                "error": reason,
            },
        )
        reclaimed += 1
        log_event(
            logger,
            "lease_reclaimed",
            logging.WARNING,
            run_id=phase["run_id"],
            phase_id=phase["phase_id"],
            attempt=phase["attempts"],
            worker_id=phase["lease_owner"],
            phase_state=target,
        )
        if target == P.FAILED:
            set_phase_outcome(tx.conn, phase["run_id"], phase["phase_id"], target)
            skip_blocked(tx, phase)
            settle_run(tx, phase["run_id"])
    return reclaimed


# -- heartbeats and usage -------------------------------------------------------------------


def heartbeat(
    database: Database,
    run_id: str,
    phase_id: str,
    *,
    lease_token: str,
    lease_seconds: int | None = None,
    state: str | None = None,
) -> dict[str, Any]:
    """Renew the lease (for ``lease_seconds``, default: the length it was claimed with).

    An expired lease nobody reclaimed yet is renewed: nobody else holds the phase.
    ``state`` moves EXECUTING <-> CI_RUNNING.

    The common case (same state, explicit length) is one conditional UPDATE, run as its
    own transaction; anything else, or a renewal that matched no row (to say why), runs
    the full locked check.
    """
    if state is None and lease_seconds is not None:
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        with database.single_statement() as connection:
            renewed = connection.execute(
                RENEW_LEASE,
                {
                    "b_run": run_id,
                    "b_phase": phase_id,
                    "b_token": lease_token,
                    "b_expires": expires,
                    "b_seconds": lease_seconds,
                    "b_now": now,
                },
            ).first()
        if renewed is not None:
            return {"lease_expires_at": expires, "state": renewed.state}
    return run_transaction(
        database,
        lambda tx: _heartbeat(
            tx, run_id, phase_id, lease_token, lease_seconds=lease_seconds, state=state
        ),
    )


def _heartbeat(
    tx: Tx,
    run_id: str,
    phase_id: str,
    lease_token: str,
    *,
    lease_seconds: int | None,
    state: str | None,
) -> dict[str, Any]:
    phase = _held_phase(tx, run_id, phase_id, lease_token)
    seconds = lease_seconds or phase["lease_seconds"] or DEFAULT_LEASE_SECONDS
    target = state or phase["state"]
    if target != phase["state"]:
        ensure_transition("phase", phase["state"], target, subject=f"phase {run_id}/{phase_id}")
    expires = tx.now + timedelta(seconds=seconds)
    _update_phase(
        tx,
        phase["id"],
        state=target,
        lease_expires_at=expires,
        lease_seconds=seconds,
        updated_at=tx.now,
    )
    return {"lease_expires_at": expires, "state": target}


def report_usage(
    database: Database,
    run_id: str,
    phase_id: str,
    *,
    lease_token: str,
    tokens: int,
    cost_usd: float,
) -> dict[str, Any]:
    """Add one LLM call's tokens and cost to the attempt, phase and run; answer the budget."""
    if tokens < 0 or cost_usd < 0:
        raise InvalidInput(f"usage must not be negative (tokens {tokens}, cost_usd {cost_usd})")

    def work(tx: Tx) -> dict[str, Any]:
        phase = _held_phase(tx, run_id, phase_id, lease_token)
        tx.execute(
            update(ATTEMPTS)
            .where(
                ATTEMPTS.c.run_id == run_id,
                ATTEMPTS.c.phase_id == phase_id,
                ATTEMPTS.c.attempt == phase["attempts"],
            )
            .values(
                tokens_used=ATTEMPTS.c.tokens_used + tokens,
                cost_usd=ATTEMPTS.c.cost_usd + cost_usd,
            )
        )
        phase_totals = tx.row(
            update(PHASES)
            .where(PHASES.c.id == phase["id"])
            .values(
                tokens_used=PHASES.c.tokens_used + tokens,
                cost_usd=PHASES.c.cost_usd + cost_usd,
                updated_at=tx.now,
            )
            .returning(PHASES.c.tokens_used, PHASES.c.cost_usd)
        )
        run = tx.row(
            update(RUNS)
            .where(RUNS.c.id == run_id)
            .values(
                tokens_used=RUNS.c.tokens_used + tokens,
                cost_usd=RUNS.c.cost_usd + cost_usd,
                updated_at=tx.now,
            )
            .returning(*RUNS.c)
        )
        assert run is not None and phase_totals is not None
        problem = budget_problem(tx, run, starting_new_phase=False)
        return {"run": _budget_answer(run, problem), "phase": dict(phase_totals)}

    return run_transaction(database, work)


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultIn:
    """A worker's report of how its attempt ended (the result body)."""

    lease_token: str
    outcome: str
    stop_reason: str
    retryable: bool = True
    feedback: str | None = None
    error: str | None = None
    max_tokens: int | None = None
    files_written: Sequence[str] = ()
    check_results: Sequence[Mapping[str, Any]] = ()
    audit_verdict: Mapping[str, Any] | None = None
    details: Mapping[str, Any] | None = None


def post_result(
    database: Database,
    run_id: str,
    phase_id: str,
    result: ResultIn,
    *,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Apply an attempt's result once; the same key or spent token gets the stored answer."""
    if result.outcome not in (P.COMPLETE, P.FAILED):
        raise InvalidInput(f"outcome must be COMPLETE or FAILED (got {result.outcome!r})")
    try:
        return run_transaction(
            database, lambda tx: _post_result(tx, run_id, phase_id, result, idempotency_key)
        )
    except IntegrityError as exc:  # the key is already stored with another attempt
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used for another attempt",
            idempotency_key=idempotency_key,
        ) from exc


def _replay(tx: Tx, run_id: str, phase_id: str, result: ResultIn, key: str | None) -> Row | None:
    """The stored answer for this key (or, without one, for this spent lease token)."""
    if key is not None:
        stored = tx.row(ANSWER_BY_KEY, {"b_key": key})
        if stored is not None:
            if (stored["run_id"], stored["phase_id"]) != (run_id, phase_id):
                raise Conflict(
                    f"Idempotency-Key {key!r} was already used for phase "
                    f"{stored['run_id']}/{stored['phase_id']}",
                    idempotency_key=key,
                )
            return cast(Row, stored["result_response"])
    spent = tx.row(
        ATTEMPT_BY_TOKEN, {"b_run": run_id, "b_phase": phase_id, "b_token": result.lease_token}
    )
    if spent is not None and spent["result_response"] is not None:
        return cast(Row, spent["result_response"])
    return None


def _post_result(
    tx: Tx, run_id: str, phase_id: str, result: ResultIn, key: str | None
) -> dict[str, Any]:
    phase = tx.row(
        PHASE_AND_RUN_STATE_FOR_UPDATE if tx.pg else PHASE_AND_RUN_STATE,
        {"b_run": run_id, "b_phase": phase_id},
    )
    if phase is None:
        phase = get_phase_row(tx, run_id, phase_id)  # raises NotFound naming run and db
    if phase["lease_token"] != result.lease_token or phase["state"] not in PHASE_ACTIVE:
        # Not (or no longer) the holder: a retry of an applied result, or a zombie.
        stored = _replay(tx, run_id, phase_id, result, key)
        if stored is not None:
            return dict(stored)
        raise _lease_lost(tx, phase, result.lease_token)

    number = phase["attempts"]
    run: Row | None = None
    target = P.COMPLETE
    if result.outcome == P.FAILED:
        run = get_run_row(tx, run_id)
        retry = result.retryable and _window_open(phase) and run["state"] in RUN_ACTIVE
        target = P.QUEUED if retry else P.FAILED
    ensure_transition("phase", phase["state"], target, subject=f"phase {run_id}/{phase_id}")

    values: dict[str, Any] = {
        "state": target,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": tx.now,
    }
    available_at = None
    if target == P.COMPLETE:
        values.update(finished_at=tx.now)
    else:
        first_line = (result.error or result.feedback or "").strip().splitlines()
        reason = result.stop_reason + (f": {first_line[0][:300]}" if first_line else "")
        values.update(
            last_failure_reason=reason,
            failure_fingerprint=_fingerprint(result.stop_reason, result.error),
        )
        if target == P.QUEUED:
            assert run is not None
            policy = Policy.model_validate(run["policy"] or {})
            delay = _backoff_seconds(policy, number - phase["retry_window_start"])
            available_at = tx.now + timedelta(seconds=delay)
            values.update(available_at=available_at)
        else:
            values.update(finished_at=tx.now)
    _update_phase(tx, phase["id"], **values)
    if target != P.QUEUED:
        set_phase_outcome(tx.conn, run_id, phase_id, target)

    if target == P.FAILED:
        skip_blocked(tx, phase)
        run_state = settle_run(tx, run_id)
    elif target == P.COMPLETE:
        run_state = settle_run(tx, run_id, finished=phase)
    else:
        assert run is not None
        run_state = str(run["state"])

    answer = {
        "run_id": run_id,
        "phase_id": phase_id,
        "attempt": number,
        "phase_state": str(target),
        "run_state": run_state,
        "requeued": target == P.QUEUED,
        "available_at": available_at.isoformat() if available_at else None,
    }
    _update_attempt(
        tx,
        run_id,
        phase_id,
        number,
        outcome=result.outcome,
        finished_at=tx.now,
        stop_reason=result.stop_reason,
        max_tokens=result.max_tokens,
        files_written=list(result.files_written),
        check_results=[dict(c) for c in result.check_results],
        audit_verdict=dict(result.audit_verdict) if result.audit_verdict else None,
        feedback=result.feedback,
        error=result.error,
        details=dict(result.details or {}),
        result_key=key or f"{run_id}:{phase_id}:{number}",
        result_response=answer,
    )
    log_event(
        logger,
        "result",
        logging.DEBUG if target == P.COMPLETE else logging.INFO,
        run_id=run_id,
        phase_id=phase_id,
        attempt=number,
        outcome=result.outcome,
        stop_reason=result.stop_reason,
        phase_state=target,
    )
    return answer


# -- approvals ----------------------------------------------------------------------------------


def request_approval(
    database: Database,
    run_id: str,
    phase_id: str,
    *,
    lease_token: str,
    reason: str,
    context: Mapping[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Park the phase in AWAITING_APPROVAL and release the lease: no worker waits for a human."""

    def work(tx: Tx) -> dict[str, Any]:
        phase = get_phase_row(tx, run_id, phase_id, lock=True)
        if phase["lease_token"] != lease_token or phase["state"] not in PHASE_ACTIVE:
            asked = tx.row(  # a retried request: answer with the approval it created
                select(APPROVALS)
                .join(
                    ATTEMPTS,
                    and_(
                        ATTEMPTS.c.run_id == APPROVALS.c.run_id,
                        ATTEMPTS.c.phase_id == APPROVALS.c.phase_id,
                        ATTEMPTS.c.attempt == APPROVALS.c.attempt,
                    ),
                )
                .where(
                    APPROVALS.c.run_id == run_id,
                    APPROVALS.c.phase_id == phase_id,
                    ATTEMPTS.c.lease_token == lease_token,
                )
            )
            if asked is not None:
                return _approval_created(asked, phase["state"])
            raise _lease_lost(tx, phase, lease_token)
        ensure_transition(
            "phase", phase["state"], P.AWAITING_APPROVAL, subject=f"phase {run_id}/{phase_id}"
        )
        run = get_run_row(tx, run_id)
        policy = Policy.model_validate(run["policy"] or {})
        seconds = timeout_seconds or policy.approval_timeout_minutes * 60
        approval_id = tx.execute(
            insert(APPROVALS)
            .values(
                run_id=run_id,
                phase_id=phase_id,
                attempt=phase["attempts"],
                reason=reason,
                context=dict(context or {}),
                status=ApprovalStatus.PENDING,
                on_timeout=policy.on_approval_timeout,
                requested_at=tx.now,
                timeout_at=tx.now + timedelta(seconds=seconds),
            )
            .returning(APPROVALS.c.id)
        ).scalar_one()
        tx.execute(
            update(ATTEMPTS)
            .where(
                ATTEMPTS.c.run_id == run_id,
                ATTEMPTS.c.phase_id == phase_id,
                ATTEMPTS.c.attempt == phase["attempts"],
            )
            .values(
                outcome=AttemptOutcome.AWAITING_APPROVAL,
                stop_reason="approval_requested",
                finished_at=tx.now,
                details={"approval_id": approval_id},
            )
        )
        tx.execute(
            update(PHASES)
            .where(PHASES.c.id == phase["id"])
            .values(
                state=P.AWAITING_APPROVAL,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=tx.now,
            )
        )
        log_event(
            logger,
            "approval_requested",
            run_id=run_id,
            phase_id=phase_id,
            approval_id=approval_id,
            reason=reason,
        )
        created = tx.row(select(APPROVALS).where(APPROVALS.c.id == approval_id))
        assert created is not None
        return _approval_created(created, P.AWAITING_APPROVAL)

    return run_transaction(database, work)


def _approval_created(approval: Mapping[str, Any], phase_state: str) -> dict[str, Any]:
    return {
        "approval_id": approval["id"],
        "timeout_at": approval["timeout_at"],
        "phase_state": str(phase_state),
        "approval": views.approval_view(approval),
    }


def list_approvals(
    database: Database,
    *,
    status: str | None = "pending",
    run_id: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Approvals, oldest first; ``status=None`` lists every status."""

    def work(tx: Tx) -> list[dict[str, Any]]:
        statement = select(APPROVALS).order_by(APPROVALS.c.id).limit(limit)
        if status is not None:
            statement = statement.where(APPROVALS.c.status == status)
        if run_id is not None:
            statement = statement.where(APPROVALS.c.run_id == run_id)
        return [views.approval_view(row) for row in tx.rows(statement)]

    return run_transaction(database, work)


def decide_approval(
    database: Database,
    approval_id: int,
    *,
    approve: bool,
    responder: str,
    note: str | None = None,
) -> dict[str, Any]:
    """Approve (phase back to QUEUED; its next claim gets ``approved_change``) or reject
    (phase FAILED, ``approval_rejected``). Deciding a non-pending approval is a 409."""
    decision = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED

    def work(tx: Tx) -> dict[str, Any]:
        statement = select(APPROVALS).where(APPROVALS.c.id == approval_id)
        if tx.pg:
            statement = statement.with_for_update()
        approval = tx.row(statement)
        if approval is None:
            raise NotFound(
                f"approval {approval_id} not found in {tx.where()}",
                approval_id=approval_id,
                database_instance_id=tx.identity.instance_id,
            )
        ensure_transition(
            "approval", approval["status"], decision, subject=f"approval {approval_id}"
        )
        phase_state = _settle_approval(
            tx,
            approval,
            decision,
            responder=responder,
            note=note,
            stop_reason="approval_approved" if approve else "approval_rejected",
        )
        decided = tx.row(select(APPROVALS).where(APPROVALS.c.id == approval_id))
        assert decided is not None
        return {**views.approval_view(decided), "phase_state": phase_state}

    return run_transaction(database, work)


def _settle_approval(
    tx: Tx,
    approval: Mapping[str, Any],
    decision: ApprovalStatus,
    *,
    responder: str | None,
    note: str | None,
    stop_reason: str,
) -> str:
    """Record the decision and move the waiting phase: QUEUED to go on, FAILED to stop."""
    run_id, phase_id = approval["run_id"], approval["phase_id"]
    phase = get_phase_row(tx, run_id, phase_id, lock=True)
    if phase["state"] != P.AWAITING_APPROVAL or phase["attempts"] != approval["attempt"]:
        raise IllegalTransition(
            f"approval {approval['id']} no longer applies: phase {run_id}/{phase_id} is "
            f"{phase['state']} (attempt {phase['attempts']}), the approval was asked by "
            f"attempt {approval['attempt']}",
            phase_state=phase["state"],
        )
    go_on = decision == ApprovalStatus.APPROVED or (
        decision == ApprovalStatus.EXPIRED and approval["on_timeout"] == "requeue"
    )
    target = P.QUEUED if go_on else P.FAILED
    ensure_transition("phase", phase["state"], target, subject=f"phase {run_id}/{phase_id}")
    tx.execute(
        update(APPROVALS)
        .where(APPROVALS.c.id == approval["id"], APPROVALS.c.status == ApprovalStatus.PENDING)
        .values(status=decision, responded_at=tx.now, responder=responder, note=note)
    )
    attempt_values: dict[str, Any] = {"stop_reason": stop_reason}
    if target == P.FAILED:
        attempt_values["outcome"] = AttemptOutcome.FAILED
    tx.execute(
        update(ATTEMPTS)
        .where(
            ATTEMPTS.c.run_id == run_id,
            ATTEMPTS.c.phase_id == phase_id,
            ATTEMPTS.c.attempt == approval["attempt"],
        )
        .values(**attempt_values)
    )
    values: dict[str, Any] = {"state": target, "updated_at": tx.now}
    if target == P.QUEUED:
        # The continuation a human allowed must be able to run even if the attempt that
        # asked was the last one of its retry window.
        window_start = max(
            phase["retry_window_start"], phase["attempts"] - phase["max_attempts"] + 1
        )
        values.update(available_at=tx.now, retry_window_start=window_start)
    else:
        detail = note or approval["reason"]
        values.update(
            finished_at=tx.now,
            last_failure_reason=f"{stop_reason}: {detail}" if detail else stop_reason,
            failure_fingerprint=_fingerprint(stop_reason, None),
        )
    tx.execute(update(PHASES).where(PHASES.c.id == phase["id"]).values(**values))
    log_event(
        logger,
        "approval_settled",
        run_id=run_id,
        phase_id=phase_id,
        approval_id=approval["id"],
        status=decision,
        phase_state=target,
    )
    if target == P.FAILED:
        set_phase_outcome(tx.conn, run_id, phase_id, target)
        skip_blocked(tx, phase)
        settle_run(tx, run_id)
    return str(target)


def expire_approvals(tx: Tx, limit: int = RECLAIM_BATCH) -> int:
    """Pending approvals past ``timeout_at``: expired; the phase FAILS or re-QUEUES per policy."""
    statement = (
        select(APPROVALS)
        .where(APPROVALS.c.status == ApprovalStatus.PENDING, APPROVALS.c.timeout_at <= tx.now)
        .order_by(APPROVALS.c.timeout_at)
        .limit(limit)
    )
    if tx.pg:
        statement = statement.with_for_update(skip_locked=True)
    expired = 0
    for approval in tx.rows(statement):
        try:  # _settle_approval checks before it writes anything
            _settle_approval(
                tx,
                approval,
                ApprovalStatus.EXPIRED,
                responder=None,
                note=f"no decision by {approval['timeout_at']:%Y-%m-%d %H:%M:%S} UTC",
                stop_reason="approval_expired",
            )
        except IllegalTransition as exc:  # the phase moved on: the approval just lapses
            tx.execute(
                update(APPROVALS)
                .where(APPROVALS.c.id == approval["id"])
                .values(status=ApprovalStatus.EXPIRED, responded_at=tx.now, note=exc.message)
            )
        expired += 1
    return expired


# -- maintenance -------------------------------------------------------------------------------


def end_overdue_runs(tx: Tx) -> int:
    """RUNNING runs past ``max_duration_minutes``: DONE_FAILED_BUDGET_EXHAUSTED."""
    candidates = tx.rows(
        select(RUNS).where(
            RUNS.c.state == R.RUNNING,
            RUNS.c.max_duration_minutes.is_not(None),
            RUNS.c.started_at.is_not(None),
        )
    )
    ended = 0
    for run in candidates:
        problem = budget_problem(tx, run, starting_new_phase=False)
        if problem and problem.startswith("duration"):
            end_run(tx, run["id"], R.DONE_FAILED_BUDGET_EXHAUSTED, problem, cancel=False)
            ended += 1
    return ended


def maintain(database: Database) -> dict[str, int]:
    """One pass of the background task; each duty in its own transaction."""
    return {
        "reclaimed": run_transaction(database, reclaim_expired),
        "approvals_expired": run_transaction(database, expire_approvals),
        "runs_over_duration": run_transaction(database, end_overdue_runs),
    }
