"""Metrics and the accuracy report on a small data set whose numbers are computed by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console

from autopack.estimation.metrics import (
    EventMetrics,
    event_metrics,
    km_quantile,
    p50,
    p90,
    quantile,
    smape,
    underestimated,
    waste_ratio,
)
from autopack.estimation.render import render_report
from autopack.estimation.report import estimation_report


def test_point_metrics() -> None:
    assert smape(1000, 800) == pytest.approx(100 * 200 / 900)
    assert smape(0, 0) == 0.0
    assert smape(0, 10) == 200.0
    assert waste_ratio(2000, 800) == 2.5
    assert waste_ratio(2000, 0) is None
    assert underestimated(1101, 1000)
    assert not underestimated(1100, 1000)
    assert p50([3.0, 1.0, 2.0]) == 2.0
    assert p90([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]) == 10.0
    assert quantile([], 0.5) is None


def test_event_metrics_never_treat_a_truncated_count_as_exact() -> None:
    exact = event_metrics(predicted=1000, max_tokens=2000, actual=1500, truncated=False)
    assert exact == EventMetrics(smape_percent=40.0, waste_ratio=2000 / 1500, underestimated=True)
    # Truncated at 2000 > 1.1 * 1000: surely underestimated, but SMAPE/waste are unknown.
    assert event_metrics(predicted=1000, max_tokens=2000, actual=2000, truncated=True) == (
        EventMetrics(None, None, True)
    )
    # Truncated at 1050 (a ceiling below the estimate): the bound cannot decide anything.
    assert event_metrics(predicted=1000, max_tokens=1050, actual=1050, truncated=True) == (
        EventMetrics(None, None, None)
    )
    assert event_metrics(predicted=1000, max_tokens=1, actual=None, truncated=False) == (
        EventMetrics(None, None, None)
    )


def test_kaplan_meier_quantile_with_lower_bounds() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert km_quantile(values, [False] * 5, 0.5) == 3.0
    # A lower bound at 2 leaves the risk set: survival 1 -> 0.8 (at 1) -> 0.8*2/3 (at 3) ...
    # CDF after 3 = 1 - 0.8 * 2/3 = 0.4667 < 0.5, after 4 = 1 - 0.8 * 2/3 * 1/2 = 0.733
    assert km_quantile(values, [False, True, False, False, False], 0.5) == 4.0
    # (Dropping the bounded row, or trusting it as exact, would both have said 3.0.)
    # When the largest values are all bounds the quantile is hidden above them: None.
    assert km_quantile(values, [False, False, True, True, True], 0.9) is None
    assert km_quantile([], [], 0.5) is None


def _event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "estimator_version": "v1",
        "category": "implementation",
        "complexity": "medium",
        "deliverable_count": 1,
        "predicted_output_tokens": 1000,
        "predicted_p90_tokens": 1800,
        "selected_budget": 2000,
        "budget_decided_by": "estimate",
        "max_tokens_sent": 2000,
        "actual_output_tokens": None,
        "truncated": False,
    }
    base.update(fields)
    return base


EVENTS = [
    # stratum implementation/medium/1
    _event(actual_output_tokens=800),  # SMAPE 22.22, waste 2.5, not under, covered
    _event(
        actual_output_tokens=1500, max_tokens_sent=2048, budget_decided_by="floor"
    ),  # SMAPE 40, waste 1.3653, under, covered
    _event(actual_output_tokens=2000, truncated=True),  # lower bound: under, not covered
    # stratum tests/low/2-5
    _event(
        category="Tests",
        complexity="low",
        deliverable_count=3,
        predicted_output_tokens=2000,
        predicted_p90_tokens=3000,
        max_tokens_sent=4000,
        actual_output_tokens=3500,
        estimator_version="v1-cal-abc",
    ),  # SMAPE 54.55, waste 1.142857, under, not covered
    _event(
        category="tests",
        complexity="low",
        deliverable_count=4,
        budget_decided_by="ceiling",
        actual_output_tokens=None,
    ),  # the call failed before any output: counts only in n and the budget rates
]


def test_report_numbers_by_hand() -> None:
    report = estimation_report(EVENTS)
    overall = report.overall
    assert (overall.n, overall.n_exact, overall.n_truncated) == (5, 3, 1)
    assert overall.truncation_rate == pytest.approx(1 / 5)
    assert overall.underestimation_rate == pytest.approx(3 / 4)
    assert overall.p90_coverage == pytest.approx(2 / 4)
    assert overall.waste_p50 == pytest.approx(2048 / 1500)
    # numpy linear p90 of [1.142857, 1.365333, 2.5]: 1.365333 + 0.8 * (2.5 - 1.365333)
    assert overall.waste_p90 == pytest.approx(2048 / 1500 + 0.8 * (2.5 - 2048 / 1500))
    assert overall.smape_mean == pytest.approx((200 / 9 + 40 + 100 * 1500 / 2750) / 3)
    assert overall.smape_median == pytest.approx(40.0)
    assert overall.floor_rate == pytest.approx(1 / 5)
    assert overall.ceiling_rate == pytest.approx(1 / 5)

    assert [s.key for s in report.strata] == ["implementation/medium/1", "tests/low/2-5"]
    impl, tests = report.strata
    assert (impl.n, impl.n_exact, impl.n_truncated) == (3, 2, 1)
    assert impl.truncation_rate == pytest.approx(1 / 3)
    assert impl.underestimation_rate == pytest.approx(2 / 3)
    assert impl.p90_coverage == pytest.approx(2 / 3)
    assert impl.waste_p50 == pytest.approx((2.5 + 2048 / 1500) / 2)
    assert impl.smape_mean == pytest.approx((200 / 9 + 40) / 2)
    assert impl.floor_rate == pytest.approx(1 / 3)
    assert (tests.n, tests.n_exact, tests.n_truncated) == (2, 1, 0)
    assert tests.truncation_rate == 0.0
    assert tests.underestimation_rate == 1.0
    assert tests.p90_coverage == 0.0
    assert tests.waste_p50 == pytest.approx(4000 / 3500)
    assert tests.ceiling_rate == pytest.approx(1 / 2)
    assert report.versions == {"v1": 4, "v1-cal-abc": 1}


def test_report_json_and_table() -> None:
    report = estimation_report(EVENTS)
    data = json.loads(json.dumps(report.to_json()))
    assert data["overall"]["n"] == 5
    assert data["strata"][1]["key"] == "tests/low/2-5"
    assert data["estimator_versions"] == {"v1": 4, "v1-cal-abc": 1}
    console = Console(width=200, record=True)
    console.print(render_report(report))
    text = console.export_text()
    assert "implementation/medium/1" in text
    assert "tests/low/2-5" in text
    overall_line = next(line for line in text.splitlines() if "overall" in line)
    assert "20 %" in overall_line  # truncation rate
    assert "75 %" in overall_line  # underestimation rate


def test_empty_report() -> None:
    report = estimation_report([])
    assert report.overall.n == 0
    assert report.overall.underestimation_rate is None
    assert report.overall.waste_p50 is None
    assert report.strata == ()
    Console(record=True).print(render_report(report))
