"""Accuracy measures of the estimator, as plain functions (shared by writer, report, calibration).

Truncated calls only tell us a *lower bound* on the tokens the phase needed. Functions here
never treat such a bound as the exact answer: per-row measures return ``None`` where the
bound cannot decide them, and :func:`km_quantile` estimates a quantile from a mixture of
exact values and lower bounds (right-censored data, Kaplan-Meier) without the bias of either
dropping the bounds or trusting them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

UNDERESTIMATE_FACTOR = 1.1
"""An estimate is *under* when the actual output exceeds it by more than 10 %."""


def smape(pred: float, actual: float) -> float:
    """Symmetric absolute percentage error in percent (0..200); diagnostic, not the target."""
    denominator = (abs(pred) + abs(actual)) / 2
    if denominator == 0:
        return 0.0
    return 100.0 * abs(pred - actual) / denominator


def waste_ratio(max_tokens: float, actual: float) -> float | None:
    """How many times more output room was reserved than used; ``None`` without output."""
    if actual <= 0:
        return None
    return max_tokens / actual


def underestimated(actual: float, pred: float) -> bool:
    """True when ``actual > 1.1 * pred``."""
    return actual > UNDERESTIMATE_FACTOR * pred


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile interpolated linearly between ranks (numpy's default); ``None``
    when empty. Plain Python: the API's report needs only this, and numpy would cost every
    server start."""
    if not values:
        return None
    ordered = sorted(float(value) for value in values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def p50(values: Sequence[float]) -> float | None:
    return quantile(values, 0.5)


def p90(values: Sequence[float]) -> float | None:
    return quantile(values, 0.9)


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


@dataclass(frozen=True)
class EventMetrics:
    """The derived columns of one ``token_estimation_v2_events`` row (None = not decidable)."""

    smape_percent: float | None
    waste_ratio: float | None
    underestimated: bool | None


def event_metrics(
    *, predicted: int, max_tokens: int, actual: int | None, truncated: bool
) -> EventMetrics:
    """Per-row measures for the telemetry writer, with truncation handled honestly.

    For a truncated call ``actual`` is a lower bound: SMAPE and waste are unknown, and
    "underestimated" is known only when the bound already exceeds 1.1 * predicted.
    """
    if actual is None:
        return EventMetrics(None, None, None)
    if truncated:
        # The call wanted more than ``actual``: decided once the bound reaches 1.1 * predicted.
        sure = actual >= UNDERESTIMATE_FACTOR * predicted
        return EventMetrics(None, None, True if sure else None)
    return EventMetrics(
        smape_percent=smape(predicted, actual),
        waste_ratio=waste_ratio(max_tokens, actual),
        underestimated=underestimated(actual, predicted),
    )


def _km_steps(values: Sequence[float], censored: Sequence[bool]) -> list[tuple[float, float]]:
    """(time, survival just after it) at each exact value, Kaplan-Meier with right censoring.

    A lower bound tied with an exact value is still at risk at that value (the usual
    convention: the event happened to others, the bounded one survived at least that long).
    """
    order = sorted(zip(values, censored, strict=True), key=lambda pair: (pair[0], pair[1]))
    at_risk = len(order)
    survival = 1.0
    steps: list[tuple[float, float]] = []
    index = 0
    while index < len(order):
        value = order[index][0]
        deaths = 0
        leaving = 0
        while index < len(order) and order[index][0] == value:
            deaths += 0 if order[index][1] else 1
            leaving += 1
            index += 1
        if deaths:
            survival *= 1.0 - deaths / at_risk
            steps.append((value, survival))
        at_risk -= leaving
    return steps


def km_quantile(values: Sequence[float], censored: Sequence[bool], q: float) -> float | None:
    """Smallest value whose estimated CDF reaches ``q``; ``None`` if the bounds hide it.

    ``None`` happens when too many of the largest observations are lower bounds: the data
    then only says the quantile lies above the last exact value.
    """
    for value, after in _km_steps(values, censored):
        if 1.0 - after >= q - 1e-12:
            return value
    return None
