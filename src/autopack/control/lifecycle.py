"""A run's life beyond single phases: lookups, budgets, tier states, cascades, the run's end.

* **Lock order** is phases first, the ``runs`` row last, everywhere. A transaction that
  makes a phase terminal locks the run row before deciding whether the run is finished,
  so two last phases finishing at once cannot both miss the run's end (write skew).
  Deadlocks the order cannot exclude (two cascades) are retried by
  :func:`~autopack.db.transaction.run_transaction`.
* **Tier states** are derived from their phases' states (:func:`autopack.states.tier_state`)
  and stored, re-derived under the run lock whenever a phase becomes terminal, so the
  claim's tier gate is one small lookup.
* **Cascades**: a FAILED phase SKIPs every phase that can now never run (later tiers,
  transitive dependents), naming itself as the blocker, so a requeue of it reopens
  exactly those (:func:`reopen_unblocked`).
* **Budgets** (:func:`budget_problem`) are checked at every claim and after every usage
  report: tokens, cost, minutes since the first claim, phases started.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from autopack.db import approvals as approval_sql
from autopack.db import statements as sql
from autopack.db.records import PhaseRecord, RunRecord, TierRecord
from autopack.db.transaction import Tx
from autopack.errors import NotFound
from autopack.logs import log_event
from autopack.rundef import Policy
from autopack.states import (
    RUN_ACTIVE,
    PhaseState,
    RunState,
    ensure_transition,
    run_outcome,
    tier_state,
)

logger = logging.getLogger("autopack.control")

P = PhaseState
R = RunState
MAX_BACKOFF_SECONDS = 60.0
BLOCKED_PREFIX = "blocked by "


# -- lookups ------------------------------------------------------------------------------------


def run_not_found(tx: Tx, run_id: str) -> NotFound:
    return NotFound(
        f"run {run_id!r} not found in {tx.where()}",
        run_id=run_id,
        database_instance_id=tx.identity.instance_id,
    )


def load_run(tx: Tx, run_id: str, *, lock: bool = False) -> RunRecord:
    """The run (``lock``: ``FOR UPDATE`` on PostgreSQL); NotFound names run and database."""
    run = tx.one(RunRecord, sql.RUN_FOR_UPDATE if lock and tx.pg else sql.RUN, {"b_run": run_id})
    if run is None:
        raise run_not_found(tx, run_id)
    return run


def load_phase(tx: Tx, run_id: str, phase_id: str, *, lock: bool = False) -> PhaseRecord:
    """The phase (``lock``: ``FOR UPDATE`` on PostgreSQL); NotFound names run and database."""
    statement = sql.PHASE_FOR_UPDATE if lock and tx.pg else sql.PHASE
    phase = tx.one(PhaseRecord, statement, {"b_run": run_id, "b_phase": phase_id})
    if phase is None:
        load_run(tx, run_id)  # the run itself missing is the clearer message
        raise NotFound(
            f"phase {phase_id!r} not found in run {run_id!r} ({tx.where()}); "
            f"its phases: {_phase_ids(tx, run_id)}",
            run_id=run_id,
            phase_id=phase_id,
            database_instance_id=tx.identity.instance_id,
        )
    return phase


def _phase_ids(tx: Tx, run_id: str, shown: int = 20) -> str:
    """The run's phase ids in claim order (the first ``shown``): a mistyped id is seen at a
    glance, where "not found" alone sent the user to look them up."""
    outline = sorted(
        tx.rows(sql.PHASE_OUTLINE, {"b_run": run_id}),
        key=lambda p: (p["tier_index"], p["phase_index"]),
    )
    ids = ", ".join(p["phase_id"] for p in outline[:shown])
    return ids + (f" and {len(outline) - shown} more" if len(outline) > shown else "")


def update_phase(tx: Tx, phase: PhaseRecord, **values: Any) -> None:
    tx.execute(sql.UPDATE_PHASE, {"b_pk": phase.id, **values})


def update_attempt(tx: Tx, run_id: str, phase_id: str, attempt: int, **values: Any) -> None:
    tx.execute(
        sql.UPDATE_ATTEMPT, {"b_run": run_id, "b_phase": phase_id, "b_attempt": attempt, **values}
    )


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
        for row in tx.rows(sql.RUN_DEPENDENCIES, {"b_run": run_id}):
            graph.setdefault(row["phase_id"], []).append(row["depends_on"])
        if graph or committed:
            with _DEPENDENCY_CACHE_GUARD:
                _DEPENDENCY_CACHE[key] = graph
                while len(_DEPENDENCY_CACHE) > _DEPENDENCY_CACHE_SIZE:
                    _DEPENDENCY_CACHE.popitem(last=False)
    if phase_id is not None:
        return {phase_id: list(graph.get(phase_id, []))}
    return {name: list(deps) for name, deps in graph.items()}


def fingerprint(stop_reason: str | None, error: str | None) -> str:
    """Short hash of stop_reason + first line of error: equal failures group together."""
    first_line = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return hashlib.sha256(f"{stop_reason or ''}|{first_line}".encode()).hexdigest()[:12]


def backoff_seconds(policy: Policy, attempts_in_window: int) -> float:
    """``retry_backoff_seconds * 2**(n-1)``, capped at 60 s."""
    exponent = max(attempts_in_window - 1, 0)
    return float(min(policy.retry_backoff_seconds * 2**exponent, MAX_BACKOFF_SECONDS))


# -- budgets ------------------------------------------------------------------------------------


def budget_problem(tx: Tx, run: RunRecord, *, starting_new_phase: bool) -> str | None:
    """Why ``run`` may not hand out more work, or None. Checked at every claim."""
    if run.token_cap is not None and run.tokens_used >= run.token_cap:
        return f"token budget exhausted: {run.tokens_used} tokens used, token_cap {run.token_cap}"
    if run.cost_cap_usd is not None and run.cost_usd >= run.cost_cap_usd:
        return (
            f"cost budget exhausted: ${run.cost_usd:.4f} spent, "
            f"cost_cap_usd ${run.cost_cap_usd:.4f}"
        )
    minutes = run.max_duration_minutes
    if minutes is not None and run.started_at is not None:
        elapsed = tx.now - run.started_at
        if elapsed >= timedelta(minutes=minutes):
            return (
                f"duration budget exhausted: running {elapsed.total_seconds() / 60:.1f} "
                f"minutes, max_duration_minutes {minutes}"
            )
    if starting_new_phase and run.max_phases is not None:
        started = tx.count(sql.STARTED_PHASES, {"b_run": run.id})
        if started >= run.max_phases:
            return f"phase budget exhausted: {started} phases started, max_phases {run.max_phases}"
    return None


# -- settling: tiers, the run's end -------------------------------------------------------------


def _phase_states(tx: Tx, run_id: str) -> dict[int, list[str]]:
    by_tier: dict[int, list[str]] = defaultdict(list)
    for row in tx.rows(sql.PHASE_STATES, {"b_run": run_id}):
        by_tier[row["tier_index"]].extend([row["state"]] * row["n"])
    return by_tier


def _refresh_tiers(tx: Tx, run_id: str, states_by_tier: Mapping[int, list[str]]) -> None:
    for tier in tx.all(TierRecord, sql.TIERS_OF_RUN, {"b_run": run_id}):
        derived = tier_state(states_by_tier.get(tier.tier_index, []))
        if derived != tier.state:
            tx.execute(sql.UPDATE_TIER, {"b_pk": tier.id, "state": derived})


def settle_run(
    tx: Tx, run_id: str, *, finished: PhaseRecord | None = None, run_state: str = ""
) -> str:
    """Lock the run, re-derive tier states, end the run if no phase is open. Its state.

    ``finished``: the one phase that just became terminal (a result, no cascade), read
    with its run's state (``run_state``). While its tier still has another open phase
    neither the tier nor the run can change state.
    On PostgreSQL that other phase is share-locked (``FOR KEY SHARE SKIP LOCKED``), so it
    cannot finish before this transaction commits, and whoever finishes it will see this
    one done: the run row need not be locked at all, and results of one run do not queue
    behind each other. Only when no such phase exists does the full, locked check run.
    """
    if finished is not None and tx.pg:
        params = {"b_run": run_id, "b_tier": finished.tier_index, "b_pk": finished.id}
        if tx.execute(sql.OPEN_PEER_SHARED, params).first() is not None:
            return run_state
    run = load_run(tx, run_id, lock=True)
    if finished is not None and run.state == R.RUNNING:
        still_open = tx.count(sql.OPEN_IN_TIER, {"b_run": run_id, "b_tier": finished.tier_index})
        if still_open:
            return run.state
    by_tier = _phase_states(tx, run_id)
    _refresh_tiers(tx, run_id, by_tier)
    if run.state != R.RUNNING:
        return run.state
    outcome = run_outcome(state for states in by_tier.values() for state in states)
    if outcome is None:
        return run.state
    reason = None
    if outcome != R.DONE_SUCCESS:
        names = [
            f"{row['phase_id']} {row['state']}"
            for row in tx.rows(sql.NOT_COMPLETE, {"b_run": run_id})
        ]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        reason = f"{len(names)} phase(s) did not complete: {shown}"
    set_run_state(tx, run, outcome, reason)
    return str(outcome)


def set_run_state(tx: Tx, run: RunRecord, target: RunState, reason: str | None) -> None:
    ensure_transition("run", run.state, target, subject=f"run {run.id}")
    values: dict[str, Any] = {"state": target, "updated_at": tx.now}
    if target in RUN_ACTIVE:
        values.update(finished_at=None, failure_reason=None)
    else:
        values.update(finished_at=tx.now, failure_reason=reason)
    tx.execute(sql.UPDATE_RUN, {"b_run": run.id, **values})
    log_event(logger, "run_state", run_id=run.id, previous=run.state, state=target, reason=reason)


# -- cascades -----------------------------------------------------------------------------------


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


def skip_blocked(tx: Tx, phase: PhaseRecord) -> int:
    """``phase`` just FAILED: SKIP every QUEUED phase that can now never run.

    That is every phase of a later tier (tiers wait for all earlier phases to COMPLETE) and
    every transitive ``depends_on`` dependent in its own tier. The reason names the blocker
    so a requeue of it can reopen exactly these (:func:`reopen_unblocked`).
    """
    ensure_transition("phase", P.QUEUED, P.SKIPPED)
    dependents = _dependents(depends_on(tx, phase.run_id), [phase.phase_id])
    skipped = tx.execute(
        sql.SKIP_BLOCKED,
        {
            "b_run": phase.run_id,
            "b_tier": phase.tier_index,
            "b_dependents": sorted(dependents),
            "b_reason": f"{BLOCKED_PREFIX}{phase.phase_id} (FAILED)",
            "b_now": tx.now,
        },
    ).rowcount
    if skipped:
        log_event(
            logger,
            "phases_skipped",
            run_id=phase.run_id,
            blocked_by=phase.phase_id,
            count=skipped,
        )
    return skipped


def reopen_unblocked(tx: Tx, run_id: str) -> list[str]:
    """Re-QUEUE phases SKIPPED as blocked whose blockers are no longer FAILED."""
    outline = tx.rows(sql.PHASE_OUTLINE, {"b_run": run_id})
    failed = [p for p in outline if p["state"] == P.FAILED]
    dependents_of_failed = _dependents(depends_on(tx, run_id), [p["phase_id"] for p in failed])
    lowest_failed_tier = min((p["tier_index"] for p in failed), default=None)
    reopen = [
        p["phase_id"]
        for p in outline
        if p["state"] == P.SKIPPED
        and (p["last_failure_reason"] or "").startswith(BLOCKED_PREFIX)
        and p["phase_id"] not in dependents_of_failed
        and (lowest_failed_tier is None or p["tier_index"] <= lowest_failed_tier)
    ]
    if reopen:
        ensure_transition("phase", P.SKIPPED, P.QUEUED)
        tx.execute(sql.REOPEN, {"b_run": run_id, "b_phases": reopen, "b_now": tx.now})
        log_event(logger, "phases_reopened", run_id=run_id, phases=",".join(reopen))
    return reopen


def unmet_blockers(tx: Tx, phase: PhaseRecord) -> list[tuple[str, str]]:
    """``(phase_id, state)`` of the FAILED or SKIPPED phases ``phase`` waits for (every phase
    of an earlier tier, its transitive ``depends_on``): while one stays so, ``phase`` can
    never be claimed."""
    graph = depends_on(tx, phase.run_id)
    needed: set[str] = set()
    stack = [phase.phase_id]
    while stack:
        for dependency in graph.get(stack.pop(), []):
            if dependency not in needed:
                needed.add(dependency)
                stack.append(dependency)
    return sorted(
        (p["phase_id"], p["state"])
        for p in tx.rows(sql.PHASE_OUTLINE, {"b_run": phase.run_id})
        if p["state"] in (P.FAILED, P.SKIPPED)
        and (p["tier_index"] < phase.tier_index or p["phase_id"] in needed)
    )


def end_run(tx: Tx, run_id: str, target: RunState, reason: str, *, cancel: bool) -> None:
    """Stop a run: SKIP its waiting phases, cancel its pending approvals, set ``target``.

    ``cancel`` also takes the lease from executing phases, so their next heartbeat or
    result is a 409, and refuses (409) a run that is already finished. Otherwise (budget
    exhausted) running attempts may finish and report, and a run another transaction
    ended meanwhile is left as it is. Phases are updated before the run row is locked
    (lock order).
    """
    run = load_run(tx, run_id)
    if run.state not in RUN_ACTIVE and not cancel:
        return
    ensure_transition("run", run.state, target, subject=f"run {run_id}")
    skip_states = [P.QUEUED, P.AWAITING_APPROVAL]
    if cancel:
        skip_states += [P.EXECUTING, P.CI_RUNNING]
        tx.execute(sql.CANCEL_RUNNING_ATTEMPTS, {"b_run": run_id, "b_now": tx.now})
    for state in skip_states:
        ensure_transition("phase", state, P.SKIPPED)
    tx.execute(
        sql.SKIP_IN_STATES,
        {
            "b_run": run_id,
            "b_states": [str(s) for s in skip_states],
            "b_reason": reason,
            "b_now": tx.now,
        },
    )
    tx.execute(
        approval_sql.CANCEL_PENDING_APPROVALS_OF_RUN,
        {"b_run": run_id, "b_now": tx.now, "b_responder": None, "b_note": reason},
    )
    run = load_run(tx, run_id, lock=True)
    if run.state not in RUN_ACTIVE and not cancel:
        return  # ended meanwhile by another transaction; the budget stop is moot
    set_run_state(tx, run, target, reason)
    _refresh_tiers(tx, run_id, _phase_states(tx, run_id))
