"""The claim query: the one statement that decides which phase a worker gets next.

Its own module because it carries every gate of claimability at once (state, backoff,
retry window, run state, earlier tiers, ``depends_on``) and the order of the queue; the
other statements live in :mod:`autopack.db.statements`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, exists, or_, select

from autopack.db.statements import DEPS, PHASES, RUNS, TIERS, one_of
from autopack.states import PHASE_ACTIVE, RUN_ACTIVE, PhaseState, TierState

P = PhaseState


@cache
def claim_statement(*, pg: bool, by_run: bool, by_phase: bool, excluding: bool) -> Select[Any]:
    """The claim query: the next claimable phase with its run's columns (``r__*``) and its
    tier's state, in claim order; and ``leases_expired``: whether any lease anywhere has
    expired, so that the common claim (none has) costs no statement of its own for it.

    Claimable: QUEUED, past its backoff, retry window not spent, run QUEUED/RUNNING, every
    earlier tier COMPLETE, every ``depends_on`` COMPLETE. The tier gate reads the ``tiers``
    rows, whose state is re-derived under the run lock whenever a phase becomes terminal:
    a tier is COMPLETE exactly when all its phases are, so the gate is one small lookup
    instead of a scan of every earlier phase. Ordering by ``phases.id`` after tier and
    phase index is ordering by run creation (ids are handed out in insertion order); with
    a run_id the ``ix_phases_run_queue`` index yields rows already in that order, so the
    scan stops at the first free phase. PostgreSQL locks the row it returns and skips rows
    other claimers hold (``FOR UPDATE OF phases SKIP LOCKED``).

    Built once per shape, on first use (cached): building all sixteen at import cost every
    process that loads the control plane, CLI commands included, a noticeable start.
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
                one_of(held.c.state, PHASE_ACTIVE),
                held.c.lease_expires_at < bindparam("b_now"),
            )
            .label("leases_expired"),
        )
        .join(RUNS, RUNS.c.id == PHASES.c.run_id)
        .where(
            PHASES.c.state == P.QUEUED,
            or_(PHASES.c.available_at.is_(None), PHASES.c.available_at <= bindparam("b_now")),
            PHASES.c.attempts - PHASES.c.retry_window_start < PHASES.c.max_attempts,
            one_of(RUNS.c.state, RUN_ACTIVE),
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
