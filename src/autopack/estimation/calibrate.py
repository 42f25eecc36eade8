"""Refit the estimator's coefficients from telemetry, honestly, and show what it would change.

The statistical model behind :class:`~autopack.estimation.estimator.TokenEstimator`::

    log(actual) = log(p50(features; coefficients)) + sigma * z,   z ~ Normal(0, 1)

i.e. p50 is the median and the spread is multiplicative (a 20 % miss on a 500-token phase and
on a 20 000-token phase weigh the same). Each event contributes to the likelihood:

* a successful, non-truncated call: the density of its exact ``actual``;
* a truncated call: the probability that the need *exceeded* its lower bound
  (Tobit-style right censoring). That term can only grow as p50 grows, so a truncated row
  can push estimates up but never drag them down, however small its bound;
* failed, non-truncated calls are left out (their token count says nothing about need).

Coefficients are fitted in log space as a MAP estimate with a Normal prior centred on the
current file (``prior_sd`` in log units): with thin data the fit stays near the prior, with
plenty it follows the data. A coefficient seen in fewer than ``min_samples`` usable events is
not touched at all. The p90 ratio (default and per ``category/complexity/bucket`` stratum)
is the Kaplan-Meier ``target`` quantile of actual / fitted p50, which again treats truncated
rows as lower bounds, shrunk toward the prior ratio by ``n / (n + min_samples)``. (Under
the model that ratio is pure noise, independent of where each call was cut off, which is
what makes Kaplan-Meier valid here.)

Before vs after is measured on held-out events (k-fold cross-validation): each fold is
predicted by a model fitted without it, and by the prior.

Numpy only: the optimizer is a small BFGS with backtracking, the normal tail uses the
Numerical Recipes erfc approximation (relative error < 1.2e-7, stable in the far tail).
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Group, RenderableType
from rich.table import Table

from autopack.estimation.estimator import ParamKey, TokenEstimator, stratum_key
from autopack.estimation.features import PhaseFeatures, features_from_event
from autopack.estimation.metrics import UNDERESTIMATE_FACTOR, km_quantile, mean, p50, smape

Event = Mapping[str, Any]
Vector = NDArray[np.float64]

DEFAULT_MODEL_MAX_OUTPUT = 128_000
"""Ceiling used when comparing budgets in cross-validation (only affects the waste column)."""


# -- observations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One usable event: exact output tokens, or (``censored``) a lower bound on them."""

    features: PhaseFeatures
    value: float
    censored: bool

    @property
    def stratum(self) -> str:
        f = self.features
        return stratum_key(f.category, f.complexity, f.deliverable_count)


def observations(events: Iterable[Event]) -> tuple[list[Observation], dict[str, int]]:
    """The events calibration can learn from, and why the others were skipped."""
    usable: list[Observation] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for event in events:
        actual = event.get("actual_output_tokens")
        if actual is None or actual <= 0:
            skip("no_actual_tokens")
            continue
        truncated = bool(event.get("truncated"))
        if not truncated and not _succeeded(event):
            skip("not_successful")
            continue
        features = features_from_event(event)
        if features is None:
            skip("no_features")
            continue
        usable.append(Observation(features, float(actual), truncated))
    return usable, dict(sorted(skipped.items()))


def _succeeded(event: Event) -> bool:
    """``success`` decides; while it is unknown (not joined yet) a parsed answer counts."""
    success = event.get("success")
    if success is None:
        return event.get("parse_success") is True
    return bool(success)


# -- the normal tail, numpy only --------------------------------------------------------------

_LOG_HALF = math.log(0.5)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


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
    """log(erfc(x)) for x >= 0 (Numerical Recipes ``erfcc``), exact to ~1e-7 in the tail."""
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.zeros_like(t)
    for coefficient in reversed(_ERFCC):
        poly = poly * t + coefficient
    result: Vector = np.log(t) - x * x + poly
    return result


def log_sf(z: Vector) -> Vector:
    """log P(Z > z) for a standard normal Z, stable for large |z|."""
    x = np.abs(z) / math.sqrt(2.0)
    log_tail = _LOG_HALF + _log_erfc_positive(x)  # log P(Z > |z|)
    upper = np.log1p(-np.exp(log_tail))  # log P(Z > -|z|)
    result: Vector = np.where(z >= 0, log_tail, upper)
    return result


def normal_quantile(q: float) -> float:
    """Inverse standard normal CDF by bisection on :func:`log_sf` (called a few times only)."""
    low, high = -10.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        cdf = 1.0 - math.exp(float(log_sf(np.array([mid]))[0]))
        low, high = (mid, high) if cdf < q else (low, mid)
    return (low + high) / 2


# -- the optimizer ----------------------------------------------------------------------------

Objective = Callable[[Vector], tuple[float, Vector]]


def _minimize(objective: Objective, start: Vector, *, max_iter: int = 500) -> Vector:
    """BFGS with Armijo backtracking and a capped step (parameters live in log space)."""
    x = start.copy()
    fx, grad = objective(x)
    inverse_hessian = np.eye(x.size)
    for _ in range(max_iter):
        if float(np.max(np.abs(grad))) < 1e-7:
            break
        direction = -inverse_hessian @ grad
        if float(grad @ direction) >= 0:
            inverse_hessian = np.eye(x.size)
            direction = -grad
        largest = float(np.max(np.abs(direction)))
        if largest > 1.0:
            direction /= largest
        step, slope = 1.0, float(grad @ direction)
        for _ in range(60):
            candidate = x + step * direction
            f_new, g_new = objective(candidate)
            if math.isfinite(f_new) and f_new <= fx + 1e-4 * step * slope:
                break
            step /= 2
        else:
            break
        s, y = candidate - x, g_new - grad
        x, grad, f_old, fx = candidate, g_new, fx, f_new
        sy = float(s @ y)
        if sy > 1e-12:
            rho = 1.0 / sy
            eye = np.eye(x.size)
            inverse_hessian = (eye - rho * np.outer(s, y)) @ inverse_hessian @ (
                eye - rho * np.outer(y, s)
            ) + rho * np.outer(s, s)
        if abs(f_old - fx) <= 1e-12 * (1.0 + abs(fx)) and float(np.max(np.abs(grad))) < 1e-4:
            break
    return x


# -- one fit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    estimator: TokenEstimator
    sigma: float
    support: dict[ParamKey, int]
    changed: dict[ParamKey, float]


def _fit(
    data: list[Observation],
    prior: TokenEstimator,
    *,
    min_samples: int,
    target: float,
    prior_sd: float,
) -> _Fit:
    """The MAP coefficients and p90 ratios for ``data`` (see the module docstring)."""
    rows = [prior.design(obs.features) for obs in data]
    keys = sorted({key for row in rows for key in row})
    index = {key: j for j, key in enumerate(keys)}
    design = np.zeros((len(rows), len(keys)))
    for i, row in enumerate(rows):
        for key, count in row.items():
            design[i, index[key]] = count
    support = {key: int(np.count_nonzero(design[:, index[key]])) for key in keys}
    free = np.array([support[key] >= min_samples for key in keys], dtype=bool)
    sigma0 = math.log(prior.p90_default) / normal_quantile(target)
    n_exact = sum(not obs.censored for obs in data)
    sigma_free = n_exact >= min_samples
    if not free.any() and not sigma_free:
        return _Fit(prior, sigma0, support, {})

    beta0 = np.array([max(prior.value(key), 1.0) for key in keys])
    theta0 = np.log(beta0[free])
    log_y = np.log(np.array([obs.value for obs in data]))
    censored = np.array([obs.censored for obs in data], dtype=bool)
    margin = prior.margin
    n_free = int(free.sum())

    def objective(x: Vector) -> tuple[float, Vector]:
        theta, s = x[:n_free], x[n_free]
        sigma = math.exp(s) if sigma_free else sigma0
        beta = beta0.copy()
        beta[free] = np.exp(theta)
        mu = np.maximum(margin * (design @ beta), 1e-9)
        z = (log_y - np.log(mu)) / sigma
        tail = log_sf(z)
        hazard = np.exp(-0.5 * z * z - _LOG_SQRT_2PI - tail)
        nll = np.where(censored, -tail, math.log(sigma) + 0.5 * z * z)
        d_log_mu = np.where(censored, -hazard, -z) / sigma
        d_s = np.where(censored, -z * hazard, 1.0 - z * z)
        value = float(nll.sum()) + float(((theta - theta0) ** 2).sum()) / (2 * prior_sd**2)
        grad_theta = (design[:, free] * beta[free]).T @ (d_log_mu * margin / mu)
        grad_theta += (theta - theta0) / prior_sd**2
        grad_s = float(d_s.sum()) if sigma_free else 0.0
        # A weak pull on sigma (sd: one log unit) keeps mostly-truncated data from collapsing it.
        value += (s - math.log(sigma0)) ** 2 / 2 if sigma_free else 0.0
        grad_s += (s - math.log(sigma0)) if sigma_free else 0.0
        return value, np.append(grad_theta, grad_s)

    solution = _minimize(objective, np.append(theta0, math.log(sigma0)))
    sigma = math.exp(float(solution[n_free])) if sigma_free else sigma0
    changed: dict[ParamKey, float] = {}
    for key, theta in zip(
        [k for k, is_free in zip(keys, free, strict=True) if is_free],
        solution[:n_free],
        strict=True,
    ):
        value = math.exp(float(theta))
        changed[key] = round(value, 1) if key[2] == "per_kb" else float(round(value))
    fitted = prior.with_changes(changed)
    p90_default, p90_strata = _p90_ratios(
        data, fitted, prior, min_samples=min_samples, target=target, sigma=sigma
    )
    fitted = fitted.with_changes({}, p90_default=p90_default, p90_strata=p90_strata)
    return _Fit(fitted, sigma, support, changed)


def _p90_ratios(
    data: list[Observation],
    fitted: TokenEstimator,
    prior: TokenEstimator,
    *,
    min_samples: int,
    target: float,
    sigma: float,
) -> tuple[float | None, dict[str, float]]:
    """Kaplan-Meier ``target`` quantile of actual/p50, shrunk toward the prior's ratio."""
    z_target = normal_quantile(target)

    def ratio(group: list[Observation], prior_ratio: float) -> float:
        ratios = [obs.value / fitted.p50_exact(obs.features) for obs in group]
        flags = [obs.censored for obs in group]
        found = km_quantile(ratios, flags, target)
        if found is None:  # bounds hide the quantile: it lies above the last exact ratio
            exact = [r for r, c in zip(ratios, flags, strict=True) if not c]
            found = max([math.exp(z_target * sigma), *exact])
        weight = len(group) / (len(group) + min_samples)
        shrunk = math.exp(
            weight * math.log(max(found, 1e-9)) + (1 - weight) * math.log(prior_ratio)
        )
        return round(max(1.0, shrunk), 3)

    default = ratio(data, prior.p90_default) if len(data) >= min_samples else None
    groups: dict[str, list[Observation]] = {}
    for obs in data:
        groups.setdefault(obs.stratum, []).append(obs)
    strata = {
        key: ratio(group, prior.p90_ratio(key))
        for key, group in sorted(groups.items())
        if len(group) >= min_samples
    }
    return default, strata


# -- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStats:
    """Held-out accuracy of one model on one group (rates are fractions; None = no data).

    A truncated row only bounds the need from below (need > bound). When the bound already
    exceeds the threshold (p90, or 1.1 * p50) the row is a sure miss / sure underestimate;
    otherwise it is *undecided*. Rather than guess, each rate is given as the interval the
    truth lies in: the plain field is the worst case (undecided rows count against the
    model), ``*_best`` the best case. With few truncations the two coincide.
    """

    n: int
    n_censored: int
    p90_coverage: float | None
    p90_coverage_best: float | None
    underestimation_rate: float | None
    underestimation_rate_best: float | None
    waste_p50: float | None
    smape_mean: float | None


@dataclass(frozen=True)
class Comparison:
    key: str
    before: EvalStats
    after: EvalStats


@dataclass(frozen=True)
class _Prediction:
    obs: Observation
    p50: float
    p90: float
    budget: float


def _eval_stats(predictions: list[_Prediction]) -> EvalStats:
    n = len(predictions)
    covered = missed = under = over = 0
    for p in predictions:
        value, censored = p.obs.value, p.obs.censored
        if not censored:
            covered += value <= p.p90
            missed += value > p.p90
            under += value > UNDERESTIMATE_FACTOR * p.p50
            over += value <= UNDERESTIMATE_FACTOR * p.p50
        else:  # the need is > value: decided only when value already reaches the threshold
            missed += value >= p.p90
            under += value >= UNDERESTIMATE_FACTOR * p.p50
    exact = [p for p in predictions if not p.obs.censored]
    return EvalStats(
        n=n,
        n_censored=n - len(exact),
        p90_coverage=covered / n if n else None,
        p90_coverage_best=(n - missed) / n if n else None,
        underestimation_rate=(n - over) / n if n else None,
        underestimation_rate_best=under / n if n else None,
        waste_p50=p50([p.budget / p.obs.value for p in exact]),
        smape_mean=mean([smape(p.p50, p.obs.value) for p in exact]),
    )


def _predict(estimator: TokenEstimator, obs: Observation, ceiling: int) -> _Prediction:
    estimate = estimator.estimate(obs.features, model_max_output=ceiling)
    return _Prediction(obs, float(estimate.p50), float(estimate.p90), float(estimate.budget))


# -- the result -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamChange:
    name: str
    before: float
    after: float
    support: int


@dataclass(frozen=True)
class CalibrationResult:
    """The proposed coefficients, what changed, and before-vs-after on held-out events."""

    prior: TokenEstimator
    fitted: TokenEstimator
    n_events: int
    n_exact: int
    n_censored: int
    skipped: dict[str, int]
    sigma: float
    changes: tuple[ParamChange, ...]
    folds: int
    overall: Comparison | None
    strata: tuple[Comparison, ...]

    @property
    def changed(self) -> bool:
        return self.fitted.to_json() != self.prior.to_json()

    def diff(
        self, old_name: str = "a/coefficients.json", new_name: str = "b/coefficients.json"
    ) -> str:
        """The reviewable patch: a unified diff of the coefficients file (empty: no change)."""
        return "".join(
            difflib.unified_diff(
                self.prior.dumps().splitlines(keepends=True),
                self.fitted.dumps().splitlines(keepends=True),
                fromfile=old_name,
                tofile=new_name,
            )
        )

    def write(self, path: Path) -> None:
        """Write the new coefficients file (the CLI does this only with ``--write``)."""
        self.fitted.write(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "prior_version": self.prior.version,
            "fitted_version": self.fitted.version,
            "changed": self.changed,
            "n_events": self.n_events,
            "n_exact": self.n_exact,
            "n_censored": self.n_censored,
            "skipped": dict(self.skipped),
            "sigma": self.sigma,
            "folds": self.folds,
            "changes": [asdict(c) for c in self.changes],
            "overall": None if self.overall is None else asdict(self.overall),
            "strata": [asdict(c) for c in self.strata],
            "coefficients": self.fitted.to_json(),
        }


def calibrate(
    events: Iterable[Event],
    prior: TokenEstimator,
    *,
    min_samples: int = 5,
    folds: int = 5,
    target: float = 0.9,
    prior_sd: float = 0.5,
    seed: int = 0,
    model_max_output: int = DEFAULT_MODEL_MAX_OUTPUT,
) -> CalibrationResult:
    """Refit ``prior`` from ``events`` and cross-validate the refit against the prior.

    ``prior_sd`` is how far (in log units) the data must pull a coefficient to move it as far
    as the prior allows: 0.5 ≈ "the prior is right within a factor of 1.6".
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be a probability, got {target}")
    data, skipped = observations(events)

    def refit(train: list[Observation]) -> _Fit:
        return _fit(train, prior, min_samples=max(1, min_samples), target=target, prior_sd=prior_sd)

    fit = refit(data)
    fitted = fit.estimator
    if fitted.to_json() != prior.to_json():
        fitted = fitted.with_changes({}, version=_derived_version(prior, fitted))

    changes = tuple(
        ParamChange(_param_name(key), prior.value(key), value, fit.support[key])
        for key, value in sorted(fit.changed.items())
        if value != prior.value(key)
    )
    k = min(folds, len(data))
    overall: Comparison | None = None
    strata: tuple[Comparison, ...] = ()
    if k >= 2:
        order = np.random.default_rng(seed).permutation(len(data))
        before: list[_Prediction] = []
        after: list[_Prediction] = []
        for fold in range(k):
            held = set(order[fold::k].tolist())
            train = [obs for i, obs in enumerate(data) if i not in held]
            model = refit(train).estimator
            for i in sorted(held):
                before.append(_predict(prior, data[i], model_max_output))
                after.append(_predict(model, data[i], model_max_output))
        overall = Comparison("overall", _eval_stats(before), _eval_stats(after))
        keys = sorted({p.obs.stratum for p in before})
        strata = tuple(
            Comparison(
                key,
                _eval_stats([p for p in before if p.obs.stratum == key]),
                _eval_stats([p for p in after if p.obs.stratum == key]),
            )
            for key in keys
        )
    return CalibrationResult(
        prior=prior,
        fitted=fitted,
        n_events=len(data),
        n_exact=sum(not obs.censored for obs in data),
        n_censored=sum(obs.censored for obs in data),
        skipped=skipped,
        sigma=fit.sigma,
        changes=changes,
        folds=k if k >= 2 else 0,
        overall=overall,
        strata=strata,
    )


def _param_name(key: ParamKey) -> str:
    group, first, second = key
    return f"{group}.{first}.{second}"


def _derived_version(prior: TokenEstimator, fitted: TokenEstimator) -> str:
    """``<base>-cal-<hash>``: names the content, so the same refit gets the same version."""
    base = prior.version.split("-cal-")[0][:27]
    digest = hashlib.sha256(fitted.dumps().encode()).hexdigest()[:8]
    return f"{base}-cal-{digest}"


# -- rendering --------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _range(low: float | None, high: float | None) -> str:
    """One percentage, or ``low..high`` when truncated rows leave the rate undecided."""
    if low is None or high is None or round(100 * low) == round(100 * high):
        return _pct(low)
    return f"{100 * low:.0f}..{_pct(high)}"


def render_calibration(result: CalibrationResult) -> RenderableType:
    """Changed coefficients, then before → after on held-out events per stratum."""
    changes = Table(title=f"Coefficients {result.prior.version} → {result.fitted.version}")
    for name in ("coefficient", "before", "after", "events"):
        changes.add_column(name, justify="left" if name == "coefficient" else "right")
    for change in result.changes:
        changes.add_row(change.name, f"{change.before:g}", f"{change.after:g}", str(change.support))
    ratios_before = {"default": result.prior.p90_default, **result.prior.p90_strata}
    ratios_after = {"default": result.fitted.p90_default, **result.fitted.p90_strata}
    for key in sorted(ratios_after):
        if ratios_after[key] != ratios_before.get(key):
            old = ratios_before.get(key)
            changes.add_row(
                f"p90_ratio.{key}", "-" if old is None else f"{old:g}", f"{ratios_after[key]:g}", ""
            )
    heldout = Table(title=f"Held-out ({result.folds}-fold) before → after")
    for name in ("stratum", "n", "trunc", "p90 coverage", "under", "waste p50", "SMAPE"):
        heldout.add_column(name, justify="left" if name == "stratum" else "right")
    for row in (*result.strata, *([result.overall] if result.overall else [])):
        b, a = row.before, row.after
        heldout.add_row(
            row.key,
            str(b.n),
            str(b.n_censored),
            f"{_range(b.p90_coverage, b.p90_coverage_best)} → "
            f"{_range(a.p90_coverage, a.p90_coverage_best)}",
            f"{_range(b.underestimation_rate_best, b.underestimation_rate)} → "
            f"{_range(a.underestimation_rate_best, a.underestimation_rate)}",
            f"{_num(b.waste_p50)} → {_num(a.waste_p50)}",
            f"{_num(b.smape_mean, 1)} → {_num(a.smape_mean, 1)}",
            style="bold" if row is result.overall else None,
        )
    skipped = ", ".join(f"{k}={v}" for k, v in result.skipped.items()) or "none"
    summary = (
        f"{result.n_events} usable events ({result.n_exact} exact, {result.n_censored} truncated "
        f"as lower bounds); skipped: {skipped}; sigma={result.sigma:.3f}"
    )
    return Group(summary, changes, heldout)
