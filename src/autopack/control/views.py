"""Records to the contract's answers (:mod:`autopack.contract`).

An answer takes each field it shares with the record by name, so a column is listed in
the table model, its record and the contract model, and copied nowhere: what a view adds
(dependencies, attempts left, counts, nested tiers) is all that is written here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from autopack.bounds import INT32_MAX, MAX_PAGE
from autopack.contract import (
    ApprovalView,
    ApprovedChange,
    AttemptView,
    PhaseView,
    RunBrief,
    RunBudget,
    RunSummary,
    RunView,
    TierView,
)
from autopack.db.records import ApprovalRecord, AttemptRecord, PhaseRecord, RunRecord, TierRecord
from autopack.errors import InvalidInput
from autopack.rundef import Budgets

M = TypeVar("M", bound=BaseModel)


def _pick(model: type[M], record: object, **extra: Any) -> M:
    """``model`` from the fields it shares with ``record``, plus ``extra``."""
    shared = {
        name: getattr(record, name)
        for name in model.model_fields
        if name not in extra and hasattr(record, name)
    }
    return model(**shared, **extra)


def page_params(limit: int, offset: int) -> dict[str, Any]:
    """The bind parameters of one page of a list (:class:`~autopack.contract.Page`); the
    API's query parameters have these bounds, this refuses them to in-process callers."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1..{MAX_PAGE} (got {limit})", field="limit")
    if not 0 <= offset <= INT32_MAX:
        raise InvalidInput(f"offset must be 0..{INT32_MAX} (got {offset})", field="offset")
    return {"b_limit": limit, "b_offset": offset}


def budgets(run: RunRecord) -> Budgets:
    return _pick(Budgets, run)


def phase_view(phase: PhaseRecord, depends_on: Sequence[str]) -> PhaseView:
    return _pick(PhaseView, phase, depends_on=list(depends_on), attempts_left=phase.attempts_left)


def attempt_view(attempt: AttemptRecord) -> AttemptView:
    return _pick(AttemptView, attempt)


def approval_view(approval: ApprovalRecord) -> ApprovalView:
    return _pick(ApprovalView, approval)


def approved_change(approval: ApprovalRecord) -> ApprovedChange:
    return _pick(ApprovedChange, approval, approval_id=approval.id)


def run_brief(run: RunRecord, state: str | None = None) -> RunBrief:
    return _pick(RunBrief, run, budgets=budgets(run), state=state or run.state)


def run_budget(run: RunRecord, problem: str | None) -> RunBudget:
    return _pick(RunBudget, run, budget_exhausted=problem is not None, reason=problem)


def run_summary(run: RunRecord, counts: Mapping[str, int], unpriced_calls: int) -> RunSummary:
    return _pick(
        RunSummary,
        run,
        run_id=run.id,
        counts=dict(counts),
        phase_count=sum(counts.values()),
        unpriced_calls=unpriced_calls,
    )


def run_view(
    run: RunRecord,
    tiers: Iterable[TierRecord],
    phases: Iterable[PhaseRecord],
    dependencies: Mapping[str, list[str]],
    unpriced_calls: int,
) -> RunView:
    by_tier: dict[int, list[PhaseView]] = {}
    counts: Counter[str] = Counter()
    for phase in sorted(phases, key=lambda p: (p.tier_index, p.phase_index)):
        view = phase_view(phase, dependencies.get(phase.phase_id, []))
        by_tier.setdefault(phase.tier_index, []).append(view)
        counts[phase.state] += 1
    return _pick(
        RunView,
        run,
        run_id=run.id,
        budgets=budgets(run),
        counts=dict(counts),
        phase_count=sum(counts.values()),
        unpriced_calls=unpriced_calls,
        tiers=[
            _pick(TierView, tier, phases=by_tier.get(tier.tier_index, []))
            for tier in sorted(tiers, key=lambda t: t.tier_index)
        ],
    )
