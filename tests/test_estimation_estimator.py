"""The estimator's arithmetic on a coefficients file with round numbers, and the packaged priors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autopack.errors import ConfigError, InvalidInput
from autopack.estimation.estimator import Estimate, TokenEstimator
from autopack.estimation.features import KINDS, Deliverable, PhaseFeatures, extract_features


def _coefficients(**changes: Any) -> dict[str, Any]:
    marginal = {kind: {"new": 100, "modify": 50, "per_kb": 10} for kind in KINDS}
    marginal["python"] = {"new": 1000, "modify": 200, "per_kb": 100}
    marginal["test"] = {"new": 800, "modify": 150, "per_kb": 80}
    doc: dict[str, Any] = {
        "version": "test-1",
        "margin": 1.5,
        "buffer": 1.25,
        "floor": 1000,
        "p90_ratio": {"default": 2.0, "strata": {"tests/high/2-5": 3.0}},
        "overhead": {
            "*": {"low": 10, "medium": 20, "high": 40},
            "implementation": {"low": 100, "medium": 200, "high": 400},
            "tests": {"high": 300},
        },
        "marginal": marginal,
    }
    doc.update(changes)
    return doc


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "coefficients.json"
    path.write_text(json.dumps(doc))
    return path


def _features(category: str, complexity: str, *items: Deliverable) -> PhaseFeatures:
    return PhaseFeatures(category, complexity, tuple(items))


PY_NEW = Deliverable("src/a.py", "python", True, 0)
PY_MOD = Deliverable("src/b.py", "python", False, 2048)
TEST_NEW = Deliverable("tests/test_a.py", "test", True, 0)


def test_estimate_by_hand_from_an_override_file(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients()))
    assert estimator.version == "test-1"
    features = _features("implementation", "medium", PY_NEW, PY_MOD, TEST_NEW)
    # (200 + 1000 + (200 + 100 * 2 KB) + 800) * 1.5 = 3600; p90 = 7200; budget = 9000
    assert estimator.estimate(features, model_max_output=100_000) == Estimate(
        p50=3600, p90=7200, budget=9000, decided_by="estimate", version="test-1", wanted=9000
    )


def test_stratum_p90_ratio_and_overhead_fallbacks(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients()))
    # tests/high has its own overhead (300) and its own p90 ratio for 2-5 deliverables (3.0).
    tests_high = _features(
        "Tests", "HIGH", TEST_NEW, Deliverable("tests/test_b.py", "test", True, 0)
    )
    assert estimator.estimate(tests_high, model_max_output=100_000).p50 == (300 + 1600) * 1.5
    assert estimator.estimate(tests_high, model_max_output=100_000).p90 == 2850 * 3
    # tests/low is missing: falls back to the '*' row (10).
    tests_low = _features("tests", "low", TEST_NEW)
    assert estimator.estimate(tests_low, model_max_output=100_000).p50 == (10 + 800) * 1.5
    # Unknown category and unknown complexity: '*' row, then its 'medium' (20).
    odd = _features("research", "extreme", PY_NEW)
    assert estimator.estimate(odd, model_max_output=100_000).p50 == (20 + 1000) * 1.5


def test_budget_clamp_says_which_bound_decided(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients()))
    tiny = _features("implementation", "low", Deliverable("x.cfg", "config", True, 0))
    # (100 + 100) * 1.5 = 300; p90 600; 600 * 1.25 = 750 < floor 1000
    floor = estimator.estimate(tiny, model_max_output=100_000)
    assert (floor.p50, floor.p90, floor.budget, floor.decided_by) == (300, 600, 1000, "floor")
    big = _features("implementation", "high", PY_NEW, PY_NEW, PY_NEW, PY_NEW)
    # (400 + 4000) * 1.5 = 6600; p90 13200; wanted 16500 > ceiling 8192
    ceiling = estimator.estimate(big, model_max_output=8192)
    assert (ceiling.budget, ceiling.decided_by) == (8192, "ceiling")
    # A floor above the model's maximum loses to the maximum.
    assert estimator.estimate(tiny, model_max_output=512).budget == 512
    assert estimator.estimate(tiny, model_max_output=512).decided_by == "ceiling"
    exact = estimator.estimate(big, model_max_output=16500)
    assert (exact.budget, exact.decided_by) == (16500, "estimate")
    with pytest.raises(InvalidInput):
        estimator.estimate(tiny, model_max_output=0)


def test_design_row_matches_the_prediction(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients()))
    features = _features("implementation", "medium", PY_NEW, PY_MOD, TEST_NEW)
    assert estimator.linear is not None
    assert estimator.linear.design(features) == {
        ("overhead", "implementation", "medium"): 1.0,
        ("marginal", "python", "new"): 1.0,
        ("marginal", "python", "modify"): 1.0,
        ("marginal", "python", "per_kb"): 2.0,
        ("marginal", "test", "new"): 1.0,
    }


def test_packaged_priors_are_realistic() -> None:
    estimator = TokenEstimator.load()
    assert estimator.version == "v1"
    assert estimator.source == "package:coefficients-v1.json"
    one_module = extract_features("implementation", "medium", ["src/pkg/util.py"], None)
    estimate = estimator.estimate(one_module, model_max_output=64_000)
    assert 1_000 <= estimate.p50 <= 5_000
    assert estimate.p50 < estimate.p90 <= estimate.budget <= 64_000
    readme = extract_features("docs", "low", ["README.md"], None)
    assert estimator.estimate(readme, model_max_output=64_000).p50 < estimate.p50
    module_and_tests = extract_features(
        "implementation", "high", ["src/a.py", "tests/test_a.py", "docs/a.md"], None
    )
    assert estimator.estimate(module_and_tests, model_max_output=64_000).p50 > estimate.p50
    # The file text is exactly what dumps() writes, so a calibration diff shows only numbers.
    packaged = Path(__file__).parents[1] / "src/autopack/data/estimator/coefficients-v1.json"
    assert packaged.read_text() == estimator.dumps()


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    estimator = TokenEstimator.load()
    assert estimator.linear is not None
    changed = estimator.linear.with_changes(
        {("marginal", "python", "new"): 2222.0, ("overhead", "research", "low"): 99.0},
        p90_strata={"research/low/1": 1.5},
        version="v1-custom",
    )
    target = tmp_path / "out.json"
    target.write_text(changed.dumps())
    loaded = TokenEstimator.load(target).linear
    assert loaded is not None
    assert loaded.version == "v1-custom"
    assert loaded.value(("marginal", "python", "new")) == 2222
    assert loaded.value(("overhead", "research", "low")) == 99
    # research/medium is still unknown: falls back to the '*' row, not to research/low.
    assert loaded.value(("overhead", "research", "medium")) == estimator.linear.value(
        ("overhead", "*", "medium")
    )
    assert loaded.p90_ratio("research/low/1") == 1.5
    assert loaded.to_json() == changed.to_json()
    assert estimator.linear.value(("marginal", "python", "new")) == 1800  # untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": ""}, "version"),
        ({"margin": -1}, "margin"),
        ({"floor": "big"}, "floor"),
        ({"buffer": 0.5}, "buffer"),
        ({"p90_ratio": {"default": 0.9, "strata": {}}}, "p90_ratio.default"),
        ({"p90_ratio": {"default": 2, "strata": {"a/b/1": True}}}, "a/b/1"),
        ({"overhead": {"implementation": {"low": 1}}}, "'*' row"),
        ({"overhead": {"*": {"low": 1, "medium": 2}}}, "'high'"),
        ({"marginal": {"python": {"new": 1, "modify": 1, "per_kb": 1}}}, "kind 'test'"),
    ],
)
def test_bad_coefficient_files_are_refused_with_the_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        TokenEstimator.load(_write(tmp_path, _coefficients(**change)))
    assert str(tmp_path / "coefficients.json") in str(raised.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TokenEstimator.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TokenEstimator.load(broken)
    broken.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        TokenEstimator.load(broken)


def test_importing_estimation_touches_no_file_and_skips_matplotlib() -> None:
    code = (
        "import sys, builtins\n"
        "opened = []\n"
        "real = builtins.open\n"
        "builtins.open = lambda *a, **k: (opened.append(a[0]), real(*a, **k))[1]\n"
        "import autopack.estimation.calibrate, autopack.estimation.report\n"
        "import autopack.estimation.render, autopack.estimation.plot\n"
        "print('matplotlib' in sys.modules, opened)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False []"


def test_budget_is_never_below_p90(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients(buffer=1.0, floor=1)))
    features = _features("implementation", "low", Deliverable("a.sql", "sql", True, 0))
    estimate = estimator.estimate(features, model_max_output=100_000)
    assert estimate.budget == estimate.p90 == math.ceil((100 + 100) * 1.5 * 2.0)


# -- schema 2: the predictive estimator -----------------------------------------------------

Z90, Z98 = 1.2815515655446004, 2.0537489106318225


def _cell(intercept: float, sigma: float, slope: float = 0.5, phases: int = 50) -> dict[str, Any]:
    return {
        "intercept": intercept,
        "slope": slope,
        "sigma": sigma,
        "log_sigma_var": 0.0,
        "cov": [0.0] * 10,
        "phases": phases,
    }


def _predictive(**changes: Any) -> dict[str, Any]:
    """A schema-2 file with round numbers and no estimation uncertainty (cov 0)."""
    pooled = {
        "phases": 60,
        "censored": 0,
        "global": {**_cell(math.log(1000), 0.5), "slope_var": 0.0},
        "size": {"modified_share": 0.0, "existing_kb": 0.0},
        "categories": {"implementation": {"slope": 0.5, "slope_var": 0.0}},
        "cells": {"implementation/high": _cell(math.log(2000), 0.6)},
        "strata": {
            "implementation/high/1": {"shift": 0.1, "cov": [0.0] * 10, "phases": 20, "censored": 0}
        },
        "model_offsets": {
            "model-a": {"offset": 0.0, "var": 0.0, "cov": [0.0] * 4, "phases": 50},
            "model-b": {"offset": math.log(2), "var": 0.0, "cov": [0.0] * 4, "phases": 10},
        },
    }
    doc: dict[str, Any] = {
        "schema": 2,
        "version": "test-2",
        "target_truncation": 0.02,
        "margin_sd": 0.0,
        "floor": 100,
        "log_n_centre": 0.0,
        "fallback_sd": {
            "cell": 0.5,
            "shift": 0.2,
            "category_slope": 0.25,
            "cell_slope": 0.1,
            "model": 0.35,
            "cell_sigma": 0.2,
        },
        "pooled": pooled,
        "models": {},
    }
    doc.update(changes)
    return doc


def test_predictive_budget_is_the_target_quantile_by_hand(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _predictive()))
    assert (estimator.schema, estimator.version, estimator.target_truncation) == (2, "test-2", 0.02)
    one = _features("implementation", "high", PY_NEW)
    mu = math.log(2000) + 0.1  # cell intercept + stratum shift; log n = 0 at one file
    estimate = estimator.estimate(one, model_max_output=100_000, model="model-a")
    assert estimate.p50 == round(math.exp(mu))
    assert estimate.p90 == round(math.exp(mu + Z90 * 0.6))
    assert estimate.budget == math.ceil(math.exp(mu + Z98 * 0.6))
    assert (estimate.quantile, estimate.fit, estimate.decided_by) == (
        0.98,
        "pooled:model-a",
        "estimate",
    )
    assert not estimate.exceeds_model_max
    # Three files, no stratum fitted for 2-5: cell level, slope 0.5, the shift's prior spread.
    three = _features("implementation", "high", PY_NEW, PY_MOD, TEST_NEW)
    dist = estimator.distribution(three, "model-a")
    assert dist.level == "cell"
    assert dist.mu == pytest.approx(math.log(2000) + 0.5 * math.log(3))
    assert dist.sd == pytest.approx(math.sqrt(0.6**2 + 0.2**2))
    # A category it never saw: global level and slope, spread widened by every fallback.
    odd = estimator.distribution(_features("research", "low", PY_NEW, PY_NEW), "model-a")
    assert odd.level == "global"
    assert odd.mu == pytest.approx(math.log(1000) + 0.5 * math.log(2))
    spread = 0.5**2 + 0.2**2 + (0.1**2 + 0.25**2) * math.log(2) ** 2
    assert odd.sd == pytest.approx(math.sqrt(0.5**2 + spread))


def test_model_families_offsets_and_unseen_models(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _predictive()))
    one = _features("implementation", "high", PY_NEW)
    a = estimator.estimate(one, model_max_output=100_000, model="model-a-20260101")
    b = estimator.estimate(one, model_max_output=100_000, model="Model-B")
    assert (a.fit, b.fit) == ("pooled:model-a", "pooled:model-b")  # dated id, case: same family
    assert b.p50 == pytest.approx(2 * a.p50, abs=1)
    unseen = estimator.distribution(one, "model-z")
    known = estimator.distribution(one, "model-a")
    assert unseen.fit == "pooled:unseen-model"
    assert unseen.mu == known.mu and unseen.sd == pytest.approx(math.sqrt(0.6**2 + 0.35**2))
    assert estimator.estimate(one, model_max_output=100_000).fit == "pooled"
    # A family with its own fit uses it, not the pooled parameters.
    own = _predictive()
    own["models"] = {
        "model-a": {**own["pooled"], "cells": {"implementation/high": _cell(9.0, 0.4)}}
    }
    mine = TokenEstimator(own).distribution(one, "model-a-20260101")
    assert (mine.fit, mine.sigma) == ("model:model-a", 0.4)


def test_budget_above_the_model_maximum_says_split(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _predictive()))
    one = _features("implementation", "high", PY_NEW)
    free = estimator.estimate(one, model_max_output=100_000)
    capped = estimator.estimate(one, model_max_output=free.budget - 1)
    assert (capped.budget, capped.decided_by, capped.wanted) == (
        free.budget - 1,
        "ceiling",
        free.budget,
    )
    assert capped.exceeds_model_max and not free.exceeds_model_max
    assert capped.p50 == free.p50 and capped.p90 == free.p90  # p50/p90 stay what they say
    floor = TokenEstimator(_predictive(floor=50_000)).estimate(one, model_max_output=100_000)
    assert (floor.budget, floor.decided_by, floor.exceeds_model_max) == (50_000, "floor", False)


def test_target_and_margin_move_the_budget(tmp_path: Path) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _predictive()))
    one = _features("implementation", "high", PY_NEW)
    loose = estimator.estimate(one, model_max_output=100_000, target_truncation=0.1)
    assert loose.budget == loose.p90 and loose.quantile == 0.9
    with pytest.raises(InvalidInput):
        estimator.estimate(one, model_max_output=100_000, target_truncation=0.7)
    # margin_sd adds that many standard errors of the quantile (here: of mu, 0.2).
    uncertain = _predictive(margin_sd=1.0)
    uncertain["pooled"]["strata"]["implementation/high/1"]["cov"] = [0.04] + [0.0] * 9
    est = TokenEstimator(uncertain).estimate(one, model_max_output=100_000)
    mu, sd = math.log(2000) + 0.1, math.sqrt(0.6**2 + 0.04)
    assert est.budget == math.ceil(math.exp(mu + Z98 * sd + 0.2))
    # A schema-1 file with an explicit target uses the lognormal its p90 ratio implies.
    v1 = TokenEstimator.load(_write(tmp_path, _coefficients()))
    by_target = v1.estimate(one, model_max_output=100_000, target_truncation=0.1)
    assert by_target.budget == pytest.approx(by_target.p90, abs=1)  # the 0.9 quantile is p90


def test_predictive_file_round_trips_one_line_per_stratum(tmp_path: Path) -> None:
    estimator = TokenEstimator(_predictive())
    target = tmp_path / "estimator.json"
    estimator.write(target)
    text = target.read_text()
    assert '"implementation/high/1": {"shift": 0.1' in text  # one line: diffs show what moved
    loaded = TokenEstimator.load(target)
    assert loaded.to_json() == estimator.to_json() and loaded.version == "test-2"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("version",), "", "version"),
        (("target_truncation",), 0.9, "target_truncation"),
        (("fallback_sd", "model"), -1, "fallback_sd.model"),
        (("pooled", "cells", "implementation/high", "sigma"), 0, "cells.implementation/high.sigma"),
        (("pooled", "strata", "implementation/high/1", "cov"), [0.0] * 9, "cov must be a list"),
        (("pooled", "model_offsets", "model-a", "cov"), [], "model-a.cov"),
        (("schema",), 3, "unknown schema"),
        (("schema",), True, "unknown schema true"),  # true == 1: loaded as schema 1
        (("schema",), 2.0, "unknown schema 2.0"),
    ],
)
def test_bad_predictive_files_are_refused_with_the_field(
    tmp_path: Path, path: tuple[str, ...], value: Any, message: str
) -> None:
    doc = _predictive()
    where = doc
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        TokenEstimator.load(_write(tmp_path, doc))


HUGE_OVERHEAD = {"*": dict.fromkeys(("low", "medium", "high"), 1e300)}


@pytest.mark.parametrize(
    "changes", [{"margin": 1e308}, {"buffer": 1e308}, {"overhead": HUGE_OVERHEAD}]
)
def test_absurd_coefficients_give_counts_a_row_holds_not_an_overflow(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    estimator = TokenEstimator.load(_write(tmp_path, _coefficients(**changes)))
    features = _features("docs", "low", PY_NEW, PY_MOD)
    for target in (None, 0.02):
        estimate = estimator.estimate(features, model_max_output=8192, target_truncation=target)
        assert 1 <= estimate.p50 <= estimate.p90 <= estimate.wanted <= 2**31 - 1
        assert 1 <= estimate.budget <= 8192


def test_unreadable_encodings_and_nesting_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_bytes(b'{"version": "\xff"}')
    with pytest.raises(ConfigError, match="cannot read estimator file"):
        TokenEstimator.load(broken)
    broken.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="not valid JSON"):
        TokenEstimator.load(broken)
