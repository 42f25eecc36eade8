"""The telemetry events, defined once: the executor builds them, the API validates them,
:mod:`autopack.control.telemetry` writes them, and reports read them back as ``*Row``.

``extra="forbid"`` makes a writer that passes a field the table lacks fail loudly (422),
which is how the legacy tool lost rows for months: a writer passed a column that did not
exist and the error was swallowed. A test proves every field here is a real column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autopack.clock import utcnow


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: datetime = Field(default_factory=utcnow)


class LlmUsageIn(_Event):
    """One LLM call, successful or not (``llm_usage_events``)."""

    run_id: str
    phase_id: str | None = None
    attempt: int | None = None
    role: Literal["builder", "auditor"]
    provider: str
    model: str
    input_tokens: int | None = Field(None, description="Including cache reads and writes.")
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    max_tokens: int | None = None
    stop_reason: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    success: bool
    error_class: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    cost_usd: float | None = Field(None, description="From the price table; None if unpriced.")
    provider_cost_usd: float | None = None
    price_snapshot: dict[str, Any] | None = None


class TokenEstimationIn(_Event):
    """One Builder call's prediction against reality (``token_estimation_v2_events``)."""

    run_id: str
    phase_id: str
    attempt: int
    estimator_version: str
    category: str
    complexity: str
    deliverable_count: int
    deliverables_json: list[str] = []
    features: dict[str, Any] = {}
    predicted_output_tokens: int
    predicted_p90_tokens: int
    selected_budget: int
    budget_decided_by: str
    max_tokens_sent: int
    actual_output_tokens: int | None = None
    truncated: bool = False
    stop_reason: str | None = None
    model: str
    parse_success: bool | None = None
    success: bool | None = None
    phase_outcome: str | None = None
    smape_percent: float | None = None
    waste_ratio: float | None = None
    underestimated: bool | None = None


class TokenBudgetEscalationIn(_Event):
    """A retry's ``max_tokens`` raised after truncation (``token_budget_escalation_events``)."""

    run_id: str
    phase_id: str
    attempt: int
    reason: Literal["truncation", "utilization"]
    factor: float
    old_budget: int
    new_budget: int


# -- rows as they are read back (the event plus its id) -----------------------------------------


class LlmUsageRow(LlmUsageIn):
    model_config = ConfigDict(extra="ignore")

    id: int


class TokenEstimationRow(TokenEstimationIn):
    model_config = ConfigDict(extra="ignore")

    id: int


class TokenBudgetEscalationRow(TokenBudgetEscalationIn):
    model_config = ConfigDict(extra="ignore")

    id: int


TelemetryEvent = LlmUsageIn | TokenEstimationIn | TokenBudgetEscalationIn
EventKind = Literal["usage", "estimation", "escalation"]


def kind_of(event: TelemetryEvent) -> EventKind:
    """Which table an event goes to."""
    if isinstance(event, LlmUsageIn):
        return "usage"
    if isinstance(event, TokenEstimationIn):
        return "estimation"
    return "escalation"


class UsageSummaryRow(BaseModel):
    """Calls, tokens and cost of one (run, provider, model, role)."""

    run_id: str
    provider: str
    model: str
    role: str
    calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    """Sum over priced calls; None when no call of the group had a price."""
    priced_calls: int


class TelemetryCounts(BaseModel):
    """Rows per telemetry table for one phase (the probe's before and after)."""

    llm_usage_events: int
    token_estimation_v2_events: int
    token_budget_escalation_events: int
