"""``calibrate`` end to end on executor-shaped telemetry with a known truth.

Rows are written the way the executor writes them: the budget comes from the estimator in
use (the packaged v1 file), a truncated call is retried with the budget x 1.5 (at most
three calls), and every call is one row. The truth: lognormal output per
category/complexity cell, scaled by the deliverable count, times the model's verbosity.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from autopack.estimation.calibrate import (
    CalibrationResult,
    Holdout,
    calibrate,
    verdict,
)
from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.evaluate import Scores
from autopack.estimation.features import Deliverable, PhaseFeatures
from autopack.estimation.render import render_calibration, render_diff

PRIOR = TokenEstimator.load()
TRUTH = {  # (category, complexity): (median of one file, sigma, exponent)
    ("implementation", "low"): (2500, 0.5, 0.6),
    ("implementation", "high"): (6000, 0.7, 0.5),
    ("tests", "low"): (2200, 0.5, 0.7),
    ("tests", "high"): (4500, 0.7, 0.6),
}
OTHER = (1000, 0.5, 0.5)  # any cell outside TRUTH (drawn only when asked for)
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def telemetry(
    n: int,
    seed: int,
    *,
    model: str = "model-a",
    verbosity: float = 1.0,
    first: int = 0,
    estimator: TokenEstimator = PRIOR,
    only: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``n`` phases (numbered from ``first``, ten minutes apart) as executor rows."""
    rng = np.random.default_rng(seed)
    keys = list(TRUTH)
    rows: list[dict[str, Any]] = []
    for index in range(first, first + n):
        category, complexity = only or keys[int(rng.integers(len(keys)))]
        count = int(rng.choice([1, 2, 3, 5, 7]))
        items = tuple(Deliverable(f"src/m{index}_{j}.py", "python", True, 0) for j in range(count))
        features = PhaseFeatures(category, complexity, items)
        base, sigma, exponent = TRUTH.get((category, complexity), OTHER)
        need = verbosity * base * count**exponent * math.exp(sigma * rng.standard_normal())
        estimate = estimator.estimate(features, model_max_output=64_000, model=model)
        budget = estimate.budget
        for attempt in (1, 2, 3):
            cut = need > budget
            rows.append(
                {
                    "id": len(rows) + 1,
                    "ts": T0 + timedelta(minutes=10 * index + attempt),
                    "run_id": "run",
                    "phase_id": f"p{index}",
                    "attempt": attempt,
                    "model": model,
                    "estimator_version": estimator.version,
                    "category": category,
                    "complexity": complexity,
                    "deliverable_count": count,
                    "features": features.to_json(),
                    "predicted_output_tokens": estimate.p50,
                    "predicted_p90_tokens": estimate.p90,
                    "selected_budget": estimate.budget,
                    "budget_decided_by": estimate.decided_by,
                    "max_tokens_sent": budget,
                    "actual_output_tokens": budget if cut else round(need),
                    "truncated": cut,
                    "success": not cut,
                    "parse_success": not cut,
                }
            )
            if not cut:
                break
            budget = max(estimate.budget, min(math.ceil(budget * 1.5), 64_000))
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return telemetry(600, seed=1)


@pytest.fixture(scope="module")
def result(rows: list[dict[str, Any]]) -> CalibrationResult:
    return calibrate(rows, PRIOR, model_max_output=64_000)


def test_one_observation_per_phase_not_per_call(
    rows: list[dict[str, Any]], result: CalibrationResult
) -> None:
    phases = {r["phase_id"] for r in rows}
    retried = {r["phase_id"] for r in rows if r["attempt"] > 1}
    never_done = {r["phase_id"] for r in rows if r["attempt"] == 3 and r["truncated"]}
    assert len(rows) > len(phases) and retried  # the data really has retries
    assert result.n_phases == len(phases) == 600
    assert result.n_censored == len(never_done)
    assert result.n_exact == 600 - len(never_done)
    assert result.fitted.to_json()["data"]["phases"] == 600


def test_the_holdout_is_the_latest_phases_by_time(rows: list[dict[str, Any]]) -> None:
    """Ids in reverse order change nothing: time decides which phases are the latest."""
    reordered = [{**r, "id": 10_000 - r["id"]} for r in reversed(rows)]
    judged = calibrate(reordered, PRIOR, holdout=0.25, model_max_output=64_000).holdout
    assert judged is not None
    assert (judged.n_train, judged.n_holdout) == (450, 150)
    first_held = min(r["ts"] for r in rows if int(r["phase_id"][1:]) >= 450)
    assert judged.since == first_held.isoformat()


def test_the_time_ordered_holdout_sees_drift_that_random_folds_would_hide() -> None:
    """The model got 2.5x more verbose at phase 400 (same name). The judged fit has seen only
    the old behaviour, so the latest phases expose it; the fit on everything adapts."""
    before = telemetry(400, seed=2)
    after = telemetry(100, seed=3, verbosity=2.5, first=400)
    result = calibrate(before + after, PRIOR, holdout=0.2, model_max_output=64_000)
    judged = result.holdout
    assert judged is not None and judged.n_holdout == 100
    assert judged.new.truncation is not None and judged.new.truncation > 0.2
    assert judged.new.truncated - judged.new.undecided > 10  # surely cut, not only undecided


def test_per_model_fits_and_their_fallbacks() -> None:
    a = telemetry(300, seed=4, model="model-a-20260101")
    b = telemetry(30, seed=5, model="model-b", verbosity=2.0, first=300)
    result = calibrate(a + b, PRIOR, model_max_output=64_000, min_model_phases=50)
    assert [(m.family, m.phases, m.fit) for m in result.models] == [
        ("model-a", 300, "own fit"),
        ("model-b", 30, "pooled + model offset"),
    ]
    assert result.models[0].names == ("model-a-20260101",)
    fitted = result.fitted
    f = PhaseFeatures(
        "tests", "high", tuple(Deliverable(f"m{i}.py", "python", True, 0) for i in range(3))
    )
    est_a = fitted.estimate(f, model_max_output=64_000, model="model-a")  # alias finds it
    est_b = fitted.estimate(f, model_max_output=64_000, model="model-b")
    unseen = fitted.estimate(f, model_max_output=64_000, model="model-c")
    assert (est_a.fit, est_b.fit, unseen.fit) == (
        "model:model-a",
        "pooled:model-b",
        "pooled:unseen-model",
    )
    assert est_b.p50 / est_a.p50 == pytest.approx(2.0, rel=0.3)
    assert unseen.budget > est_a.budget  # an unknown model gets room for being different
    # With enough of its phases, a model gets its own fit.
    own = calibrate(a + b, PRIOR, model_max_output=64_000, min_model_phases=20)
    assert [m.fit for m in own.models] == ["own fit", "own fit"]
    assert own.fitted.estimate(f, model_max_output=64_000, model="model-b").fit == "model:model-b"


def _scores(n: int, truncated: int, reserved: float, undecided: int = 0) -> Scores:
    return Scores(
        n=n,
        n_censored=undecided,
        truncated=truncated,
        undecided=undecided,
        truncation=truncated / n,
        truncation_upper=None,
        over_p90=None,
        reserved_per_needed=reserved,
        waste=None,
        smape=None,
        split=0,
    )


def _held(old: Scores, new: Scores) -> Holdout:
    return Holdout(400, old.n, "2026-02-01T00:00:00+00:00", old, new, {}, {})


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (
            _scores(100, 8, 2.1),
            _scores(100, 2, 2.6),
            "write: truncation 8.0 % → 2.0 %, reservation 2.1× → 2.6× — the new estimator "
            "meets the 2 % target, the current one does not",
        ),
        (
            _scores(100, 2, 3.0),
            _scores(100, 1, 2.5),
            "write: truncation 2.0 % → 1.0 %, reservation 3.0× → 2.5× — both meet the 2 % "
            "target; the new one reserves less",
        ),
        (
            _scores(100, 1, 2.5),
            _scores(100, 2, 3.0),
            "keep: truncation 1.0 % → 2.0 %, reservation 2.5× → 3.0× — both meet the 2 % "
            "target; the new one reserves no less",
        ),
        (
            _scores(100, 2, 2.5),
            _scores(100, 9, 2.0),
            "keep: truncation 2.0 % → 9.0 %, reservation 2.5× → 2.0× — the new estimator does "
            "not meet the 2 % target and is no better",
        ),
        (
            _scores(100, 30, 1.3),
            _scores(100, 12, 4.0, undecided=10),
            "write: truncation 30.0 % → 2.0–12.0 %, reservation 1.3× → 4.0× — neither meets "
            "the 2 % target yet; the new one truncates less",
        ),
        (
            _scores(12, 3, 1.5),
            _scores(12, 0, 3.0),
            "wait: truncation 25.0 % → 0.0 %, reservation 1.5× → 3.0× — only 12 held-out "
            "phases (need 20 to judge)",
        ),
    ],
)
def test_the_verdict_line(old: Scores, new: Scores, line: str) -> None:
    found = verdict(_held(old, new), target=0.02, min_holdout=20, n_phases=500)
    assert found.line == line
    assert found.action == line.split(":", maxsplit=1)[0]


def test_calibrate_recommends_writing_an_estimator_that_fixes_truncation(
    result: CalibrationResult,
) -> None:
    judged = result.holdout
    assert judged is not None
    assert judged.old.truncation is not None and judged.old.truncation > 0.1
    assert judged.new.truncated - judged.new.undecided <= 4
    assert result.verdict.action == "write"
    assert result.verdict.line.startswith("write: truncation ")
    assert "reservation" in result.verdict.line


def test_few_phases_wait_and_keep_the_prior(rows: list[dict[str, Any]]) -> None:
    tiny = calibrate(rows[:4], PRIOR)
    assert tiny.fitted is PRIOR and not tiny.changed and tiny.diff() == ""
    assert tiny.verdict.action == "wait" and tiny.holdout is None
    empty = calibrate([], PRIOR)
    assert empty.n_phases == 0 and empty.verdict.line.startswith("wait: 0 usable phases")


def test_all_truncated_stratum_and_thin_strata_are_reported(rows: list[dict[str, Any]]) -> None:
    """A stratum seen only as bounds far above its prior moves it by many prior sds: the
    result names the stratum and the move. A stratum with two phases is listed with what
    it falls back to."""
    items = tuple(Deliverable(f"x{i}.py", "python", True, 0) for i in range(7))
    f = PhaseFeatures("implementation", "medium", items)
    bound = 120_000  # the v1 prior's p50 for this phase is ~14 000
    cut = [
        {
            **rows[0],
            "id": 50_000 + i,
            "phase_id": f"cut{i}",
            "attempt": 1,
            "features": f.to_json(),
            "deliverable_count": 7,
            "category": "implementation",
            "complexity": "medium",
            "actual_output_tokens": bound,
            "max_tokens_sent": bound,
            "truncated": True,
            "success": False,
            "parse_success": False,
        }
        for i in range(30)
    ]
    thin = [r for r in telemetry(2, seed=9, first=900, only=("docs", "low"))]
    found = calibrate(rows + cut + thin, PRIOR, model_max_output=128_000, flag_sd=3.0)
    assert found.censored_only == ("implementation/medium/6+",)
    assert any("implementation/medium" in m.name and m.z > 3 for m in found.moves)
    docs = [t for t in found.thin_strata if t.stratum.startswith("docs/low/")]
    assert docs and all(t.phases <= 2 and t.falls_back_to == "global level" for t in docs)
    text = _printed(render_calibration(found))
    assert "implementation/medium/6+" in text and "prior sd" in text and "docs/low/" in text


def _printed(renderable: Any) -> str:
    console = Console(width=250, record=True)
    console.print(renderable)
    return console.export_text()


def test_rendering_never_eats_text_in_brackets(rows: list[dict[str, Any]]) -> None:
    odd = [{**r, "model": "[bold]gpt[/bold]-x"} for r in rows[:200]]
    doc = PRIOR.to_json()
    doc["notes"] = ["[v1] see [link=x]here[/link]"]
    prior = TokenEstimator(doc)
    found = calibrate(odd, prior, model_max_output=64_000)
    text = _printed(render_calibration(found))
    assert "[bold]gpt[/bold]-x" in text
    assert found.verdict.line in text.replace("\n", " ") or found.verdict.line[:60] in text
    diff = _printed(render_diff(found))
    assert "[v1] see [link=x]here[/link]" in diff
    # The control: printed as markup (what the CLI did with the diff), the text is eaten.
    assert "[v1] see [link=x]here[/link]" not in _printed(found.diff())


def test_write_load_and_version(
    result: CalibrationResult, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    target = tmp_path / "estimator.json"
    result.write(target)
    loaded = TokenEstimator.load(target)
    assert loaded.schema == 2 and loaded.version == result.fitted.version
    assert loaded.version.startswith("v2-cal-") and len(loaded.version) <= 40
    f = PhaseFeatures("tests", "low", (Deliverable("m.py", "python", True, 0),))
    assert loaded.estimate(f, model_max_output=64_000).version == loaded.version
    assert calibrate(rows, PRIOR, model_max_output=64_000).fitted.version == loaded.version
    assert f'+  "version": "{loaded.version}",' in result.diff()
    data = json.loads(json.dumps(result.to_json()))
    assert data["verdict"]["line"] == result.verdict.line
    assert data["estimator"]["version"] == loaded.version
    assert data["holdout"]["overall"]["new"]["n"] == 120
    # Recalibrating from the written file starts from it and keeps working.
    again = calibrate(rows, loaded, model_max_output=64_000)
    assert again.prior.version == loaded.version and again.fitted.schema == 2


def test_a_target_truncation_that_is_no_probability_is_refused(
    rows: list[dict[str, Any]],
) -> None:
    with pytest.raises(ValueError, match="probability"):
        calibrate(rows, PRIOR, target_truncation=0.7)


def test_five_thousand_phases_calibrate() -> None:
    """How fast is bench/estimator's business; here: a large history fits at all."""
    found = calibrate(telemetry(5000, seed=11), PRIOR, model_max_output=64_000)
    assert found.n_phases == 5000
