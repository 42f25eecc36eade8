"""Calibration against a known ground truth: recover it, respect truncation, respect thin data.

The synthetic world: phases of three categories and three complexities with 1-3
deliverables (python / test / doc / config, new or modified, existing sizes log-uniform
0.1-8 KB). The true need of a phase is the TRUTH coefficients' p50 times lognormal noise
(sigma 0.1). The recorded ``max_tokens`` came from an older, stingier estimator (1.6 x the
prior's p50, at least 1024), so about a fifth of the calls are truncated: their recorded
``actual_output_tokens`` is the budget, a lower bound of the need.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from rich.console import Console

from autopack.estimation.calibrate import (
    CalibrationResult,
    calibrate,
    log_sf,
    normal_quantile,
    render_calibration,
)
from autopack.estimation.estimator import ParamKey, TokenEstimator
from autopack.estimation.features import Deliverable, Kind, PhaseFeatures

PRIOR = TokenEstimator.load()
SIGMA = 0.1
TRUE_P90_RATIO = math.exp(1.2815515655446004 * SIGMA)
TRUTH: dict[ParamKey, float] = {
    ("overhead", "implementation", "low"): 500,
    ("overhead", "implementation", "medium"): 900,
    ("overhead", "implementation", "high"): 1600,
    ("overhead", "tests", "low"): 400,
    ("overhead", "tests", "medium"): 700,
    ("overhead", "tests", "high"): 1200,
    ("overhead", "docs", "low"): 300,
    ("overhead", "docs", "medium"): 500,
    ("overhead", "docs", "high"): 800,
    ("marginal", "python", "new"): 2600,
    ("marginal", "python", "modify"): 600,
    ("marginal", "python", "per_kb"): 310,
    ("marginal", "test", "new"): 2000,
    ("marginal", "test", "modify"): 500,
    ("marginal", "test", "per_kb"): 180,
    ("marginal", "doc", "new"): 700,
    ("marginal", "doc", "modify"): 300,
    ("marginal", "doc", "per_kb"): 280,
    ("marginal", "config", "new"): 400,
    ("marginal", "config", "modify"): 300,
    ("marginal", "config", "per_kb"): 200,
}
TRUE_MODEL = PRIOR.with_changes(TRUTH)
KIND_MIX = {  # python, test, doc, config
    "implementation": [0.4, 0.25, 0.1, 0.25],
    "tests": [0.2, 0.6, 0.0, 0.2],
    "docs": [0.0, 0.0, 0.7, 0.3],
}
SUFFIX = {"python": ".py", "test": ".py", "doc": ".md", "config": ".toml"}


def _phase(rng: np.random.Generator, index: int) -> PhaseFeatures:
    category = str(rng.choice(list(KIND_MIX)))
    complexity = str(rng.choice(["low", "medium", "high"]))
    count = 1 if rng.random() < 0.4 else int(rng.integers(2, 4))
    items = []
    for j in range(count):
        kind = cast(Kind, str(rng.choice(list(SUFFIX), p=KIND_MIX[category])))
        is_new = bool(rng.random() < 0.5)
        size = 0 if is_new else int(math.exp(rng.uniform(math.log(100), math.log(8000))))
        folder = "tests/test_" if kind == "test" else "src/f"
        items.append(Deliverable(f"{folder}{index}_{j}{SUFFIX[kind]}", kind, is_new, size))
    return PhaseFeatures(category, complexity, tuple(items))


def _event(features: PhaseFeatures, need: float, max_tokens: int) -> dict[str, Any]:
    """A token_estimation_v2_events row as the telemetry writer would record it."""
    recorded = PRIOR.estimate(features, model_max_output=64_000)
    truncated = need > max_tokens
    return {
        "run_id": "synthetic",
        "phase_id": "p",
        "estimator_version": PRIOR.version,
        "category": features.category,
        "complexity": features.complexity,
        "deliverable_count": features.deliverable_count,
        "features": features.to_json(),
        "predicted_output_tokens": recorded.p50,
        "predicted_p90_tokens": recorded.p90,
        "selected_budget": max_tokens,
        "budget_decided_by": "estimate",
        "max_tokens_sent": max_tokens,
        "actual_output_tokens": max_tokens if truncated else max(1, round(need)),
        "truncated": truncated,
        "stop_reason": "max_tokens" if truncated else "end_turn",
        "parse_success": not truncated,
        "success": not truncated,
    }


def synthetic_events(n: int, *, seed: int = 1, sigma: float = SIGMA) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        features = _phase(rng, i)
        need = TRUE_MODEL.p50_exact(features) * math.exp(sigma * rng.standard_normal())
        stingy = max(1024, round(1.6 * PRIOR.p50_exact(features)))
        events.append(_event(features, need, stingy))
    return events


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return synthetic_events(4000)


@pytest.fixture(scope="module")
def result(events: list[dict[str, Any]]) -> CalibrationResult:
    return calibrate(events, PRIOR)


def _worst_error(estimator: TokenEstimator) -> tuple[float, ParamKey]:
    return max((abs(estimator.value(key) / value - 1), key) for key, value in TRUTH.items())


def test_the_synthetic_data_really_is_censored(events: list[dict[str, Any]]) -> None:
    rate = sum(e["truncated"] for e in events) / len(events)
    assert 0.1 < rate < 0.35
    # And the prior is really wrong, so passing the next test means learning something.
    assert max(abs(PRIOR.value(key) / value - 1) for key, value in TRUTH.items()) > 0.4


def test_recovers_the_known_coefficients_within_ten_percent(
    result: CalibrationResult, events: list[dict[str, Any]]
) -> None:
    error, key = _worst_error(result.fitted)
    assert error < 0.10, f"{key}: fitted {result.fitted.value(key)} vs true {TRUTH[key]}"
    assert result.sigma == pytest.approx(SIGMA, rel=0.10)
    assert result.fitted.p90_default == pytest.approx(TRUE_P90_RATIO, rel=0.10)
    assert len(result.fitted.p90_strata) == 18  # 3 categories x 3 complexities x 2 buckets
    for stratum, ratio in result.fitted.p90_strata.items():
        assert ratio == pytest.approx(TRUE_P90_RATIO, rel=0.10), stratum
    assert result.n_events == 4000
    assert result.n_censored == sum(e["truncated"] for e in events)
    assert result.fitted.version.startswith("v1-cal-")
    # Untouched by data: no sql/frontend/other deliverables, no other categories.
    for key in [("marginal", "sql", "new"), ("overhead", "bugfix", "low")]:
        assert result.fitted.value(key) == PRIOR.value(key)


def test_trusting_or_dropping_truncated_rows_fails_the_same_check(
    events: list[dict[str, Any]],
) -> None:
    """The controls: the recovery test can fail, and does when censoring is mishandled.

    Truncation hits the phases whose need is largest relative to the recorded budget;
    taking the bound as the answer, or ignoring those rows, both bias the fit down.
    """
    trusted = [{**e, "truncated": False, "success": True} for e in events]
    dropped = [e for e in events if not e["truncated"]]
    for rows in (trusted, dropped):
        fitted = calibrate(rows, PRIOR, folds=1).fitted
        error, key = _worst_error(fitted)
        assert error > 0.10
        assert fitted.value(key) < TRUTH[key]


def test_tiny_truncated_rows_cannot_drag_the_fit_down(events: list[dict[str, Any]]) -> None:
    rng = np.random.default_rng(7)
    tiny = []
    for i in range(600):
        features = _phase(rng, 100_000 + i)
        row = _event(features, need=10_000_000, max_tokens=5)  # cut off after 5 tokens
        assert row["truncated"] and row["actual_output_tokens"] == 5
        tiny.append(row)
    base = calibrate(events, PRIOR, folds=1).fitted
    with_tiny = calibrate(events + tiny, PRIOR, folds=1)
    for key in TRUTH:
        assert with_tiny.fitted.value(key) == pytest.approx(base.value(key), rel=0.01), key
    assert _worst_error(with_tiny.fitted)[0] < 0.10
    assert with_tiny.n_censored == sum(e["truncated"] for e in events) + 600
    # Had they been taken as exact 5-token answers, the fit would collapse.
    as_exact = [{**row, "truncated": False, "success": True} for row in tiny]
    dragged = calibrate(events + as_exact, PRIOR, folds=1).fitted
    assert dragged.value(("marginal", "python", "new")) < 0.5 * base.value(
        ("marginal", "python", "new")
    )


def _single_module_events(values: list[tuple[float, bool]]) -> list[dict[str, Any]]:
    features = PhaseFeatures(
        "implementation", "medium", (Deliverable("src/a.py", "python", True, 0),)
    )
    return [
        _event(features, need=math.inf, max_tokens=round(value))
        if truncated
        else _event(features, need=value, max_tokens=100_000)
        for value, truncated in values
    ]


def test_truncated_rows_can_only_push_estimates_up() -> None:
    prior_p50 = PRIOR.p50_exact(
        PhaseFeatures("implementation", "medium", (Deliverable("a.py", "python", True, 0),))
    )
    exact = [(prior_p50 * f, False) for f in (0.8, 0.9, 1.0, 1.0, 1.1, 1.2, 0.95, 1.05)]

    def fitted_p50(rows: list[tuple[float, bool]]) -> float:
        fitted = calibrate(_single_module_events(rows), PRIOR, folds=1).fitted
        return fitted.p50_exact(
            PhaseFeatures("implementation", "medium", (Deliverable("a.py", "python", True, 0),))
        )

    alone = fitted_p50(exact)
    assert alone == pytest.approx(prior_p50, rel=0.05)
    high_bounds = fitted_p50(exact + [(prior_p50 * 3, True)] * 4)
    low_bounds = fitted_p50(exact + [(prior_p50 * 0.1, True)] * 4)
    assert high_bounds > alone * 1.1
    assert low_bounds == pytest.approx(alone, rel=0.01)


def test_two_samples_leave_the_prior_alone(events: list[dict[str, Any]]) -> None:
    result = calibrate(events[:2], PRIOR)
    assert result.n_events == 2
    assert not result.changed
    assert result.fitted.to_json() == PRIOR.to_json()
    assert result.fitted.version == PRIOR.version
    assert result.changes == ()
    assert result.diff() == ""
    assert result.overall is not None  # 2-fold cross-validation still reports
    assert result.overall.before == result.overall.after


def test_thin_coefficients_keep_their_prior(events: list[dict[str, Any]]) -> None:
    sql = Deliverable("db/schema.sql", "sql", True, 0)
    extra = []
    for i in range(3):
        features = PhaseFeatures("implementation", "low", (sql,))
        extra.append(_event(features, need=5000 + i, max_tokens=20_000))
    result = calibrate(events[:400] + extra, PRIOR, folds=1)
    assert result.fitted.value(("marginal", "sql", "new")) == PRIOR.value(
        ("marginal", "sql", "new")
    )
    assert result.fitted.value(("marginal", "python", "new")) != PRIOR.value(
        ("marginal", "python", "new")
    )
    names = {change.name for change in result.changes}
    assert "marginal.sql.new" not in names
    assert "marginal.python.new" in names
    change = next(c for c in result.changes if c.name == "marginal.python.new")
    assert change.before == 1800
    assert change.support >= 5


def test_held_out_before_vs_after(result: CalibrationResult) -> None:
    overall = result.overall
    assert overall is not None
    assert result.folds == 5
    before, after = overall.before, overall.after
    assert before.n == after.n == 4000
    assert before.n_censored == result.n_censored
    # The prior underestimates most phases; the refit does so far less, even in its worst case.
    assert before.underestimation_rate_best is not None
    assert after.underestimation_rate is not None
    assert after.underestimation_rate < before.underestimation_rate_best
    # Truncated rows leave coverage as an interval; the refit targets 0.9 inside it.
    assert after.p90_coverage is not None and after.p90_coverage_best is not None
    assert after.p90_coverage <= 0.9 <= after.p90_coverage_best
    assert after.smape_mean is not None and before.smape_mean is not None
    assert after.smape_mean < before.smape_mean
    assert after.waste_p50 is not None and before.waste_p50 is not None
    assert after.waste_p50 < before.waste_p50
    assert sum(row.before.n for row in result.strata) == 4000
    assert len(result.strata) == 18
    assert all(row.before.n == row.after.n > 0 for row in result.strata)


def test_patch_write_and_json(
    result: CalibrationResult, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    patch = result.diff("a/coefficients-v1.json", "b/coefficients-v1.json")
    assert patch.startswith("--- a/coefficients-v1.json\n+++ b/coefficients-v1.json\n")
    assert '-  "version": "v1",' in patch
    assert f'+  "version": "{result.fitted.version}",' in patch
    assert '-      "new": 1800,' in patch  # the python prior
    target = tmp_path / "coefficients.json"
    result.write(target)
    loaded = TokenEstimator.load(target)
    assert loaded.to_json() == result.fitted.to_json()
    # The same data give the same version (content-addressed), so reruns are recognisable.
    assert calibrate(events, PRIOR, folds=1).fitted.version == loaded.version
    data = json.loads(json.dumps(result.to_json()))
    assert data["n_events"] == 4000
    assert data["overall"]["after"]["n"] == 4000
    assert data["coefficients"]["version"] == loaded.version


def test_render(result: CalibrationResult) -> None:
    console = Console(width=220, record=True)
    console.print(render_calibration(result))
    text = console.export_text()
    assert "marginal.python.new" in text
    assert "p90_ratio.default" in text
    assert "overall" in text
    assert "4000 usable events" in text


def test_events_calibration_cannot_use_are_counted() -> None:
    features = PhaseFeatures("docs", "low", (Deliverable("README.md", "doc", True, 0),))
    good = _event(features, need=900, max_tokens=4000)
    rows = [
        good,
        {**good, "actual_output_tokens": None},
        {**good, "success": False, "parse_success": False},
        {**good, "success": None, "parse_success": None},
        {**good, "features": {}},
        {**good, "success": None, "parse_success": True},
    ]
    result = calibrate(rows, PRIOR)
    assert result.n_events == 2
    assert result.skipped == {"no_actual_tokens": 1, "no_features": 1, "not_successful": 2}


def test_normal_tail_is_accurate_far_out() -> None:
    z = np.array([-8.0, -1.0, 0.0, 1.2815515655446004, 5.0, 20.0, 40.0])
    expected = [math.log(0.5 * math.erfc(v / math.sqrt(2))) for v in z[:-1]]
    expected.append(-0.5 * 40.0**2 - math.log(40.0) - 0.5 * math.log(2 * math.pi))
    assert np.allclose(log_sf(z), expected, rtol=1e-6, atol=1e-9)
    assert normal_quantile(0.9) == pytest.approx(1.2815515655446004, abs=1e-6)


def test_target_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="probability"):
        calibrate([], PRIOR, target=1.5)
