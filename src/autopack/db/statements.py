"""Every statement that creates, moves, reads or counts work, by name (STYLE.md habit 1).

The control plane (:mod:`autopack.control`) never builds SQL: it runs these with bind
parameters on its transaction's connection (``tx.one(PhaseRecord, PHASE, {...})``).
Building a SQLAlchemy statement costs more CPU than PostgreSQL spends executing it, so
each is built once, here, at import. Bind parameters are prefixed ``b_``; a bare column
name in the parameters is a SET value (``UPDATE_PHASE`` takes ``b_pk`` plus the columns
to set).

Statement shapes that differ by backend (``FOR UPDATE … SKIP LOCKED`` only on
PostgreSQL) come in pairs or in a small dict keyed by the shape. The claim query, which
carries every gate of claimability, has its own module (:mod:`autopack.db.claim`);
telemetry's statements are in :mod:`autopack.db.telemetry`, approvals' in
:mod:`autopack.db.approvals`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    update,
)

from autopack.bounds import INT32_MAX
from autopack.db.models import ApprovalRequest, Phase, PhaseAttempt, PhaseDependency, Run, Tier
from autopack.states import (
    PHASE_ACTIVE,
    PHASE_OPEN,
    RUN_ACTIVE,
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
)

PHASES = cast(Table, Phase.__table__)
RUNS = cast(Table, Run.__table__)
TIERS = cast(Table, Tier.__table__)
ATTEMPTS = cast(Table, PhaseAttempt.__table__)
DEPS = cast(Table, PhaseDependency.__table__)
APPROVALS = cast(Table, ApprovalRequest.__table__)

P = PhaseState
RECLAIM_BATCH = 100
"""Expired leases (or approvals) handled per transaction."""


def one_of(column: ColumnElement[str], values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN (...)`` over a constant set, as ordinary bound parameters.

    ``in_()`` with plain values makes an "expanding" parameter that SQLAlchemy splices
    into the SQL text again on every execution (measured: ~0.1 ms of CPU per statement
    on the claim path); a fixed set of states never needs that.
    """
    return column.in_([literal(value) for value in sorted(values)])


def capped_sum(column: ColumnElement[int]) -> ColumnElement[int]:
    """``column + b_tokens``, stopping at INTEGER's maximum instead of failing on overflow
    (``column + b_tokens`` is only evaluated when it fits)."""
    room = literal(INT32_MAX) - bindparam("b_tokens")
    return case((column > room, literal(INT32_MAX)), else_=column + bindparam("b_tokens"))


ACTIVE = one_of(PHASES.c.state, PHASE_ACTIVE)
"""The phase holds a live lease (EXECUTING or CI_RUNNING)."""
_PHASE_IS = and_(PHASES.c.run_id == bindparam("b_run"), PHASES.c.phase_id == bindparam("b_phase"))
_ATTEMPT_IS = and_(
    ATTEMPTS.c.run_id == bindparam("b_run"),
    ATTEMPTS.c.phase_id == bindparam("b_phase"),
    ATTEMPTS.c.attempt == bindparam("b_attempt"),
)

# -- runs ---------------------------------------------------------------------------------------

RUN = select(RUNS).where(RUNS.c.id == bindparam("b_run"))
RUN_FOR_UPDATE = RUN.with_for_update()
ACTIVE_RUNS_ON_BRANCH = (
    select(RUNS.c.id, RUNS.c.state, RUNS.c.repository, RUNS.c.drained_in)
    .where(
        or_(RUNS.c.repository.is_not(None), RUNS.c.drained_in.is_not(None)),
        RUNS.c.branch == bindparam("b_branch"),
        one_of(RUNS.c.state, RUN_ACTIVE),
    )
    .order_by(RUNS.c.id)
)
"""Runs still draining onto a branch of this name, in any repository: the caller keeps
those whose repository (or the one a drain named, ``drained_in``) is a spelling of its
own (each run's compare-and-swap of its branch knows only its own accepted head: two on
one branch lose one's commits)."""
LOCK_BRANCH = select(func.pg_advisory_xact_lock(func.hashtext(bindparam("b_branch_key"))))
"""PostgreSQL: serialise run creators naming one repository and branch (SQLite's
``BEGIN IMMEDIATE`` already does), so two cannot both pass the check above."""
INSERT_RUN = insert(RUNS)
UPDATE_RUN = update(RUNS).where(RUNS.c.id == bindparam("b_run"))
START_RUN = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"), RUNS.c.state == RunState.QUEUED)
    .values(state=RunState.RUNNING, started_at=bindparam("b_now"), updated_at=bindparam("b_now"))
)
ADD_RUN_USAGE = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"))
    .values(
        tokens_used=capped_sum(RUNS.c.tokens_used),
        cost_usd=RUNS.c.cost_usd + bindparam("b_cost"),
        updated_at=bindparam("b_now"),
    )
    .returning(*RUNS.c)
)
ADVANCE_BRANCH = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"), RUNS.c.branch_head == bindparam("b_base"))
    .values(branch_head=bindparam("b_commit"))
)
"""The branch's compare-and-swap: move the accepted head from ``b_base`` to ``b_commit``."""
START_BRANCH = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"), RUNS.c.branch_head.is_(None))
    .values(branch_head=bindparam("b_commit"))
)
"""The first accepted commit of a run (its branch had no accepted head yet)."""
OVERDUE_CANDIDATES = select(RUNS).where(
    RUNS.c.state == RunState.RUNNING,
    RUNS.c.max_duration_minutes.is_not(None),
    RUNS.c.started_at.is_not(None),
)
"""Running runs with a duration budget (whether it is spent is decided in Python)."""


def runs_page(*, by_state: bool) -> Select[Any]:
    """Runs newest first, one page (``b_limit``, ``b_offset``), optionally of one state."""
    statement = (
        select(RUNS)
        .order_by(RUNS.c.created_at.desc(), RUNS.c.id)
        .limit(bindparam("b_limit"))
        .offset(bindparam("b_offset"))
    )
    return statement.where(RUNS.c.state == bindparam("b_state")) if by_state else statement


def runs_total(*, by_state: bool) -> Select[Any]:
    statement = select(func.count()).select_from(RUNS)
    return statement.where(RUNS.c.state == bindparam("b_state")) if by_state else statement


RUNS_PAGE = {by_state: runs_page(by_state=by_state) for by_state in (False, True)}
RUNS_TOTAL = {by_state: runs_total(by_state=by_state) for by_state in (False, True)}
PHASE_COUNTS_OF_RUNS = (
    select(PHASES.c.run_id, PHASES.c.state, func.count().label("n"))
    .where(PHASES.c.run_id.in_(bindparam("b_runs", expanding=True)))
    .group_by(PHASES.c.run_id, PHASES.c.state)
)

# -- tiers --------------------------------------------------------------------------------------

INSERT_TIERS = insert(TIERS)
TIERS_OF_RUN = select(TIERS).where(TIERS.c.run_id == bindparam("b_run"))
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

# -- phases -------------------------------------------------------------------------------------

PHASE = select(PHASES).where(_PHASE_IS)
PHASE_FOR_UPDATE = PHASE.with_for_update()
PHASE_AND_RUN_STATE = (
    select(PHASES, RUNS.c.state.label("run_state"))
    .join(RUNS, RUNS.c.id == PHASES.c.run_id)
    .where(_PHASE_IS)
)
"""What a result needs in one statement: the phase, and its run's state for the answer."""
PHASE_AND_RUN_STATE_FOR_UPDATE = PHASE_AND_RUN_STATE.with_for_update(of=PHASES)
PHASES_OF_RUN = select(PHASES).where(PHASES.c.run_id == bindparam("b_run"))
INSERT_PHASES = insert(PHASES)
UPDATE_PHASE = update(PHASES).where(PHASES.c.id == bindparam("b_pk"))
"""SET columns come from the parameters' other keys."""
FLIP_PHASE = update(PHASES).where(
    PHASES.c.id == bindparam("b_pk"), PHASES.c.state == bindparam("b_state")
)
"""A state change that applies only if the phase is still in ``b_state``."""
PHASE_STATES = (
    select(PHASES.c.tier_index, PHASES.c.state, func.count().label("n"))
    .where(PHASES.c.run_id == bindparam("b_run"))
    .group_by(PHASES.c.tier_index, PHASES.c.state)
)
PHASE_OUTLINE = select(
    PHASES.c.phase_id,
    PHASES.c.tier_index,
    PHASES.c.phase_index,
    PHASES.c.state,
    PHASES.c.last_failure_reason,
).where(PHASES.c.run_id == bindparam("b_run"))
"""Every phase of a run, just enough to decide what a requeue reopens."""
NOT_COMPLETE = (
    select(PHASES.c.phase_id, PHASES.c.state)
    .where(PHASES.c.run_id == bindparam("b_run"), PHASES.c.state != P.COMPLETE)
    .order_by(PHASES.c.tier_index, PHASES.c.phase_index)
)
OPEN_IN_TIER = (
    select(func.count())
    .select_from(PHASES)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        one_of(PHASES.c.state, PHASE_OPEN),
        PHASES.c.tier_index == bindparam("b_tier"),
    )
)
OPEN_PEER_SHARED = (
    select(PHASES.c.id)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        one_of(PHASES.c.state, PHASE_OPEN),
        PHASES.c.tier_index == bindparam("b_tier"),
        PHASES.c.id != bindparam("b_pk"),
    )
    .limit(1)
    .with_for_update(read=True, key_share=True, skip_locked=True)
)
"""Another open phase of the tier, share-locked so it cannot finish before we commit."""
STARTED_PHASES = (
    select(func.count())
    .select_from(PHASES)
    .where(PHASES.c.run_id == bindparam("b_run"), PHASES.c.started_at.is_not(None))
)
SKIP_BLOCKED = (
    update(PHASES)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        PHASES.c.state == P.QUEUED,
        or_(
            PHASES.c.tier_index > bindparam("b_tier"),
            PHASES.c.phase_id.in_(bindparam("b_dependents", expanding=True)),
        ),
    )
    .values(
        state=P.SKIPPED,
        last_failure_reason=bindparam("b_reason"),
        finished_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
)
"""QUEUED phases that can never run now: every later tier, and the listed dependents."""
REOPEN = (
    update(PHASES)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        PHASES.c.state == P.SKIPPED,
        PHASES.c.phase_id.in_(bindparam("b_phases", expanding=True)),
    )
    .values(
        state=P.QUEUED,
        last_failure_reason=None,
        available_at=bindparam("b_now"),
        finished_at=None,
        updated_at=bindparam("b_now"),
    )
)
SKIP_IN_STATES = (
    update(PHASES)
    .where(
        PHASES.c.run_id == bindparam("b_run"),
        PHASES.c.state.in_(bindparam("b_states", expanding=True)),
    )
    .values(
        state=P.SKIPPED,
        last_failure_reason=bindparam("b_reason"),
        lease_owner=None,
        lease_token=None,
        lease_expires_at=None,
        finished_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
)
"""End of a run: its phases in ``b_states`` become SKIPPED (their leases revoked)."""
ADD_PHASE_USAGE = (
    update(PHASES)
    .where(PHASES.c.id == bindparam("b_pk"))
    .values(
        tokens_used=capped_sum(PHASES.c.tokens_used),
        cost_usd=PHASES.c.cost_usd + bindparam("b_cost"),
        updated_at=bindparam("b_now"),
    )
    .returning(PHASES.c.tokens_used, PHASES.c.cost_usd)
)

# -- leases -------------------------------------------------------------------------------------

RECOVER_PHASE = update(PHASES).where(
    PHASES.c.id == bindparam("b_pk"),
    PHASES.c.lease_token == bindparam("b_token"),
    ACTIVE,
)
"""Take the phase back from an expired lease, only if nobody did so meanwhile."""
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
"""The common heartbeat, in one statement: renew while the caller holds the lease."""
EXPIRED_LEASES = (
    select(PHASES.c.id)
    .where(ACTIVE, PHASES.c.lease_expires_at < bindparam("b_now"))
    .order_by(PHASES.c.lease_expires_at)
    .limit(RECLAIM_BATCH)
)
"""Ids only: the answer is nearly always none."""
EXPIRED_LEASES_SKIP_LOCKED = EXPIRED_LEASES.with_for_update(skip_locked=True)
PHASES_BY_ID = (
    select(PHASES)
    .where(PHASES.c.id.in_(bindparam("b_pks", expanding=True)))
    .order_by(PHASES.c.lease_expires_at)
)

# -- dependencies -------------------------------------------------------------------------------

INSERT_DEPENDENCIES = insert(DEPS)
RUN_DEPENDENCIES = (
    select(DEPS.c.phase_id, DEPS.c.depends_on)
    .where(DEPS.c.run_id == bindparam("b_run"))
    .order_by(DEPS.c.phase_id, DEPS.c.depends_on)
)

# -- attempts -----------------------------------------------------------------------------------

INSERT_ATTEMPT = insert(ATTEMPTS)
UPDATE_ATTEMPT = update(ATTEMPTS).where(_ATTEMPT_IS)
UPDATE_ATTEMPT_IF = update(ATTEMPTS).where(
    _ATTEMPT_IS, ATTEMPTS.c.outcome == bindparam("b_outcome")
)
"""An attempt update that applies only while its outcome is still ``b_outcome``."""
CANCEL_RUNNING_ATTEMPTS = (
    update(ATTEMPTS)
    .where(
        ATTEMPTS.c.run_id == bindparam("b_run"),
        ATTEMPTS.c.outcome == AttemptOutcome.EXECUTING,
    )
    .values(
        outcome=AttemptOutcome.CANCELLED,
        stop_reason="run_cancelled",
        finished_at=bindparam("b_now"),
    )
)
_ORDERED = bindparam("b_ordered", type_=Boolean)
ADD_ATTEMPT_USAGE = (
    update(ATTEMPTS)
    .where(
        _ATTEMPT_IS,
        or_(
            ATTEMPTS.c.usage_key.is_(None),
            and_(_ORDERED, ATTEMPTS.c.usage_key < bindparam("b_key")),
            and_(not_(_ORDERED), ATTEMPTS.c.usage_key != bindparam("b_key")),
        ),
    )
    .values(
        tokens_used=capped_sum(ATTEMPTS.c.tokens_used),
        cost_usd=ATTEMPTS.c.cost_usd + bindparam("b_cost"),
        usage_key=bindparam("b_key"),
    )
)
"""Count a usage report on its attempt unless it was counted already: with an ordered key
(``b_ordered``, :data:`~autopack.contract.ORDERED_USAGE_KEY`) unless it is not newer than
the last one counted, else unless it is that one. No row means a retry of a report
already counted (an attempt reports one call at a time)."""
HISTORY = (
    select(ATTEMPTS)
    .where(
        ATTEMPTS.c.run_id == bindparam("b_run"),
        ATTEMPTS.c.phase_id == bindparam("b_phase"),
        ATTEMPTS.c.attempt < bindparam("b_attempt"),
    )
    .order_by(ATTEMPTS.c.attempt)
)
"""The attempts before ``b_attempt``, oldest first (what a new attempt learns from)."""
STOPPED_IN = "stopped_in"
"""The key of an attempt's ``details`` saying which phase state its hand-back found."""
_LAST_REQUEUE = (
    select(func.coalesce(func.max(ATTEMPTS.c.attempt), 0))
    .where(
        ATTEMPTS.c.run_id == bindparam("b_run"),
        ATTEMPTS.c.phase_id == bindparam("b_phase"),
        ATTEMPTS.c.outcome == AttemptOutcome.REQUEUED,
    )
    .scalar_subquery()
)
ATTEMPTS_SINCE_REQUEUE = select(ATTEMPTS.c.outcome, ATTEMPTS.c.details).where(
    ATTEMPTS.c.run_id == bindparam("b_run"),
    ATTEMPTS.c.phase_id == bindparam("b_phase"),
    ATTEMPTS.c.attempt > _LAST_REQUEUE,
)
"""A phase's attempts since its last requeue (how each ended, its details): the stops it
may have caused are counted from them. A requeue gives a fresh retry window and fresh
free stops with it: counted from the first attempt, a phase requeued after such stops
spent a retry at the next executor lost, and one of ``max_attempts: 1`` FAILED at it.

Counted in Python, not by ``details ->> 'stopped_in'`` in SQL: a worker's details may
hold a NUL (JSON allows it, and so does the column), which PostgreSQL cannot extract as
text from *any* key of that object, so one such attempt made every reclaim (every claim
on the server, the maintenance pass) a 500."""
ATTEMPTS_OF_PHASE = (
    select(ATTEMPTS)
    .where(ATTEMPTS.c.run_id == bindparam("b_run"), ATTEMPTS.c.phase_id == bindparam("b_phase"))
    .order_by(ATTEMPTS.c.attempt)
)
ANSWER_BY_KEY = select(ATTEMPTS.c.run_id, ATTEMPTS.c.phase_id, ATTEMPTS.c.result_response).where(
    ATTEMPTS.c.result_key == bindparam("b_key")
)
ATTEMPT_BY_TOKEN = select(ATTEMPTS).where(
    ATTEMPTS.c.run_id == bindparam("b_run"),
    ATTEMPTS.c.phase_id == bindparam("b_phase"),
    ATTEMPTS.c.lease_token == bindparam("b_token"),
)
ATTEMPT_BY_CLAIM_KEY = (
    select(ATTEMPTS)
    .where(
        ATTEMPTS.c.claim_key == bindparam("b_key"),
        ATTEMPTS.c.worker_id == bindparam("b_worker"),
    )
    .order_by(ATTEMPTS.c.id.desc())
    .limit(1)
)
"""The latest attempt a worker's claim under this key started (a retried claim's)."""
LOCK_CLAIM_KEY = select(
    func.pg_advisory_xact_lock(literal_column("727011338"), func.hashtext(bindparam("b_key")))
)
"""PostgreSQL: serialise the tries of one claim. Under READ COMMITTED a retry arriving
while the first try's transaction is still open did not see its attempt and leased a
second phase; waiting here, it sees the committed attempt (SQLite's ``BEGIN IMMEDIATE``
already serialises). The two-key form keeps these locks apart from :data:`LOCK_BRANCH`'s."""

# -- PostgreSQL planner statistics ------------------------------------------------------------

REL_TUPLES = text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:b_table)")
"""PostgreSQL's row estimate for a table (-1 before its first ANALYZE)."""
ANALYZE_WORK_TABLES = text("ANALYZE phases, tiers, phase_dependencies")
