"""The numeric core of the fit: the negative log posterior and a damped Newton solver.

Each phase's log tokens are Normal(mu, sigma) with mu and log sigma linear in at most nine
and two parameters (the sparse design of :mod:`~autopack.estimation.fit`). An exact count
contributes its density; a censored one (every attempt truncated) the log probability
that the need exceeded its bound. Gradient and Hessian are exact (a test checks them
against finite differences) and accumulated with ``bincount`` over the few columns each
row touches, so a Newton step on 5 000 phases costs milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]

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


class Objective:
    """Negative log posterior with its exact gradient and Hessian."""

    def __init__(
        self,
        loc_cols: NDArray[np.int64],
        loc_vals: Matrix,
        scale_cols: NDArray[np.int64],
        y: Vector,
        censored: NDArray[np.bool_],
        prior_mean: Vector,
        prior_sd: Vector,
    ) -> None:
        self.loc_cols, self.loc_vals, self.scale_cols = loc_cols, loc_vals, scale_cols
        self.y, self.censored = y, censored
        self.prior_mean, self.precision = prior_mean, 1.0 / prior_sd**2
        self.p = prior_mean.size

    def _padded(self, theta: Vector) -> Vector:
        return np.append(theta, 0.0)

    def mu(self, theta: Vector) -> Vector:
        result: Vector = (self._padded(theta)[self.loc_cols] * self.loc_vals).sum(axis=1)
        return result

    def value(self, theta: Vector) -> float:
        mu = self.mu(theta)
        log_sigma = self._padded(theta)[self.scale_cols].sum(axis=1)
        r = (self.y - mu) * np.exp(-log_sigma)
        nll = np.where(self.censored, -log_sf(r), log_sigma + 0.5 * r * r + LOG_SQRT_2PI)
        penalty = 0.5 * float(((theta - self.prior_mean) ** 2 * self.precision).sum())
        return float(nll.sum()) + penalty

    def leverage(self, theta: Vector, cov: Matrix) -> Vector:
        """Each phase's share of the location fit (hat diagonal, weighted by information)."""
        p, cols, vals = self.p, self.loc_cols, self.loc_vals
        padded = np.zeros((p + 1, p + 1))
        padded[:p, :p] = cov
        block = padded[cols[:, :, None], cols[:, None, :]]
        spread = np.einsum("ij,ijk,ik->i", vals, block, vals)
        log_sigma = self._padded(theta)[self.scale_cols].sum(axis=1)
        r = (self.y - (self._padded(theta)[cols] * vals).sum(axis=1)) * np.exp(-log_sigma)
        lam = hazard(r)
        weight = np.where(self.censored, lam * (lam - r), 1.0)
        result: Vector = weight * spread * np.exp(-2.0 * log_sigma)
        return result

    def derivatives(self, theta: Vector) -> tuple[float, Vector, Matrix]:
        p, cols, vals = self.p, self.loc_cols, self.loc_vals
        padded = self._padded(theta)
        mu = (padded[cols] * vals).sum(axis=1)
        log_sigma = padded[self.scale_cols].sum(axis=1)
        inv_sigma = np.exp(-log_sigma)
        r = (self.y - mu) * inv_sigma
        lam = hazard(r)
        cens = self.censored
        nll = np.where(cens, -log_sf(r), log_sigma + 0.5 * r * r + LOG_SQRT_2PI)
        d_mu = np.where(cens, -lam, -r) * inv_sigma
        d_ls = np.where(cens, -r * lam, 1.0 - r * r)
        bend = lam * (lam - r)
        h_mm = np.where(cens, bend, 1.0) * inv_sigma**2
        h_ml = np.where(cens, lam + r * bend, 2.0 * r) * inv_sigma
        h_ll = np.where(cens, r * (lam + r * bend), 2.0 * r * r)

        size, sc = p + 1, self.scale_cols
        grad = _sums(cols, d_mu[:, None] * vals, size) + _sums(sc, np.repeat(d_ls, 2), size)
        square = size * size
        hess = _sums(
            cols[:, :, None] * size + cols[:, None, :],
            h_mm[:, None, None] * vals[:, :, None] * vals[:, None, :],
            square,
        ).reshape(size, size)
        cross = _sums(
            cols[:, :, None] * size + sc[:, None, :],
            np.repeat((h_ml[:, None] * vals).ravel(), 2),
            square,
        ).reshape(size, size)
        hess += cross + cross.T
        hess += _sums(sc[:, :, None] * size + sc[:, None, :], np.repeat(h_ll, 4), square).reshape(
            size, size
        )
        delta = theta - self.prior_mean
        value = float(nll.sum()) + 0.5 * float((delta**2 * self.precision).sum())
        gradient = grad[:p] + delta * self.precision
        hessian = hess[:p, :p] + np.diag(self.precision)
        return value, gradient, hessian


def _sums(index: NDArray[np.int64], weights: Vector, length: int) -> Vector:
    """Scatter-add ``weights`` into a vector of ``length`` (the sparse design's workhorse)."""
    result: Vector = np.bincount(index.ravel(), weights.ravel(), minlength=length).astype(float)
    return result


def newton(objective: Objective, start: Vector) -> tuple[Vector, Matrix, int]:
    """Damped Newton (Levenberg): a full step near the mode, gradient-like far from it."""
    theta = start.copy()
    value, grad, hess = objective.derivatives(theta)
    damping = 1e-4
    iterations = 0
    for _ in range(200):
        iterations += 1
        scale = np.maximum(np.abs(np.diag(hess)), 1e-8)
        try:
            step = np.linalg.solve(hess + damping * np.diag(scale), -grad)
        except np.linalg.LinAlgError:
            damping *= 10
            continue
        largest = float(np.max(np.abs(step))) if step.size else 0.0
        if largest > 2.0:
            step *= 2.0 / largest
        candidate = theta + step
        new_value = objective.value(candidate)
        if math.isfinite(new_value) and new_value <= value:
            theta = candidate
            improvement = value - new_value
            value, grad, hess = objective.derivatives(theta)
            damping = max(damping / 10, 1e-10)
            if improvement < 1e-10 * (1 + abs(value)) and float(np.max(np.abs(grad))) < 1e-5:
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return theta, hess, iterations


def inverse(hessian: Matrix) -> Matrix:
    """Covariance at the mode; eigenvalues are floored so it is always positive definite."""
    symmetric = 0.5 * (hessian + hessian.T)
    values, vectors = np.linalg.eigh(symmetric)
    floor = max(float(values.max()) * 1e-10, 1e-10) if values.size else 1e-10
    values = np.maximum(values, floor)
    result: Matrix = (vectors / values) @ vectors.T
    return result
