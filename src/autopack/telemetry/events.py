"""The telemetry events, defined once: the executor builds them, the API validates them,
:mod:`autopack.control.telemetry` writes them, and reports read them back as ``*Row``.

``extra="forbid"`` makes a writer that passes a field the table lacks fail loudly (422),
which is how the legacy tool lost rows for months: a writer passed a column that did not
exist and the error was swallowed. A test proves every field here is a real column, and
that every field fits its column (:mod:`autopack.bounds`: lengths, INTEGER, finite).
Each event carries an idempotency key made with it, so a post retried after a lost answer
is stored once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autopack.bounds import (
    ID_PATTERN,
    TEXT_MAX,
    CostUsd,
    Count,
    Finite,
    JsonObject,
    Storable,
    UtcTime,
)
from autopack.clock import utcnow

Id = Annotated[str, Field(max_length=200, pattern=ID_PATTERN)]
"""A run or phase id as runs have them: a row posted under any other text (a newline, a
quote) was stored, but no ``--run`` or ``GET /telemetry/*?run_id=`` could name it."""

REPLAY_PROVIDER = "replay"
"""The ``provider`` of calls answered from a replay cassette. Their ``cost_usd`` is what
the recorded call would have cost: reports show it as "replayed", and it is never added
to what a run was billed (its budget, ``runs.cost_usd``, the cost metric)."""


class _Event(Storable):
    model_config = ConfigDict(extra="forbid")

    ts: UtcTime = Field(default_factory=utcnow)
    idempotency_key: str | None = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=64,
        description="Made when the event is; a retried post with the same key is stored once.",
    )


class LlmUsageIn(_Event):
    """One LLM call, successful or not (``llm_usage_events``)."""

    run_id: Id
    phase_id: Id | None = None
    attempt: Count | None = None
    role: Literal["builder", "auditor"]
    provider: str = Field(max_length=40)
    model: str = Field(max_length=200)
    input_tokens: Count | None = Field(None, description="Including cache reads and writes.")
    output_tokens: Count | None = None
    cache_read_tokens: Count | None = None
    cache_write_tokens: Count | None = None
    max_tokens: Count | None = None
    stop_reason: str | None = Field(None, max_length=40)
    latency_ms: Finite | None = Field(None, ge=0)
    ttft_ms: Finite | None = Field(None, ge=0)
    success: bool
    error_class: str | None = Field(None, max_length=200)
    error_message: str | None = Field(None, max_length=TEXT_MAX)
    request_id: str | None = Field(None, max_length=200)
    cost_usd: CostUsd | None = Field(None, description="From the price table; None if unpriced.")
    provider_cost_usd: CostUsd | None = None
    price_snapshot: JsonObject | None = None


class TokenEstimationIn(_Event):
    """One Builder call's prediction against reality (``token_estimation_v2_events``)."""

    run_id: Id
    phase_id: Id
    attempt: Count
    estimator_version: str = Field(max_length=40)
    category: str = Field(max_length=40)
    complexity: str = Field(max_length=20)
    deliverable_count: Count
    deliverables_json: list[str] = Field(default_factory=list)
    features: JsonObject = Field(default_factory=dict)
    predicted_output_tokens: Count
    predicted_p90_tokens: Count
    selected_budget: Count
    budget_decided_by: str = Field(max_length=20)
    max_tokens_sent: Count
    actual_output_tokens: Count | None = None
    truncated: bool = False
    stop_reason: str | None = Field(None, max_length=40)
    model: str = Field(max_length=200)
    parse_success: bool | None = None
    success: bool | None = None
    phase_outcome: str | None = Field(None, max_length=40)
    smape_percent: Finite | None = None
    waste_ratio: Finite | None = None
    underestimated: bool | None = None


class TokenBudgetEscalationIn(_Event):
    """An answer's output allowance raised (``token_budget_escalation_events``): a retry's
    ``max_tokens`` after truncation, or a cut-off answer given a continuation."""

    run_id: Id
    phase_id: Id
    attempt: Count
    reason: Literal["truncation", "utilization", "continuation"]
    factor: Finite = Field(gt=0, le=1000)
    old_budget: Count
    new_budget: Count


# -- rows as they are read back (the event plus its id) -----------------------------------------


# A row is read back as it was stored: bounds added to the request models later (costs,
# ts) must not make what an older server accepted unreadable (a 500 on every read).


class _ReadBack(BaseModel):
    """A stored row is not a request: the checks that keep a request storable
    (:class:`~autopack.bounds.Storable`, :class:`~autopack.bounds.JsonTyped`, a JSON
    column's walk) are not run again on what the database holds. They took ten times
    as long as the rest of a row's validation (a dashboard refresh over 48,000 estimation
    rows: 12.7 s, then 5.2 s), and a bound tightened later refused rows stored before it."""

    @model_validator(mode="after")
    def _storable(self) -> Self:
        return self

    @field_validator("*", mode="before")
    @classmethod
    def _json_type(cls, value: Any, info: ValidationInfo) -> Any:
        return value


class LlmUsageRow(_ReadBack, LlmUsageIn):
    model_config = ConfigDict(extra="ignore")

    id: int
    ts: datetime
    run_id: str
    phase_id: str | None = None
    cost_usd: Finite | None = None
    provider_cost_usd: Finite | None = None
    price_snapshot: dict[str, Any] | None = None


class TokenEstimationRow(_ReadBack, TokenEstimationIn):
    model_config = ConfigDict(extra="ignore")

    id: int
    ts: datetime
    run_id: str
    phase_id: str
    features: dict[str, Any] = Field(default_factory=dict)


class TokenBudgetEscalationRow(_ReadBack, TokenBudgetEscalationIn):
    model_config = ConfigDict(extra="ignore")

    id: int
    ts: datetime
    run_id: str
    phase_id: str


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
    unpriced_calls: int
    """Calls that used tokens but have no cost (a model without a price): their cost is
    unknown, so ``cost_usd`` leaves them out."""

    @property
    def replayed(self) -> bool:
        """Answered from a cassette: ``cost_usd`` was never spent."""
        return self.provider == REPLAY_PROVIDER


class TelemetryCounts(BaseModel):
    """Rows per telemetry table for one phase (the probe's before and after)."""

    llm_usage_events: int
    token_estimation_v2_events: int
    token_budget_escalation_events: int
