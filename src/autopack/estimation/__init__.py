"""Token estimation: features → p50/p90 → ``max_tokens``, and the tools that keep it honest.

Pure library code (no HTTP, no database sessions, no environment): the executor calls
:func:`extract_features` and :meth:`TokenEstimator.estimate`; the telemetry writer stores
``features.to_json()`` and :func:`event_metrics`; the CLI feeds event rows to
:func:`estimation_report`, :func:`calibrate` and :func:`plot_predicted_vs_actual` (the plot
module is imported lazily because it pulls in matplotlib).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autopack.estimation.calibrate import CalibrationResult, calibrate, render_calibration
from autopack.estimation.estimator import Estimate, TokenEstimator, stratum_key
from autopack.estimation.features import (
    Deliverable,
    Kind,
    PhaseFeatures,
    bucket_of,
    classify,
    extract_features,
    features_from_event,
)
from autopack.estimation.metrics import (
    EventMetrics,
    event_metrics,
    smape,
    underestimated,
    waste_ratio,
)
from autopack.estimation.report import EstimationReport, StratumStats, estimation_report, render

if TYPE_CHECKING:
    from autopack.estimation.plot import plot_predicted_vs_actual

__all__ = [
    "CalibrationResult",
    "Deliverable",
    "Estimate",
    "EstimationReport",
    "EventMetrics",
    "Kind",
    "PhaseFeatures",
    "StratumStats",
    "TokenEstimator",
    "bucket_of",
    "calibrate",
    "classify",
    "estimation_report",
    "event_metrics",
    "extract_features",
    "features_from_event",
    "plot_predicted_vs_actual",
    "render",
    "render_calibration",
    "smape",
    "stratum_key",
    "underestimated",
    "waste_ratio",
]


def __getattr__(name: str) -> Any:
    if name == "plot_predicted_vs_actual":
        from autopack.estimation.plot import plot_predicted_vs_actual

        return plot_predicted_vs_actual
    raise AttributeError(name)
