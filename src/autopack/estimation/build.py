"""From phase observations to a schema-2 estimator file: priors, the fits, the document.

* **Prior centres** come from the current estimator (:func:`prior_centre`), so thin data
  stay near what was deployed rather than near zero.
* **Pooled fit** over every model family (with a per-family offset when there are two or
  more), its prior scales for stratum shifts, cell slopes and cell spreads re-estimated
  from the data (empirical Bayes, a few passes).
* **Per-family fits** for families with at least ``min_model_phases`` phases, centred on
  the pooled fit plus the family's offset and inheriting its uncertainty; smaller families
  use the pooled fit with their offset, unseen ones the pooled fit with the model spread.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.features import TOKENS_MAX, Deliverable, Kind, PhaseFeatures
from autopack.estimation.fit import PER_MODEL, POOLED, Centre, Fitted, Hyper, empirical_scale, fit
from autopack.estimation.rows import PhaseObservation

DEFAULT_TARGET = 0.02
DEFAULT_MARGIN_SD = 0.5
"""Standard errors of the budget quantile added to it (docs/ESTIMATOR_BENCHMARK.md: at 500
phases 0 gives 2.2 % truncation with the worst stratum near 7 %, 0.5 gives 1.6 % and 6 %,
for 12 % more reserved tokens than the oracle instead of 3 %)."""
MIN_MODEL_PHASES = 50
FLOOR = 512
LOG_N_CENTRE = 1.0986  # log 3: intercepts describe a typical three-deliverable phase
EMPIRICAL_SCALES = {  # Hyper field: (parameter prefix, lowest, highest scale, parents)
    "shift": ("shift:", 0.05, 0.5),
    "cell_slope": ("slope:", 0.03, 0.4),
    "cell_sigma": ("sigma:", 0.1, 0.4),
}
_TYPICAL_KIND: dict[str, Kind] = {"tests": "test", "docs": "doc", "config": "config"}


def prior_centre(prior: TokenEstimator) -> Centre:
    """Where the fit starts from: the current estimator, translated to the log-linear model.

    A schema-1 file's cells are its p50 for three new files of the category's typical kind;
    its slope is d log p50 / d log n between one and three files; its spread is the one its
    p90 ratio implies. A schema-2 file's pooled fit is used as is.
    """
    if prior.predictive is not None:
        pooled = prior.predictive.pooled
        return Centre(
            level=pooled.glob.intercept,
            slope=pooled.glob.slope,
            log_sigma=math.log(pooled.glob.sigma),
            cells={k: c.intercept for k, c in pooled.cells.items()},
            category_slopes={k: s for k, (s, _) in pooled.slopes.items()},
            cell_log_sigma={k: math.log(c.sigma) for k, c in pooled.cells.items()},
            cell_slopes={k: c.slope for k, c in pooled.cells.items()},
            shifts={k: s.shift for k, s in pooled.strata.items()},
            size=pooled.size,
        )
    linear = prior.linear
    assert linear is not None

    def log_p50(category: str, complexity: str, count: int) -> float:
        kind = _TYPICAL_KIND.get(category, "python")
        items = tuple(Deliverable(f"f{i}", kind, True, 0) for i in range(count))
        p50 = linear.p50_exact(PhaseFeatures(category, complexity, items))
        # a file the loader accepts may predict more than any row can record (margin 1e308:
        # inf, and slope inf - inf = nan): the centre is what its budgets are capped to
        return math.log(min(max(p50, 1.0), TOKENS_MAX))

    table: dict[str, dict[str, float]] = linear.to_json()["overhead"]
    cells = {
        f"{category}/{complexity}": log_p50(category, complexity, 3)
        for category, row in table.items()
        if category != "*"
        for complexity in row
    }
    return Centre(
        level=log_p50("*", "medium", 3),
        slope=(log_p50("*", "medium", 3) - log_p50("*", "medium", 1)) / math.log(3),
        log_sigma=math.log(linear.sigma("")),
        cells=cells,
    )


def model_centre(pooled: Fitted, family: str) -> Centre:
    """A family's own fit starts at the pooled fit plus its offset, inheriting its doubt."""
    params = pooled.params()
    known = params.offsets.get(family)
    offset = known.offset if known is not None else 0.0
    extra = {n: float(pooled.cov[i, i]) for i, n in enumerate(pooled.names)}
    extra["level"] = extra.get("level", 0.0) + (known.var if known is not None else 0.0)
    return Centre(
        level=params.glob.intercept + offset,
        slope=params.glob.slope,
        log_sigma=math.log(params.glob.sigma),
        cells={k: c.intercept + offset for k, c in params.cells.items()},
        category_slopes={k: s for k, (s, _) in params.slopes.items()},
        cell_log_sigma={k: math.log(c.sigma) for k, c in params.cells.items()},
        cell_slopes={k: c.slope for k, c in params.cells.items()},
        shifts={k: s.shift for k, s in params.strata.items()},
        size=params.size,
        extra_var=extra,
    )


@dataclass(frozen=True)
class FitOutcome:
    estimator: TokenEstimator
    pooled: Fitted
    per_model: dict[str, Fitted]
    hyper: Hyper


def _pooled(data: Sequence[PhaseObservation], centre: Centre) -> tuple[Fitted, Hyper]:
    """The pooled fit, its scales re-estimated from the data until they settle."""
    hyper = POOLED
    pooled = fit(data, centre, hyper, log_n_centre=LOG_N_CENTRE)
    cells = {o.cell for o in data}
    parents = {  # groups the deviations are measured from (only those with data count)
        "shift": len(cells),
        "cell_slope": len({c.split("/")[0] for c in cells}),
        "cell_sigma": 1,
    }
    for _ in range(5):
        scales = {
            name: empirical_scale(pooled, prefix, getattr(hyper, name), low, high, parents[name])
            for name, (prefix, low, high) in EMPIRICAL_SCALES.items()
        }
        if all(abs(v - getattr(hyper, k)) < 0.005 for k, v in scales.items()):
            break
        hyper = replace(hyper, **scales)
        pooled = fit(data, centre, hyper, log_n_centre=LOG_N_CENTRE)
    return pooled, hyper


def fit_estimator(
    data: Sequence[PhaseObservation],
    prior: TokenEstimator,
    *,
    target_truncation: float = DEFAULT_TARGET,
    margin_sd: float = DEFAULT_MARGIN_SD,
    min_model_phases: int = MIN_MODEL_PHASES,
) -> FitOutcome:
    """The schema-2 estimator fitted to ``data`` (pooled, plus own fits for big families)."""
    pooled, hyper = _pooled(data, prior_centre(prior))
    families: dict[str, list[PhaseObservation]] = {}
    for obs in data:
        families.setdefault(obs.family, []).append(obs)
    own_hyper = replace(
        PER_MODEL, **{k: min(getattr(PER_MODEL, k), getattr(hyper, k)) for k in EMPIRICAL_SCALES}
    )
    per_model = {
        family: fit(
            rows,
            model_centre(pooled, family),
            own_hyper,
            log_n_centre=LOG_N_CENTRE,
            cells=pooled.cells,
            strata=pooled.strata,
            with_offsets=False,
        )
        for family, rows in sorted(families.items())
        if len(families) > 1 and len(rows) >= min_model_phases
    }
    stamps = [o.ts for o in data]
    doc: dict[str, Any] = {
        "schema": 2,
        "version": "pending",
        "notes": [
            "Predictive token estimator (autopack.estimation.predictive): log tokens ~ "
            "Normal(mu, sd) per call; budget = the (1 - target_truncation) quantile "
            "plus margin_sd standard errors of it.",
            "Written by `autopack telemetry calibrate --write`; data, not code.",
        ],
        "prior_version": prior.version,
        "target_truncation": target_truncation,
        "margin_sd": margin_sd,
        "floor": FLOOR,
        "log_n_centre": LOG_N_CENTRE,
        "fallback_sd": {
            "cell": hyper.cell,
            "shift": round(hyper.shift, 4),
            "category_slope": hyper.category_slope,
            "cell_slope": round(hyper.cell_slope, 4),
            "model": hyper.model,
            "cell_sigma": round(hyper.cell_sigma, 4),
        },
        "data": {
            "phases": len(data),
            "censored": sum(o.censored for o in data),
            "from": min(stamps).isoformat() if stamps else None,
            "to": max(stamps).isoformat() if stamps else None,
            "models": {f: len(rows) for f, rows in sorted(families.items())},
        },
        "pooled": pooled.params().to_json(),
        "models": {f: m.params().to_json() for f, m in per_model.items()},
    }
    content = TokenEstimator(doc, source="<calibrated>", clamp=True).dumps()
    doc["version"] = "v2-cal-" + hashlib.sha256(content.encode()).hexdigest()[:8]
    return FitOutcome(TokenEstimator(doc, source="<calibrated>"), pooled, per_model, hyper)
