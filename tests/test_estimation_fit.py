"""The censored hierarchical fit against a known truth: recover it, respect bounds, shrink.

The synthetic world: two categories x three complexities; a phase of n python files needs
median[c/k] * n ** exponent[c/k] * exp(sigma[c/k] * z) tokens. Phases are handed to the
fit as :class:`PhaseObservation` (exact, or censored at a bound when the need exceeded it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest

from autopack.estimation.build import fit_estimator
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.features import Deliverable, PhaseFeatures
from autopack.estimation.rows import PhaseObservation
from autopack.estimation.solver import Objective

PRIOR = TokenEstimator.load()
TRUTH = {  # (category, complexity): (median of one file, sigma, exponent)
    ("implementation", "low"): (1200, 0.5, 0.6),
    ("implementation", "medium"): (2000, 0.6, 0.6),
    ("implementation", "high"): (3500, 0.7, 0.6),
    ("tests", "low"): (1500, 0.5, 0.8),
    ("tests", "medium"): (2200, 0.6, 0.8),
    ("tests", "high"): (3000, 0.7, 0.8),
}
Bound = Callable[[PhaseFeatures, float], float | None]


def features(category: str, complexity: str, n: int, tag: str = "") -> PhaseFeatures:
    items = tuple(Deliverable(f"src/{tag}m{i}.py", "python", True, 0) for i in range(n))
    return PhaseFeatures(category, complexity, items)


def median(f: PhaseFeatures) -> float:
    base, _, exponent = TRUTH[(f.category, f.complexity)]
    return float(base * f.deliverable_count**exponent)


def observe(
    f: PhaseFeatures, need: float, index: int, bound: float | None = None, model: str = "m"
) -> PhaseObservation:
    cut = bound is not None and need > bound
    return PhaseObservation(
        run_id="r",
        phase_id=f"p{index}",
        features=f,
        model=model,
        value=float(bound) if cut and bound is not None else need,
        censored=cut,
        attempts=1,
        truncated_attempts=int(cut),
        first_budget=None,
        ts=datetime(2026, 1, 1, tzinfo=UTC),
        first_id=index,
    )


def world(n: int, seed: int, bound: Bound | None = None) -> list[PhaseObservation]:
    rng = np.random.default_rng(seed)
    keys = list(TRUTH)
    found = []
    for i in range(n):
        category, complexity = keys[int(rng.integers(len(keys)))]
        f = features(category, complexity, int(rng.choice([1, 2, 3, 4, 6, 8])))
        need = median(f) * math.exp(TRUTH[(category, complexity)][1] * rng.standard_normal())
        found.append(observe(f, need, i, bound(f, need) if bound else None))
    return found


def stingy(f: PhaseFeatures, need: float) -> float:
    """A budget at 1.3 x the true median: cuts off about a third of the phases."""
    return 1.3 * median(f)


def cell_error(estimator: TokenEstimator) -> tuple[float, float]:
    """Worst relative error of the median (three files) and of sigma over the cells."""
    worst_median = worst_sigma = 0.0
    for (category, complexity), (_, sigma, _) in TRUTH.items():
        f = features(category, complexity, 3)
        dist = estimator.distribution(f, "m")
        worst_median = max(worst_median, abs(dist.median / median(f) - 1))
        worst_sigma = max(worst_sigma, abs(dist.sigma / sigma - 1))
    return worst_median, worst_sigma


def test_gradient_and_hessian_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    n, p = 40, 6
    cols = rng.integers(0, p + 1, size=(n, 9))
    vals = rng.normal(size=(n, 9))
    vals[cols == p] = 0.0
    scale = np.stack([np.full(n, 4), np.full(n, 5)], axis=1)
    y = rng.normal(size=n) + 1.0
    censored = rng.random(n) < 0.4
    objective = Objective(cols, vals, scale, y, censored, np.zeros(p), np.ones(p))
    theta = rng.normal(size=p) * 0.3
    value, gradient, hessian = objective.derivatives(theta)
    assert value == pytest.approx(objective.value(theta))
    eps = 1e-6
    steps = np.eye(p) * eps
    numeric_g = [
        (objective.value(theta + e) - objective.value(theta - e)) / (2 * eps) for e in steps
    ]
    numeric_h = [
        (objective.derivatives(theta + e)[1] - objective.derivatives(theta - e)[1]) / (2 * eps)
        for e in steps
    ]
    assert np.allclose(gradient, numeric_g, atol=1e-4)
    assert np.allclose(hessian, np.array(numeric_h), atol=1e-4)


def test_recovers_a_known_truth_from_exact_phases() -> None:
    estimator = fit_estimator(world(3000, seed=1), PRIOR).estimator
    worst_median, worst_sigma = cell_error(estimator)
    assert worst_median < 0.06
    assert worst_sigma < 0.08
    pooled = estimator.to_json()["pooled"]
    assert pooled["categories"]["implementation"]["slope"] == pytest.approx(0.6, abs=0.06)
    assert pooled["categories"]["tests"]["slope"] == pytest.approx(0.8, abs=0.06)


def test_censored_phases_are_lower_bounds_trusting_or_dropping_them_fails() -> None:
    """About a third of the phases hit their budget. Treated as bounds the truth comes back;
    taken at face value, or dropped, both bias the median and the spread down."""
    data = world(3000, seed=2, bound=stingy)
    share = sum(o.censored for o in data) / len(data)
    assert 0.25 < share < 0.45
    honest = cell_error(fit_estimator(data, PRIOR).estimator)
    assert honest[0] < 0.08 and honest[1] < 0.10
    trusted = [observe(o.features, o.value, o.first_id) for o in data]
    dropped = [o for o in data if not o.censored]
    for wrong in (trusted, dropped):
        estimator = fit_estimator(wrong, PRIOR).estimator
        worst_median, worst_sigma = cell_error(estimator)
        assert worst_median > 0.10 or worst_sigma > 0.15
        f = features("implementation", "high", 3)
        assert estimator.distribution(f, "m").quantile(0.98) < 0.85 * median(f) * math.exp(
            2.054 * 0.7
        )


def test_tiny_bounds_cannot_drag_the_fit_down() -> None:
    data = world(2000, seed=3)
    rng = np.random.default_rng(4)
    keys = list(TRUTH)
    tiny = [
        observe(features(*keys[i % len(keys)], int(rng.integers(1, 5)), "t"), 1e7, 10_000 + i, 5)
        for i in range(400)
    ]
    assert all(o.censored and o.value == 5 for o in tiny)
    base = fit_estimator(data, PRIOR).estimator
    with_tiny = fit_estimator(data + tiny, PRIOR).estimator
    for category, complexity in TRUTH:
        f = features(category, complexity, 3)
        assert with_tiny.distribution(f, "m").median == pytest.approx(
            base.distribution(f, "m").median, rel=0.02
        )


def test_thin_strata_stay_with_their_cell_thick_ones_follow_their_data() -> None:
    """Shrinkage: 300 phases of a stratum that really is 1.6x the truth move its estimate
    there; two phases at 3x barely move theirs (two draws at sigma 0.5 are no evidence)."""
    data = world(1500, seed=5)
    rng = np.random.default_rng(6)
    thick, thin = features("implementation", "low", 1, "x"), features("tests", "low", 8, "y")
    extra = [
        observe(thick, 1.6 * median(thick) * math.exp(0.5 * rng.standard_normal()), 5000 + i)
        for i in range(300)
    ]
    extra += [observe(thin, 3 * median(thin), 6000 + i) for i in range(2)]
    estimator = fit_estimator(data + extra, PRIOR).estimator
    assert estimator.distribution(thick, "m").median / median(thick) == pytest.approx(1.6, rel=0.1)
    assert estimator.distribution(thin, "m").median / median(thin) < 1.3


def test_the_scale_of_stratum_shifts_is_learned_from_the_data() -> None:
    """Without stratum effects the shifts' scale goes to its floor (they add no noise); with
    a real one that no slope can express (2-5 files cost 1.5x, 1 and 6+ do not) it grows."""
    assert fit_estimator(world(1500, seed=8), PRIOR).hyper.shift == pytest.approx(0.05)
    bumped = [
        observe(o.features, o.value * (1.5 if 2 <= o.features.deliverable_count <= 5 else 1), i)
        for i, o in enumerate(world(1500, seed=8))
    ]
    outcome = fit_estimator(bumped, PRIOR)
    assert outcome.hyper.shift > 0.15
    f = features("tests", "medium", 3)
    assert outcome.estimator.distribution(f, "m").median / median(f) == pytest.approx(1.5, rel=0.1)


def test_five_thousand_phases_fit() -> None:
    """How fast is bench/estimator's business; here: a large, censored history converges."""
    outcome = fit_estimator(world(5000, seed=7, bound=stingy), PRIOR)
    f = features("tests", "medium", 3)
    assert outcome.estimator.distribution(f, "m").median / median(f) == pytest.approx(1, rel=0.2)
