"""The held-out measures by hand: waste under both retry policies, rates with bounds."""

from __future__ import annotations

import math

import pytest

from autopack.estimation.evaluate import Scored, continuation_waste, retry_waste, score
from autopack.estimation.stats import above_rate, binomial_upper, normal_quantile


def test_retry_waste_follows_the_executors_escalation() -> None:
    assert retry_waste(1000, 900, cap=64_000) == (0, 1)
    # 1000 cut, 1500 cut, 2250 fits: the two truncated attempts bill their whole budgets.
    assert retry_waste(1000, 2000, cap=64_000) == (2500, 3)
    # The cap stops escalation; three attempts and the phase gives up.
    assert retry_waste(1000, 5000, cap=1200) == (1000 + 1200 + 1200, 3)
    assert retry_waste(1000, 2000, cap=64_000, factor=2.0, max_attempts=2) == (1000, 2)


def test_continuation_wastes_only_the_overlap() -> None:
    assert continuation_waste(1000, 900, overlap=100) == (0, 1)
    # 1000 kept, then 900 new per call after re-emitting 100: 2 continuations.
    assert continuation_waste(1000, 2500, overlap=100) == (200, 3)
    assert continuation_waste(1000, 2500, overlap=0) == (0, 3)


def _item(need: float, budget: int, censored: bool = False, p50: float = 1000) -> Scored:
    return Scored("s", "m", need, censored, p50, 2 * p50, budget, False, 64_000)


def test_scores_by_hand_with_an_undecided_phase() -> None:
    items = [
        _item(900, 3000),  # fits
        _item(2500, 3000),  # fits, over p90 (2000)
        _item(3500, 3000),  # truncated: waste 3000
        _item(4000, 3000, censored=True),  # bound 4000 >= budget: surely truncated
        _item(2000, 3000, censored=True),  # bound below budget: undecided, counted as cut
    ]
    scores = score(items)
    assert (scores.n, scores.n_censored, scores.truncated, scores.undecided) == (5, 2, 3, 1)
    assert scores.truncation == pytest.approx(0.6)
    assert scores.over_p90 == pytest.approx(4 / 5)
    assert scores.reserved_per_needed == pytest.approx(9000 / 6900)
    assert scores.waste == pytest.approx(3000 / 6900)
    assert scores.truncation_upper is not None and scores.truncation_upper > 0.6


def test_binomial_bounds() -> None:
    assert binomial_upper(0, 40) == pytest.approx(1 - 0.05 ** (1 / 40), rel=1e-6)  # 7.2 %
    upper = binomial_upper(5, 100)
    assert upper is not None
    assert sum(math.comb(100, i) * upper**i * (1 - upper) ** (100 - i) for i in range(6)) == (
        pytest.approx(0.05, abs=1e-9)
    )  # P(X <= 5 | upper) = 5 %
    assert binomial_upper(3, 0) is None
    assert above_rate(0, 100, 0.02) == 1.0
    assert above_rate(8, 100, 0.02) < 0.01  # 8 of 100 rejects "at most 2 %"
    assert above_rate(3, 100, 0.02) > 0.05  # 3 of 100 does not
    assert normal_quantile(0.98) == pytest.approx(2.0537489106318225, abs=1e-9)
