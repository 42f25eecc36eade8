"""The predictive estimator (file schema 2): a lognormal distribution of output tokens per call.

For a phase of category ``c``, complexity ``k``, deliverable-count bucket ``b`` and model
family ``f``::

    log(tokens) ~ Normal(mu, sd)
    mu  = intercept[c/k] + slope[c/k] * (log n - log_n_centre)
          + size.modified_share * s1 + size.existing_kb * s2 + shift[c/k/b] + offset[f]
    sd² = sigma[c/k]² + Var(mu)              (spread, widened by estimation uncertainty)

where ``n`` is the deliverable count, ``s1`` the share of deliverables that already exist and
``s2 = log1p(existing KB per deliverable / 4)``. Complexity therefore *multiplies* (an
intercept in log space scales every file), a slope on log n (per category, refined per
cell) lets a six-file phase cost less than six one-file phases, and a modified file's
current size enters as a feature.

``Var(mu)`` is stored per stratum and cell as the covariance of (1, log n, s1, s2) terms, so
it is exact for any deliverable count, not only the typical one. What a stratum, cell,
category or model the fit never saw falls back to is the next level up, with that level's
prior spread added (``fallback_sd``): an unseen model gets wider budgets, not a guess.

The budget is a quantile of this distribution (``target_truncation`` 0.02 → the 98th
percentile), adjusted for the uncertainty of ``sigma`` itself: with ``v = Var(log sigma)``
the z-score is ``z + v/2 * z * (z² - 1)``, the second-order correction that keeps the tail
probability at the target when the spread is only estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from autopack.errors import ConfigError
from autopack.estimation.features import TOKENS_MAX, PhaseFeatures, bucket_of
from autopack.estimation.rows import cell_key, model_family, norm_label
from autopack.estimation.stats import normal_quantile

SCHEMA = 2
COV_TERMS = 4
"""Covariance blocks are over (1, log n - centre, s1, s2): 10 numbers, upper triangle."""
KB_SCALE = 4.0
SIGMA_MIN, SIGMA_MAX = 1e-4, 10.0
"""The spread (log units) a file may hold; a fit clamps to it (every phase needing the same
count gives ~1e-9: one identical replayed answer is no reason to refuse the file)."""
MARGIN_SD_MAX = 5.0
"""The most standard errors a file may add to the budget quantile (``--margin-sd``)."""
_LOG_TOKENS_MAX = math.log(TOKENS_MAX)


def covariates(features: PhaseFeatures) -> tuple[float, float, float]:
    """(log n, modified share, log1p(existing KB per deliverable / 4)) of a phase."""
    n = max(1, features.deliverable_count)
    modified = sum(1 for d in features.deliverables if not d.is_new)
    kb = sum(d.existing_bytes for d in features.deliverables) / 1024
    return math.log(n), modified / n, math.log1p(kb / (n * KB_SCALE))


def quad(cov: tuple[float, ...], v: tuple[float, ...]) -> float:
    """vᵀ C v for C given as the upper triangle of a COV_TERMS x COV_TERMS matrix."""
    total, index = 0.0, 0
    for i in range(COV_TERMS):
        for j in range(i, COV_TERMS):
            total += cov[index] * v[i] * v[j] * (1.0 if i == j else 2.0)
            index += 1
    return max(total, 0.0)


def _tokens(log_value: float) -> float:
    """exp(log_value), at most TOKENS_MAX (exp overflows past ~709)."""
    return min(math.exp(min(log_value, _LOG_TOKENS_MAX)), float(TOKENS_MAX))


@dataclass(frozen=True)
class Distribution:
    """The predictive lognormal of one call's output tokens, and where it came from."""

    mu: float
    sd: float
    sigma: float
    log_sigma_var: float
    fit: str
    level: str
    mu_var: float = 0.0

    def quantile(self, q: float, margin: float = 0.0) -> float:
        """The q quantile; ``margin`` > 0 adds that many standard errors of its estimate.

        The predictive quantile is right *on average* over strata; each stratum's own is
        off by its estimation error (a few tenths of a log unit with ~20 phases a stratum).
        The margin buys confidence that no single stratum falls far below the target.
        """
        z = normal_quantile(q)
        z_star = z + 0.5 * self.log_sigma_var * z * (z * z - 1.0)
        error = math.sqrt(self.mu_var + z * z * self.sigma**2 * self.log_sigma_var)
        return _tokens(self.mu + z_star * self.sd + margin * error)

    @property
    def median(self) -> float:
        return _tokens(self.mu)


@dataclass(frozen=True)
class Cell:
    intercept: float
    slope: float
    sigma: float
    log_sigma_var: float
    cov: tuple[float, ...]
    phases: int


@dataclass(frozen=True)
class Stratum:
    shift: float
    cov: tuple[float, ...]
    phases: int
    censored: int


@dataclass(frozen=True)
class Offset:
    """A model family's shift of the pooled level, with its covariance with the global
    (level, slope, size) terms: the level and the offsets are only pinned apart by the
    prior, so their variances alone would overstate the uncertainty of their sum."""

    offset: float
    var: float
    phases: int
    cov: tuple[float, ...] = (0.0,) * COV_TERMS


@dataclass(frozen=True)
class FitParams:
    """One fitted parameter set (the pooled fit, or one model family's own fit)."""

    phases: int
    censored: int
    glob: Cell
    slope_var: float
    size: tuple[float, float]
    slopes: dict[str, tuple[float, float]]
    cells: dict[str, Cell]
    strata: dict[str, Stratum]
    offsets: dict[str, Offset]

    def to_json(self) -> dict[str, Any]:
        return {
            "phases": self.phases,
            "censored": self.censored,
            "global": {**_cell_json(self.glob), "slope_var": _r(self.slope_var)},
            "size": {"modified_share": _r(self.size[0]), "existing_kb": _r(self.size[1])},
            "categories": {
                k: {"slope": _r(s), "slope_var": _r(v)} for k, (s, v) in sorted(self.slopes.items())
            },
            "cells": {k: _cell_json(c) for k, c in sorted(self.cells.items())},
            "strata": {
                k: {
                    "shift": _r(s.shift),
                    "cov": [_r(x) for x in s.cov],
                    "phases": s.phases,
                    "censored": s.censored,
                }
                for k, s in sorted(self.strata.items())
            },
            "model_offsets": {
                k: {
                    "offset": _r(o.offset),
                    "var": _r(o.var),
                    "cov": [_r(x) for x in o.cov],
                    "phases": o.phases,
                }
                for k, o in sorted(self.offsets.items())
            },
        }


def _r(value: float) -> float:
    """Five significant digits: the file diffs by meaningful changes, not float noise."""
    return float(f"{value:.5g}")


def _cell_json(cell: Cell) -> dict[str, Any]:
    return {
        "intercept": _r(cell.intercept),
        "slope": _r(cell.slope),
        "sigma": _r(cell.sigma),
        "log_sigma_var": _r(cell.log_sigma_var),
        "cov": [_r(x) for x in cell.cov],
        "phases": cell.phases,
    }


@dataclass(frozen=True)
class Fallback:
    """Prior spreads of each level: what is added when a level has no fitted value."""

    cell: float
    shift: float
    category_slope: float
    cell_slope: float
    model: float
    cell_sigma: float


class PredictiveModel:
    """A validated schema-2 document and the arithmetic from features to a distribution."""

    def __init__(self, doc: Mapping[str, Any], source: str, *, clamp: bool = False) -> None:
        check = _Checker(source, clamp=clamp)
        self.version = check.text(doc, "version")
        self.target_truncation = check.number(doc, "target_truncation", 1e-6, 0.5)
        self.floor = int(check.number(doc, "floor", 1, 1e9))
        self.margin_sd = check.number(doc, "margin_sd", 0, MARGIN_SD_MAX)
        self.log_n_centre = check.number(doc, "log_n_centre", 0, 10)
        fb = check.obj(doc, "fallback_sd")
        self.fallback = Fallback(
            *(
                check.number(fb, k, 0, 5, f"fallback_sd.{k}")
                for k in ("cell", "shift", "category_slope", "cell_slope", "model", "cell_sigma")
            )
        )
        self.pooled = _parse_fit(check, check.obj(doc, "pooled"), "pooled")
        models = check.obj(doc, "models")
        self.models = {
            name: _parse_fit(check, check.obj(models, name, f"models.{name}"), f"models.{name}")
            for name in models
        }

    def fit_for(self, model: str | None) -> tuple[FitParams, Offset, str]:
        """The parameter set for ``model``: its own fit, else pooled plus its offset."""
        if model is None:
            return self.pooled, Offset(0.0, 0.0, 0), "pooled"
        family = model_family(model)
        if family in self.models:
            return self.models[family], Offset(0.0, 0.0, 0), f"model:{family}"
        known = self.pooled.offsets.get(family)
        if known is not None:
            return self.pooled, known, f"pooled:{family}"
        return self.pooled, Offset(0.0, self.fallback.model**2, 0), "pooled:unseen-model"

    def distribution(self, features: PhaseFeatures, model: str | None = None) -> Distribution:
        fit, offset, name = self.fit_for(model)
        fb = self.fallback
        category = norm_label(features.category)
        cell_name = cell_key(features.category, features.complexity)
        stratum_name = f"{cell_name}/{bucket_of(features.deliverable_count)}"
        log_n, s1, s2 = covariates(features)
        lc = log_n - self.log_n_centre
        v = (1.0, lc, s1, s2)
        cell = fit.cells.get(cell_name)
        stratum = fit.strata.get(stratum_name)
        extra = 0.0
        if cell is not None and stratum is not None:
            base, cov, level = cell.intercept + stratum.shift, stratum.cov, "stratum"
        elif cell is not None:
            base, cov, level = cell.intercept, cell.cov, "cell"
            extra += fb.shift**2
        else:
            cell, level = fit.glob, "global"
            base, cov = cell.intercept, cell.cov
            extra += fb.cell**2 + fb.shift**2
        slope = cell.slope
        if level == "global":  # the cell's slope is unknown: its category's, or the global one
            known = fit.slopes.get(category)
            slope = known[0] if known is not None else slope
            spread = fb.cell_slope**2 + (0.0 if known is not None else fb.category_slope**2)
            extra += spread * lc * lc
        sigma, log_sigma_var = cell.sigma, cell.log_sigma_var
        if level == "global":
            log_sigma_var += fb.cell_sigma**2
        mu = base + slope * lc + fit.size[0] * s1 + fit.size[1] * s2 + offset.offset
        cross = 2.0 * sum(c * x for c, x in zip(offset.cov, v, strict=True))
        var_mu = max(quad(cov, v) + extra + offset.var + cross, 0.0)
        return Distribution(
            mu=mu,
            sd=math.sqrt(sigma * sigma + var_mu),
            sigma=sigma,
            log_sigma_var=log_sigma_var,
            fit=name,
            level=level,
            mu_var=var_mu,
        )


def _parse_fit(check: _Checker, raw: Mapping[str, Any], where: str) -> FitParams:
    glob = check.obj(raw, "global", f"{where}.global")
    cells = check.obj(raw, "cells", f"{where}.cells")
    strata = check.obj(raw, "strata", f"{where}.strata")
    slopes = check.obj(raw, "categories", f"{where}.categories")
    offsets = check.obj(raw, "model_offsets", f"{where}.model_offsets")
    size = check.obj(raw, "size", f"{where}.size")
    return FitParams(
        phases=int(check.number(raw, "phases", 0, 1e12, f"{where}.phases")),
        censored=int(check.number(raw, "censored", 0, 1e12, f"{where}.censored")),
        glob=_parse_cell(check, glob, f"{where}.global"),
        slope_var=check.number(glob, "slope_var", 0, 100, f"{where}.global.slope_var"),
        size=(
            check.number(size, "modified_share", -10, 10, f"{where}.size.modified_share"),
            check.number(size, "existing_kb", -10, 10, f"{where}.size.existing_kb"),
        ),
        slopes={
            k: (
                check.number(s, "slope", -5, 5, f"{where}.categories.{k}.slope"),
                check.number(s, "slope_var", 0, 100, f"{where}.categories.{k}.slope_var"),
            )
            for k, s in ((k, check.obj(slopes, k, f"{where}.categories.{k}")) for k in slopes)
        },
        cells={
            k: _parse_cell(check, check.obj(cells, k, f"{where}.cells.{k}"), f"{where}.cells.{k}")
            for k in cells
        },
        strata={
            k: Stratum(
                shift=check.number(s, "shift", -20, 20, f"{where}.strata.{k}.shift"),
                cov=check.cov(s, f"{where}.strata.{k}"),
                phases=int(check.number(s, "phases", 0, 1e12, f"{where}.strata.{k}.phases")),
                censored=int(check.number(s, "censored", 0, 1e12, f"{where}.strata.{k}.censored")),
            )
            for k, s in ((k, check.obj(strata, k, f"{where}.strata.{k}")) for k in strata)
        },
        offsets={
            k: Offset(
                offset=check.number(o, "offset", -20, 20, f"{where}.model_offsets.{k}.offset"),
                var=check.number(o, "var", 0, 100, f"{where}.model_offsets.{k}.var"),
                phases=int(check.number(o, "phases", 0, 1e12, f"{where}.model_offsets.{k}.phases")),
                cov=check.vector(o, f"{where}.model_offsets.{k}"),
            )
            for k, o in ((k, check.obj(offsets, k, f"{where}.model_offsets.{k}")) for k in offsets)
        },
    )


def _parse_cell(check: _Checker, raw: Mapping[str, Any], where: str) -> Cell:
    return Cell(
        intercept=check.number(raw, "intercept", -50, 50, f"{where}.intercept"),
        slope=check.number(raw, "slope", -5, 5, f"{where}.slope"),
        sigma=check.number(raw, "sigma", SIGMA_MIN, SIGMA_MAX, f"{where}.sigma"),
        log_sigma_var=check.number(raw, "log_sigma_var", 0, 100, f"{where}.log_sigma_var"),
        cov=check.cov(raw, where),
        phases=int(check.number(raw, "phases", 0, 1e12, f"{where}.phases")),
    )


class _Checker:
    """Refuses a document that would give nonsense budgets, naming the bad field.

    ``clamp`` (a fit, not a file): a finite number outside its range is set to the nearest
    bound in the document instead, so implausible data (outputs growing as n**6, or none
    varying at all) still give a file every later load accepts."""

    def __init__(self, source: str, *, clamp: bool = False) -> None:
        self.source = source
        self.clamp = clamp

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"estimator file {self.source}: {message}")

    def obj(self, raw: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
        value = raw.get(key)
        if not isinstance(value, Mapping):
            raise self.fail(f"{where or key} must be an object")
        return value

    def text(self, raw: Mapping[str, Any], key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value or len(value) > 40:
            raise self.fail(f"{key} must be a non-empty string of at most 40 characters")
        return value

    def number(
        self, raw: Mapping[str, Any], key: str, low: float, high: float, where: str | None = None
    ) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where or key} must be a number in [{low}, {high}], got {value!r}")
        if self.clamp and math.isfinite(value) and isinstance(raw, MutableMapping):
            value = raw[key] = min(max(value, low), high)
        if not math.isfinite(value) or not low <= value <= high:
            raise self.fail(f"{where or key} must be a number in [{low}, {high}], got {value!r}")
        return float(value)

    def vector(self, raw: Mapping[str, Any], where: str) -> tuple[float, ...]:
        value = raw.get("cov")
        if not isinstance(value, list) or len(value) != COV_TERMS:
            raise self.fail(f"{where}.cov must be a list of {COV_TERMS} numbers")
        return self._numbers(value, where)

    def cov(self, raw: Mapping[str, Any], where: str) -> tuple[float, ...]:
        value = raw.get("cov")
        size = COV_TERMS * (COV_TERMS + 1) // 2
        if not isinstance(value, list) or len(value) != size:
            raise self.fail(f"{where}.cov must be a list of {size} numbers")
        numbers = self._numbers(value, where)
        diagonal = [0, 4, 7, 9]
        if self.clamp:
            value[:] = numbers = tuple(
                max(x, 0.0) if i in diagonal else x for i, x in enumerate(numbers)
            )
        if any(numbers[i] < 0 for i in diagonal):
            raise self.fail(f"{where}.cov has a negative variance")
        return numbers

    def _numbers(self, value: list[Any], where: str) -> tuple[float, ...]:
        cells = [{"v": x} for x in value]
        numbers = tuple(
            self.number(cell, "v", -1e6, 1e6, f"{where}.cov[{i}]") for i, cell in enumerate(cells)
        )
        if self.clamp:
            value[:] = [cell["v"] for cell in cells]
        return numbers
