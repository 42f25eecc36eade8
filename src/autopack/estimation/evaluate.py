"""Scoring budgets on phases whose need is known: what calibrate's verdict and the benchmark use.

The measures answer the operator's questions directly, per stratum and overall:

* **truncation**: share of phases whose first call would be cut off (need > budget),
  with a one-sided 95 % upper bound, because 0 of 40 is not "never";
* **over p90**: share of phases whose need exceeds the stated p90 (should be ~10 %);
* **reserved/needed**: first-call ``max_tokens`` summed over phases / tokens needed summed,
  the over-reservation the budget rule costs (rate limits are charged on it);
* **waste**: billed output tokens burned on truncated attempts / tokens needed. Without
  continuation (today's executor), a truncated answer is discarded and retried with the
  budget x ``escalation_factor`` (capped at the model maximum, at most ``max_attempts``
  calls), so every truncated attempt bills its whole budget.

A held-out phase that was itself censored (every attempt truncated at bound L) only says
need > L: a budget <= L surely truncates, a larger one is *undecided* and is counted as a
truncation (and as over p90), so undecided phases can only make the new estimator look
worse. Reserved/needed and waste use exactly-known phases only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autopack.estimation.metrics import smape
from autopack.estimation.stats import binomial_upper


@dataclass(frozen=True)
class Scored:
    """One phase under one estimator: its need (or lower bound) and what was predicted."""

    stratum: str
    family: str
    need: float
    censored: bool
    p50: float
    p90: float
    budget: int
    exceeds: bool
    cap: int


def retry_waste(
    budget: int, need: float, *, cap: int, factor: float = 1.5, max_attempts: int = 3
) -> tuple[int, int]:
    """(output tokens billed on truncated attempts, calls made) without continuation.

    Mirrors the executor's (``executor/budget.py::escalated``): the retry gets
    max(budget, min(previous x factor, cap)); the phase gives up after ``max_attempts``
    calls.
    """
    current, wasted = budget, 0
    for attempt in range(1, max_attempts + 1):
        if need <= current:
            return wasted, attempt
        wasted += current
        current = max(budget, min(math.ceil(current * factor), cap))
    return wasted, max_attempts


def continuation_waste(
    budget: int, need: float, *, overlap: int, max_calls: int = 50
) -> tuple[int, int]:
    """(billed output wasted, calls made) when a truncated answer is *continued*.

    The model of continuation: the truncated call's tokens are kept; each continuation call
    (same ``max_tokens``) first re-emits ``overlap`` tokens (the incomplete line/block it
    resumes from, so the pieces can be joined) and then produces new tokens. Only the
    re-emitted overlap is waste. Input tokens re-sent with the partial answer are input,
    not output, and are not counted here.
    """
    produced, calls, wasted = min(need, budget), 1, 0
    room = budget - overlap
    while produced < need and calls < max_calls and room > 0:
        produced += min(need - produced, room)
        wasted += overlap
        calls += 1
    return wasted, calls


@dataclass(frozen=True)
class Scores:
    """The measures of one group of phases under one estimator (rates are fractions)."""

    n: int
    n_censored: int
    truncated: int
    undecided: int
    truncation: float | None
    truncation_upper: float | None
    over_p90: float | None
    reserved_per_needed: float | None
    waste: float | None
    smape: float | None
    split: int

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "n_censored": self.n_censored,
            "truncated": self.truncated,
            "undecided": self.undecided,
            "truncation": self.truncation,
            "truncation_upper95": self.truncation_upper,
            "over_p90": self.over_p90,
            "reserved_per_needed": self.reserved_per_needed,
            "waste": self.waste,
            "smape": self.smape,
            "split_flagged": self.split,
        }


def score(
    items: Sequence[Scored], *, escalation_factor: float = 1.5, max_attempts: int = 3
) -> Scores:
    n = len(items)
    truncated = undecided = over = 0
    reserved = needed = wasted = 0.0
    errors: list[float] = []
    for item in items:
        if item.censored:
            sure = item.need >= item.budget
            truncated += 1
            undecided += not sure
            over += 1
            continue
        truncated += item.need > item.budget
        over += item.need > item.p90
        reserved += item.budget
        needed += item.need
        waste, _ = retry_waste(
            item.budget,
            item.need,
            cap=item.cap,
            factor=escalation_factor,
            max_attempts=max_attempts,
        )
        wasted += waste
        errors.append(smape(item.p50, item.need))
    return Scores(
        n=n,
        n_censored=sum(i.censored for i in items),
        truncated=truncated,
        undecided=undecided,
        truncation=truncated / n if n else None,
        truncation_upper=binomial_upper(truncated, n),
        over_p90=over / n if n else None,
        reserved_per_needed=reserved / needed if needed else None,
        waste=wasted / needed if needed else None,
        smape=sum(errors) / len(errors) if errors else None,
        split=sum(i.exceeds for i in items),
    )


def by_key(items: Iterable[Scored], key: str) -> dict[str, list[Scored]]:
    """Group scored phases by ``stratum`` or ``family``."""
    groups: dict[str, list[Scored]] = {}
    for item in items:
        groups.setdefault(getattr(item, key), []).append(item)
    return dict(sorted(groups.items()))


def rate_text(scores: Scores) -> str:
    """The truncation rate; a range when undecided phases could go either way."""
    if scores.truncation is None:
        return "-"
    sure = (scores.truncated - scores.undecided) / scores.n
    if scores.undecided == 0 or round(1000 * sure) == round(1000 * scores.truncation):
        return f"{100 * scores.truncation:.1f} %"
    return f"{100 * sure:.1f}–{100 * scores.truncation:.1f} %"
