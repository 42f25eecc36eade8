"""``GET /telemetry/summary``: what the LLM calls cost and how good the budgets were.

Apart from the events so that reading or posting events never loads the estimation
library (numpy, Rich): executors only post.
"""

from __future__ import annotations

from pydantic import BaseModel

from autopack.estimation.report import EstimationReport
from autopack.telemetry.events import UsageSummaryRow


class TelemetrySummary(BaseModel):
    """Usage by run/provider/model/role and the estimator's accuracy per stratum."""

    usage: list[UsageSummaryRow]
    estimation: EstimationReport
