"""The censored, hierarchical fit behind the predictive estimator (numpy only).

Model (see :mod:`~autopack.estimation.predictive` for the prediction side), for phase i::

    log y_i ~ Normal(mu_i, sigma_i)
    mu_i        = level + cell[c/k] + (slope + cslope[c] + kslope[c/k]) * lc_i
                  + w1 * s1_i + w2 * s2_i + shift[c/k/b] + offset[model family]
    log sigma_i = log_sigma + cell_sigma[c/k]

Every parameter has a Normal prior; the *hierarchy* is in the centres: a stratum's shift is
centred on 0 (its cell), a cell on the prior file's cell (relative to the level), a
category's slope on the global slope and a cell's slope on its category's, a cell's spread
on the global spread, a model's offset on 0. The scales of the shifts, cell slopes and cell
spreads are estimated from the data (empirical Bayes, :func:`empirical_scale`): where the
strata really differ, the shifts follow them; where they do not, they stay at zero and add
no noise. With a handful of phases a stratum stays at its cell, with hundreds it
follows its own data. The fit is the posterior mode (MAP).

Likelihood per phase: the density of an exact count, or for a censored phase (every
attempt truncated) the probability that the need exceeded its largest bound, i.e.
right-censoring (Tobit). That term only rises with mu, so a bound can push a prediction up
but never drag it down, and it does not pretend to know the tail it hides.

Solver (:mod:`~autopack.estimation.solver`): Newton's method with the exact Hessian and
Levenberg damping; each row touches at most nine location and two scale parameters, so
fitting 5 000 phases takes tens of milliseconds. The inverse Hessian at the mode is the
estimation uncertainty that widens the predictive spread (a Laplace approximation), and
its hat trace per cell corrects sigma's mode for the locations fitted from the same phases
(``Fitted.unbias``: the mode divides by n, as if those locations were known).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from autopack.estimation.predictive import COV_TERMS, Cell, FitParams, Offset, Stratum, covariates
from autopack.estimation.rows import PhaseObservation
from autopack.estimation.solver import Objective, inverse, newton

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]


@dataclass(frozen=True)
class Hyper:
    """Prior standard deviations (log units), one per kind of parameter.

    Pooled defaults: a cell may differ from the prior file's cell by a factor ~1.6 per sd, a
    stratum from its cell by ~1.2, a model from the typical model by ~1.4. Per-model fits
    use tighter values around the pooled fit (a model differs from the pool in level more
    than in shape); the pooled fit's own uncertainty is added to those.
    """

    level: float = 1.0
    cell: float = 0.5
    slope: float = 0.5
    category_slope: float = 0.25
    cell_slope: float = 0.15
    size: float = 0.5
    shift: float = 0.2
    model: float = 0.35
    log_sigma: float = 0.5
    cell_sigma: float = 0.2


POOLED = Hyper()
PER_MODEL = Hyper(
    level=0.5,
    cell=0.2,
    slope=0.15,
    category_slope=0.15,
    cell_slope=0.1,
    size=0.25,
    shift=0.15,
    model=0.0,
    log_sigma=0.25,
    cell_sigma=0.15,
)


@dataclass(frozen=True)
class Centre:
    """Prior centres, in absolute terms (a cell's centre is its whole log intercept)."""

    level: float
    slope: float
    log_sigma: float
    cells: Mapping[str, float] = field(default_factory=dict)
    category_slopes: Mapping[str, float] = field(default_factory=dict)
    cell_log_sigma: Mapping[str, float] = field(default_factory=dict)
    cell_slopes: Mapping[str, float] = field(default_factory=dict)
    shifts: Mapping[str, float] = field(default_factory=dict)
    size: tuple[float, float] = (0.0, 0.0)
    extra_var: Mapping[str, float] = field(default_factory=dict)
    """Added prior variance per parameter name (a per-model fit inherits pooled uncertainty)."""


@dataclass(frozen=True)
class Move:
    """A parameter the data moved far from its prior (in prior standard deviations)."""

    name: str
    prior: float
    fitted: float
    prior_sd: float

    @property
    def z(self) -> float:
        return (self.fitted - self.prior) / self.prior_sd if self.prior_sd > 0 else 0.0


@dataclass(frozen=True)
class Fitted:
    """The mode, its covariance, and the maps from names to positions."""

    names: tuple[str, ...]
    theta: Vector
    cov: Matrix
    precision: Vector
    """The Hessian's diagonal at the mode: each parameter's precision given all others."""
    prior_mean: Vector
    prior_sd: Vector
    cells: tuple[str, ...]
    categories: tuple[str, ...]
    strata: tuple[str, ...]
    families: tuple[str, ...]
    """Families with a fitted offset (two or more in the data)."""
    seen_families: tuple[str, ...]
    counts: Mapping[str, tuple[int, int]]
    """phases and censored phases per cell, stratum and family name."""
    n: int
    n_censored: int
    iterations: int
    dof: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Per cell ("" = all): (phases, location parameters they paid for, the hat trace)."""

    def index(self, name: str) -> int:
        return self.names.index(name)

    def value(self, name: str) -> float:
        return float(self.theta[self.index(name)])

    def var(self, *names: str) -> float:
        rows = [self.index(n) for n in names]
        return float(self.cov[np.ix_(rows, rows)].sum())

    def moves(self) -> list[Move]:
        return [
            Move(name, float(m), float(t), float(s))
            for name, t, m, s in zip(
                self.names, self.theta, self.prior_mean, self.prior_sd, strict=True
            )
        ]

    def unbias(self, cell: str) -> float:
        """sqrt(n / (n - p)): the mode of sigma divides by n, as if the fitted locations
        were known; p (the hat trace of the cell's phases) is what fitting them cost. The
        predictive spread adds Var(mu) on top, so it is not counted twice."""
        if not UNBIAS:
            return 1.0
        seen, spent = self.dof.get(cell, (0.0, 0.0))
        return math.sqrt(seen / (seen - spent)) if seen - spent >= 1.0 else 1.0

    def _cross(self, name: str, columns: list[list[str]]) -> tuple[float, ...]:
        """Cov(parameter ``name``, each basis column)."""
        row = self.cov[self.index(name)]
        return tuple(float(sum(row[self.index(n)] for n in group)) for group in columns)

    def _block(self, columns: list[list[str]]) -> tuple[float, ...]:
        basis = np.zeros((len(self.names), COV_TERMS))
        for j, group in enumerate(columns):
            for name in group:
                basis[self.index(name), j] += 1.0
        block = basis.T @ self.cov @ basis
        return tuple(float(block[i, j]) for i in range(COV_TERMS) for j in range(i, COV_TERMS))

    def params(self) -> FitParams:
        """The fit as the prediction side stores it (absolute intercepts, covariance blocks)."""
        size_terms = [["size:modified_share"], ["size:existing_kb"]]
        level, slope, log_sigma = self.value("level"), self.value("slope"), self.value("sigma")
        glob = Cell(
            intercept=level,
            slope=slope,
            sigma=math.exp(log_sigma) * self.unbias(""),
            log_sigma_var=self.var("sigma"),
            cov=self._block([["level"], ["slope"], *size_terms]),
            phases=self.n,
        )
        cells: dict[str, Cell] = {}
        for cell in self.cells:
            category = cell.split("/")[0]
            cell_slope = ["slope", f"slope:{category}", f"slope:{cell}"]
            cells[cell] = Cell(
                intercept=level + self.value(f"cell:{cell}"),
                slope=sum(self.value(n) for n in cell_slope),
                sigma=math.exp(log_sigma + self.value(f"sigma:{cell}")) * self.unbias(cell),
                log_sigma_var=self.var("sigma", f"sigma:{cell}"),
                cov=self._block([["level", f"cell:{cell}"], cell_slope, *size_terms]),
                phases=self.counts.get(cell, (0, 0))[0],
            )
        strata: dict[str, Stratum] = {}
        for stratum in self.strata:
            cell = stratum.rsplit("/", 1)[0]
            category = cell.split("/")[0]
            phases, censored = self.counts.get(stratum, (0, 0))
            strata[stratum] = Stratum(
                shift=self.value(f"shift:{stratum}"),
                cov=self._block(
                    [
                        ["level", f"cell:{cell}", f"shift:{stratum}"],
                        ["slope", f"slope:{category}", f"slope:{cell}"],
                        *size_terms,
                    ]
                ),
                phases=phases,
                censored=censored,
            )
        global_terms = [["level"], ["slope"], *size_terms]
        offsets = {
            family: Offset(
                self.value(f"model:{family}"),
                self.var(f"model:{family}"),
                self.counts.get(f"model:{family}", (0, 0))[0],
                self._cross(f"model:{family}", global_terms),
            )
            for family in self.families
        }
        if not self.families and len(self.seen_families) == 1:  # the pool *is* that model
            (family,) = self.seen_families
            offsets = {family: Offset(0.0, 0.0, self.n)}
        return FitParams(
            phases=self.n,
            censored=self.n_censored,
            glob=glob,
            slope_var=self.var("slope"),
            size=(self.value("size:modified_share"), self.value("size:existing_kb")),
            slopes={
                c: (slope + self.value(f"slope:{c}"), self.var("slope", f"slope:{c}"))
                for c in self.categories
            },
            cells=cells,
            strata=strata,
            offsets=offsets,
        )


UNBIAS = True
MIN_EXACT = 3
_SLOTS = 9  # location columns a row can touch: level, cell, 3 slopes, w1, w2, shift, model


def _prior(
    centre: Centre,
    hyper: Hyper,
    cells: Sequence[str],
    strata: Sequence[str],
    families: Sequence[str],
) -> tuple[list[str], Vector, Vector]:
    """Parameter names with their prior means and standard deviations (deviation form)."""
    names: list[str] = ["level", "slope", "sigma", "size:modified_share", "size:existing_kb"]
    mean: list[float] = [centre.level, centre.slope, centre.log_sigma, *centre.size]
    sd: list[float] = [hyper.level, hyper.slope, hyper.log_sigma, hyper.size, hyper.size]
    for cell in cells:
        category_slope = centre.category_slopes.get(cell.split("/")[0], centre.slope)
        names += [f"cell:{cell}", f"sigma:{cell}", f"slope:{cell}"]
        mean += [
            centre.cells.get(cell, centre.level) - centre.level,
            centre.cell_log_sigma.get(cell, centre.log_sigma) - centre.log_sigma,
            centre.cell_slopes.get(cell, category_slope) - category_slope,
        ]
        sd += [hyper.cell, hyper.cell_sigma, hyper.cell_slope]
    for category in sorted({c.split("/")[0] for c in cells}):
        names.append(f"slope:{category}")
        mean.append(centre.category_slopes.get(category, centre.slope) - centre.slope)
        sd.append(hyper.category_slope)
    for stratum in strata:
        names.append(f"shift:{stratum}")
        mean.append(centre.shifts.get(stratum, 0.0))
        sd.append(hyper.shift)
    for family in families:
        names.append(f"model:{family}")
        mean.append(0.0)
        sd.append(hyper.model)
    extra = np.array([centre.extra_var.get(n, 0.0) for n in names])
    return names, np.array(mean), np.maximum(np.sqrt(np.array(sd) ** 2 + extra), 1e-6)


def _design(
    data: Sequence[PhaseObservation],
    index: Mapping[str, int],
    log_n_centre: float,
    *,
    with_offsets: bool,
) -> tuple[NDArray[np.int64], Matrix, NDArray[np.int64], Vector, NDArray[np.bool_]]:
    """The sparse design: per phase, the columns (and values) its mu and log sigma use."""
    n, dummy = len(data), len(index)  # unused slots point at ``dummy`` with value 0
    loc_cols = np.full((n, _SLOTS), dummy, dtype=np.int64)
    loc_vals = np.zeros((n, _SLOTS))
    scale_cols = np.zeros((n, 2), dtype=np.int64)
    y = np.zeros(n)
    censored = np.zeros(n, dtype=bool)
    for i, obs in enumerate(data):
        log_n, s1, s2 = covariates(obs.features)
        lc = log_n - log_n_centre
        cell = obs.cell
        row = [
            ("level", 1.0),
            (f"cell:{cell}", 1.0),
            ("slope", lc),
            (f"slope:{cell.split('/')[0]}", lc),
            (f"slope:{cell}", lc),
            ("size:modified_share", s1),
            ("size:existing_kb", s2),
            (f"shift:{obs.stratum}", 1.0),
        ]
        if with_offsets:
            row.append((f"model:{obs.family}", 1.0))
        for j, (name, value) in enumerate(row):
            loc_cols[i, j], loc_vals[i, j] = index[name], value
        scale_cols[i] = (index["sigma"], index[f"sigma:{cell}"])
        y[i] = math.log(max(obs.value, 1.0))
        censored[i] = obs.censored
    return loc_cols, loc_vals, scale_cols, y, censored


def fit(
    data: Sequence[PhaseObservation],
    centre: Centre,
    hyper: Hyper,
    *,
    log_n_centre: float,
    cells: Sequence[str] = (),
    strata: Sequence[str] = (),
    with_offsets: bool = True,
) -> Fitted:
    """The MAP fit of ``data`` (any size, even empty: then it is the prior).

    ``cells``/``strata`` add parameters the data may not contain (so a cell the prior file
    knows keeps its prior value); model offsets are fitted only with two or more families.
    """
    cell_names = tuple(sorted({o.cell for o in data} | set(cells) | set(centre.cells)))
    categories = tuple(sorted({c.split("/")[0] for c in cell_names}))
    stratum_names = tuple(sorted({o.stratum for o in data} | set(strata)))
    families_seen = sorted({o.family for o in data})
    families = tuple(families_seen) if with_offsets and len(families_seen) > 1 else ()

    names, prior_mean, prior_sd = _prior(centre, hyper, cell_names, stratum_names, families)
    index = {name: i for i, name in enumerate(names)}
    loc_cols, loc_vals, scale_cols, y, censored = _design(
        data, index, log_n_centre, with_offsets=bool(families)
    )
    counts: dict[str, list[int]] = {}
    for obs in data:
        for key in (obs.cell, obs.stratum, f"model:{obs.family}"):
            entry = counts.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] += int(obs.censored)
    n = len(data)

    objective = Objective(loc_cols, loc_vals, scale_cols, y, censored, prior_mean, prior_sd)
    start = prior_mean.copy()
    if n:
        start[index["level"]] += float(np.mean(y) - np.mean(objective.mu(start)))
    theta, hessian, iterations = newton(objective, start)
    cov = inverse(hessian)
    used = objective.leverage(theta, cov)
    dof: dict[str, tuple[float, float]] = {"": (float(n), float(used.sum()))}
    for i, obs in enumerate(data):
        seen, spent = dof.get(obs.cell, (0.0, 0.0))
        dof[obs.cell] = (seen + 1.0, spent + float(used[i]))
    return Fitted(
        names=tuple(names),
        theta=theta,
        cov=cov,
        precision=np.diag(hessian).copy(),
        prior_mean=prior_mean,
        prior_sd=prior_sd,
        cells=cell_names,
        categories=categories,
        strata=stratum_names,
        families=families,
        seen_families=tuple(families_seen),
        counts={k: (v[0], v[1]) for k, v in counts.items()},
        n=n,
        n_censored=int(censored.sum()),
        iterations=iterations,
        dof=dof,
    )


def empirical_scale(
    fitted: Fitted, prefix: str, current: float, low: float, high: float, parents: int
) -> float:
    """Method-of-moments estimate of a prior scale from the fitted deviations (empirical Bayes).

    For each group with data, the mode d and the *conditional* precision h (the Hessian's
    diagonal, prior included) under prior scale t give the data's own noise e² = 1/(h - 1/t²)
    and its own estimate D - m = (d - m)(t² + e²)/t². The groups' spread is then
    mean((D - m)²) x G/(G - parents) - mean(e²): deviations are measured from parents
    that were fitted to the same groups, which costs one degree of freedom per parent.
    With no real effect this goes to ``low`` and the deviations stop adding noise; with a
    real one it grows to fit it. Groups with fewer than ``MIN_EXACT`` exact phases are left
    out: a group seen only through lower bounds has a deviation but no measured noise.
    """
    t2 = current * current
    raw: list[float] = []
    noise: list[float] = []
    for i, name in enumerate(fitted.names):
        phases, censored = fitted.counts.get(name[len(prefix) :], (0, 0))
        if not name.startswith(prefix) or phases - censored < MIN_EXACT:
            continue
        data_precision = float(fitted.precision[i]) - 1.0 / t2
        if data_precision <= 1e-9:
            continue
        e2 = 1.0 / data_precision
        deviation = (float(fitted.theta[i]) - float(fitted.prior_mean[i])) * (t2 + e2) / t2
        raw.append(deviation * deviation)
        noise.append(e2)
    groups = len(raw)
    if groups - parents < 2:
        return current
    spread = float(np.mean(raw)) * groups / (groups - parents) - float(np.mean(noise))
    return min(max(math.sqrt(max(spread, 0.0)), low), high)
