"""Rows in, one observation per phase out: retries are one need, not two samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from autopack.estimation.features import extract_features
from autopack.estimation.rows import EstimationRow, model_family, phase_observations

FEATURES = extract_features("implementation", "high", ["src/a.py", "tests/test_a.py"], None)
T0 = datetime(2026, 3, 1, 12, 0)


def row(phase: str, attempt: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": None,
        "ts": T0 + timedelta(minutes=attempt),
        "run_id": "r1",
        "phase_id": phase,
        "attempt": attempt,
        "model": "claude-sonnet-4-5-20250929",
        "estimator_version": "v1",
        "category": "implementation",
        "complexity": "high",
        "deliverable_count": 2,
        "features": FEATURES.to_json(),
        "predicted_output_tokens": 3000,
        "predicted_p90_tokens": 5400,
        "selected_budget": 6480,
        "budget_decided_by": "estimate",
        "max_tokens_sent": 6480,
        "actual_output_tokens": 5000,
        "truncated": False,
        "success": True,
        "parse_success": True,
    }
    base.update(fields)
    return base


def cut(phase: str, attempt: int, bound: int, **fields: Any) -> dict[str, Any]:
    return row(
        phase,
        attempt,
        actual_output_tokens=bound,
        max_tokens_sent=bound,
        truncated=True,
        success=False,
        parse_success=False,
        **fields,
    )


def test_from_mapping_types_every_column() -> None:
    typed = EstimationRow.from_mapping(row("p1", 2, ts="2026-03-01T12:02:00", id=7))
    assert typed.ts == datetime(2026, 3, 1, 12, 2, tzinfo=UTC)  # ISO text, naive = UTC
    assert (typed.attempt, typed.id, typed.actual_output_tokens) == (2, 7, 5000)
    assert typed.features == FEATURES
    assert typed.succeeded and typed.bound == 5000
    sparse = EstimationRow.from_mapping({"run_id": "r", "phase_id": "p", "features": "not json"})
    assert (sparse.attempt, sparse.features, sparse.ts, sparse.success) == (0, None, None, None)
    # success unknown (not joined yet): a parsed answer counts as successful
    assert EstimationRow.from_mapping(row("p", 1, success=None, parse_success=True)).succeeded


def test_a_truncated_attempt_and_its_retry_are_one_exact_observation() -> None:
    found, skipped = phase_observations(
        [cut("p1", 1, 6480), row("p1", 2, actual_output_tokens=9100)]
    )
    assert skipped == {}
    [obs] = found
    assert (obs.value, obs.censored, obs.attempts, obs.truncated_attempts) == (9100, False, 2, 1)
    assert obs.first_budget == 6480 and obs.recorded_p50 == 3000
    assert (obs.stratum, obs.family) == ("implementation/high/2-5", "claude-sonnet-4-5")


def test_every_attempt_truncated_is_one_bound_at_the_largest_cut() -> None:
    rows = [cut("p1", 1, 6480), cut("p1", 2, 9720), cut("p1", 3, 8000)]
    [obs], _ = phase_observations(rows)
    assert (obs.value, obs.censored, obs.attempts) == (9720, True, 3)


def test_phases_without_a_usable_count_are_skipped_by_reason() -> None:
    rows = [
        row("checks", 1, success=False),  # a complete answer rejected: says nothing of size
        row("nothing", 1, actual_output_tokens=None, success=False),
        row("nofeatures", 1, features={}),
        row("ok", 1),
    ]
    found, skipped = phase_observations(rows)
    assert [o.phase_id for o in found] == ["ok"]
    assert skipped == {"no_actual_tokens": 1, "no_features": 1, "not_successful": 1}


def test_phases_come_out_oldest_first_by_their_first_call() -> None:
    late = [row("late", 1, ts=T0 + timedelta(days=2), id=1)]
    early = [
        cut("early", 1, 6480, ts=T0, id=3),
        row("early", 2, ts=T0 + timedelta(days=3), id=4),
    ]
    middle = [row("middle", 1, ts=T0 + timedelta(days=1), id=2)]
    found, _ = phase_observations(late + early + middle)
    assert [o.phase_id for o in found] == ["early", "middle", "late"]
    # The same phase id in another run is another phase.
    found, _ = phase_observations([row("p", 1), row("p", 1, run_id="r2")])
    assert len(found) == 2


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("GPT-5@2025-08-07", "gpt-5"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("model-latest", "model"),
        ("", "?"),
    ],
)
def test_model_family(name: str, family: str) -> None:
    assert model_family(name) == family
