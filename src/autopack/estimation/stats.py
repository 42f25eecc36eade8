"""The scalar distributions the estimator needs, in the standard library only.

No scipy: the project keeps its dependency set small, and everything here is a classic
bisection or an exact sum (binomial tails, which only ever see a few thousand held-out
phases). No numpy either: estimating a budget (the executor, the API's report) needs only
these, and numpy costs every process that imports it a noticeable start; the vectorised
normal tail of the fit lives in :mod:`~autopack.estimation.solver`.
"""

from __future__ import annotations

import math
from functools import lru_cache


def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@lru_cache(maxsize=256)
def normal_quantile(q: float) -> float:
    """Inverse standard normal CDF (bisection on ``erfc``; cached, so cheap per estimate)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1, got {q}")
    low, high = -40.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        if 1.0 - normal_sf(mid) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12:
            break
    return (low + high) / 2


# -- binomial tails (held-out truncation counts) --------------------------------------------


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), by an exact sum."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k + 1)))


def binomial_upper(k: int, n: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate seen as ``k`` of ``n``.

    "Truncation 0 of 40" must not read as "never truncates": its 95 % upper bound is 7.2 %.
    """
    if n <= 0:
        return None
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    low, high = k / n, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if binomial_cdf(k, n, mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def above_rate(k: int, n: int, rate: float) -> float:
    """p-value of "the true rate is at most ``rate``" after seeing ``k`` of ``n``: P(X >= k)."""
    if n <= 0 or k <= 0:
        return 1.0
    return max(0.0, 1.0 - binomial_cdf(k - 1, n, rate))
