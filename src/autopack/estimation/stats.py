"""The few distributions the estimator needs, in numpy and the standard library only.

No scipy: the project keeps its dependency set small, and everything here is either a
classic approximation with a stated error (the normal tail) or an exact sum (binomial
tails, which only ever see a few thousand held-out phases).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]

_LOG_HALF = math.log(0.5)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

_ERFCC = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _log_erfc_positive(x: Vector) -> Vector:
    """log(erfc(x)) for x >= 0 (Numerical Recipes ``erfcc``), relative error < 1.2e-7.

    Computed in log space, so it stays finite where erfc itself underflows: a censored
    observation far below its prediction must still have a usable gradient.
    """
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.zeros_like(t)
    for coefficient in reversed(_ERFCC):
        poly = poly * t + coefficient
    result: Vector = np.log(t) - x * x + poly
    return result


def log_sf(z: Vector) -> Vector:
    """log P(Z > z) for a standard normal Z, stable for large |z| (the censored term)."""
    x = np.abs(z) / math.sqrt(2.0)
    log_tail = _LOG_HALF + _log_erfc_positive(x)
    upper = np.log1p(-np.exp(log_tail))
    result: Vector = np.where(z >= 0, log_tail, upper)
    return result


def hazard(z: Vector) -> Vector:
    """phi(z) / P(Z > z): the inverse Mills ratio, the censored term's derivative."""
    result: Vector = np.exp(-0.5 * z * z - LOG_SQRT_2PI - log_sf(z))
    return result


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
