"""Telemetry rows in, one observation per phase out: the only door from the database.

The database layer hands over ``token_estimation_v2_events`` rows as mappings; they become
:class:`EstimationRow` at the package's entry points, so everything inside is typed.

Why one observation per *phase*, not per call: a phase cut off at 8 000 tokens and then
finished at 9 100 on its retry needed ~9 100 tokens once. Counting both calls enters the
same need twice (once as a lower bound, once exactly), and because retries happen exactly
when the need is large, it fattens the fitted tail. So each phase contributes

* its successful attempt's output tokens, exactly; or, when no attempt succeeded,
* the largest truncation bound of its attempts, as a censored observation (need > bound);
* nothing, when no attempt produced a usable count (failed before any output, or only
  complete-but-rejected answers: a failed check says nothing about size).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autopack.estimation.features import PhaseFeatures, bucket_of, features_from_event

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE_SUFFIX = re.compile(r"(?:[-@_](?:\d{8}|\d{4}-\d{2}-\d{2})|-latest)$")


def model_family(model: str | None) -> str:
    """The key per-model fits are stored under: lower case, without a date or ``-latest``.

    Providers answer with dated ids (``claude-sonnet-4-5-20250929``) while the executor is
    configured with the alias (``claude-sonnet-4-5``); both must find the same fit.

    >>> model_family("Claude-Sonnet-4-5-20250929"), model_family("gpt-5@2025-08-07")
    ('claude-sonnet-4-5', 'gpt-5')
    """
    name = (model or "").strip().lower()
    while True:
        stripped = _DATE_SUFFIX.sub("", name)
        if stripped == name:
            return name or "?"
        name = stripped


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _ts(value: Any) -> datetime | None:
    """Timestamps as aware UTC (SQLite hands back naive ones; the API sends ISO text)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class EstimationRow:
    """One ``token_estimation_v2_events`` row, typed (one Builder call)."""

    run_id: str
    phase_id: str
    attempt: int
    model: str
    category: str
    complexity: str
    deliverable_count: int
    features: PhaseFeatures | None
    truncated: bool
    actual_output_tokens: int | None
    max_tokens_sent: int | None = None
    predicted_output_tokens: int | None = None
    predicted_p90_tokens: int | None = None
    selected_budget: int | None = None
    budget_decided_by: str | None = None
    success: bool | None = None
    parse_success: bool | None = None
    phase_outcome: str | None = None
    stop_reason: str | None = None
    estimator_version: str = ""
    ts: datetime | None = None
    id: int | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> EstimationRow:
        """Convert a database/API row; missing optional columns become ``None``."""
        return cls(
            run_id=str(row.get("run_id") or ""),
            phase_id=str(row.get("phase_id") or ""),
            attempt=_int(row.get("attempt")) or 0,
            model=str(row.get("model") or ""),
            category=str(row.get("category") or ""),
            complexity=str(row.get("complexity") or ""),
            deliverable_count=_int(row.get("deliverable_count")) or 0,
            features=features_from_event(row),
            truncated=bool(row.get("truncated")),
            actual_output_tokens=_int(row.get("actual_output_tokens")),
            max_tokens_sent=_int(row.get("max_tokens_sent")),
            predicted_output_tokens=_int(row.get("predicted_output_tokens")),
            predicted_p90_tokens=_int(row.get("predicted_p90_tokens")),
            selected_budget=_int(row.get("selected_budget")),
            budget_decided_by=None
            if row.get("budget_decided_by") is None
            else str(row.get("budget_decided_by")),
            success=_bool(row.get("success")),
            parse_success=_bool(row.get("parse_success")),
            phase_outcome=None if row.get("phase_outcome") is None else str(row["phase_outcome"]),
            stop_reason=None if row.get("stop_reason") is None else str(row["stop_reason"]),
            estimator_version=str(row.get("estimator_version") or ""),
            ts=_ts(row.get("ts")),
            id=_int(row.get("id")),
        )

    @property
    def succeeded(self) -> bool:
        """``success`` decides; while it is unknown (not joined yet) a parsed answer counts."""
        if self.success is None:
            return self.parse_success is True
        return self.success

    @property
    def bound(self) -> int | None:
        """For a truncated call: the tokens it was cut off at (a lower bound of the need)."""
        return self.actual_output_tokens or self.max_tokens_sent


def as_rows(events: Iterable[EstimationRow | Mapping[str, Any]]) -> list[EstimationRow]:
    """Accept rows or mappings at the entry points; everything inside sees rows."""
    return [e if isinstance(e, EstimationRow) else EstimationRow.from_mapping(e) for e in events]


@dataclass(frozen=True)
class PhaseObservation:
    """What one phase says about its need: an exact count or (``censored``) a lower bound."""

    run_id: str
    phase_id: str
    features: PhaseFeatures
    model: str
    value: float
    censored: bool
    attempts: int
    truncated_attempts: int
    first_budget: int | None
    ts: datetime
    first_id: int
    recorded_p50: int | None = None
    recorded_p90: int | None = None
    """What the estimator that ran said for the first attempt (for "recorded" plots)."""

    @property
    def family(self) -> str:
        return model_family(self.model)

    @property
    def cell(self) -> str:
        """``category/complexity``: the level at which intercepts and spreads are fitted."""
        return cell_key(self.features.category, self.features.complexity)

    @property
    def stratum(self) -> str:
        return f"{self.cell}/{bucket_of(self.features.deliverable_count)}"


def norm_label(value: str) -> str:
    text = value.strip().lower()
    return text or "*"


def cell_key(category: str, complexity: str) -> str:
    return f"{norm_label(category)}/{norm_label(complexity)}"


def phase_observations(
    events: Iterable[EstimationRow | Mapping[str, Any]],
) -> tuple[list[PhaseObservation], dict[str, int]]:
    """One observation per phase, oldest first, and how many phases were skipped, by reason.

    Phases are ordered by their first call's timestamp (then row id), which is what a
    time-ordered holdout needs: "the latest phases" are the last of this list.
    """
    phases: dict[tuple[str, str], list[EstimationRow]] = {}
    for row in as_rows(events):
        phases.setdefault((row.run_id, row.phase_id), []).append(row)
    found: list[PhaseObservation] = []
    skipped: dict[str, int] = {}
    for (run_id, phase_id), attempts in phases.items():
        attempts.sort(key=lambda r: (r.attempt, r.id or 0))
        observation, reason = _observe(run_id, phase_id, attempts)
        if observation is None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            found.append(observation)
    found.sort(key=lambda o: (o.ts, o.first_id, o.run_id, o.phase_id))
    return found, dict(sorted(skipped.items()))


def _observe(
    run_id: str, phase_id: str, attempts: list[EstimationRow]
) -> tuple[PhaseObservation | None, str]:
    exact = [
        r for r in attempts if r.succeeded and not r.truncated and (r.actual_output_tokens or 0) > 0
    ]
    cut = [r for r in attempts if r.truncated and (r.bound or 0) > 0]
    if exact:
        chosen, value, censored = exact[-1], float(exact[-1].actual_output_tokens or 0), False
    elif cut:
        chosen = max(cut, key=lambda r: r.bound or 0)
        value, censored = float(chosen.bound or 0), True
    elif any((r.actual_output_tokens or 0) > 0 for r in attempts):
        return None, "not_successful"
    else:
        return None, "no_actual_tokens"
    features = chosen.features or next((r.features for r in attempts if r.features), None)
    if features is None:
        return None, "no_features"
    stamps = [r.ts for r in attempts if r.ts is not None]
    ids = [r.id for r in attempts if r.id is not None]
    return (
        PhaseObservation(
            run_id=run_id,
            phase_id=phase_id,
            features=features,
            model=chosen.model,
            value=value,
            censored=censored,
            attempts=len(attempts),
            truncated_attempts=sum(r.truncated for r in attempts),
            first_budget=attempts[0].max_tokens_sent,
            ts=min(stamps) if stamps else _EPOCH,
            first_id=min(ids) if ids else 0,
            recorded_p50=attempts[0].predicted_output_tokens,
            recorded_p90=attempts[0].predicted_p90_tokens,
        ),
        "",
    )
