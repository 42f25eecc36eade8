"""How good are the budgets? Accuracy of recorded estimates, overall and per stratum.

Input is any iterable of mappings with the ``token_estimation_v2_events`` columns (rows
from the database, API JSON, or test fixtures). Everything is recomputed from the raw
columns (predicted, p90, max_tokens_sent, actual, truncated) so the report never depends on
how a writer filled the derived columns.

Rules for truncated rows (their ``actual_output_tokens`` is a lower bound: the model wanted
to write more than that):
* they count in the truncation rate;
* they are never used for SMAPE or waste (both need the exact need);
* they count as underestimated and as p90 misses. Normally the bound (the budget) is above
  p90, so that is a fact; when a ceiling cut the budget below it, this is the pessimistic
  reading, chosen so truncations can never make the estimator look better.
Rows without an actual count (the call failed before any output) count only in ``n`` and in
the floor/ceiling rates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from autopack.estimation.estimator import stratum_key
from autopack.estimation.metrics import mean, p50, p90, smape, underestimated

Event = Mapping[str, Any]


@dataclass(frozen=True)
class StratumStats:
    """Accuracy numbers for one group of events (rates are fractions 0..1, None = no data)."""

    key: str
    n: int
    n_exact: int
    n_truncated: int
    truncation_rate: float | None
    underestimation_rate: float | None
    p90_coverage: float | None
    waste_p50: float | None
    waste_p90: float | None
    smape_mean: float | None
    smape_median: float | None
    floor_rate: float | None
    ceiling_rate: float | None


@dataclass(frozen=True)
class EstimationReport:
    overall: StratumStats
    strata: tuple[StratumStats, ...]
    versions: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": asdict(self.overall),
            "strata": [asdict(s) for s in self.strata],
            "estimator_versions": dict(self.versions),
        }


def event_stratum(event: Event) -> str:
    """The ``category/complexity/bucket`` key of an event row."""
    return stratum_key(
        str(event.get("category") or ""),
        str(event.get("complexity") or ""),
        int(event.get("deliverable_count") or 0),
    )


def estimation_report(events: Iterable[Event]) -> EstimationReport:
    """Overall and per-stratum accuracy of the recorded estimates."""
    rows = list(events)
    groups: dict[str, list[Event]] = {}
    versions: dict[str, int] = {}
    for row in rows:
        groups.setdefault(event_stratum(row), []).append(row)
        version = str(row.get("estimator_version") or "?")
        versions[version] = versions.get(version, 0) + 1
    return EstimationReport(
        overall=stratum_stats("overall", rows),
        strata=tuple(stratum_stats(key, groups[key]) for key in sorted(groups)),
        versions=dict(sorted(versions.items())),
    )


def stratum_stats(key: str, rows: list[Event]) -> StratumStats:
    n = len(rows)
    exact_smape: list[float] = []
    waste: list[float] = []
    under = under_known = covered = cover_known = truncated = floor = ceiling = 0
    for row in rows:
        decided = row.get("budget_decided_by")
        floor += decided == "floor"
        ceiling += decided == "ceiling"
        actual = row.get("actual_output_tokens")
        is_truncated = bool(row.get("truncated"))
        truncated += is_truncated
        if actual is None:
            continue
        pred = float(row.get("predicted_output_tokens") or 0)
        pred90 = float(row.get("predicted_p90_tokens") or pred)
        if is_truncated:
            under += 1
            under_known += 1
            cover_known += 1
            continue
        under += underestimated(actual, pred)
        under_known += 1
        covered += actual <= pred90
        cover_known += 1
        exact_smape.append(smape(pred, actual))
        sent = row.get("max_tokens_sent")
        if sent is not None and actual > 0:
            waste.append(float(sent) / float(actual))
    return StratumStats(
        key=key,
        n=n,
        n_exact=len(exact_smape),
        n_truncated=truncated,
        truncation_rate=truncated / n if n else None,
        underestimation_rate=under / under_known if under_known else None,
        p90_coverage=covered / cover_known if cover_known else None,
        waste_p50=p50(waste),
        waste_p90=p90(waste),
        smape_mean=mean(exact_smape),
        smape_median=p50(exact_smape),
        floor_rate=floor / n if n else None,
        ceiling_rate=ceiling / n if n else None,
    )
