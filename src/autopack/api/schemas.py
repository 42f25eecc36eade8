"""Request and response models of the control plane (the HTTP contract, in one file).

Requests from workers ignore unknown fields (so the contract can grow without breaking
older executors); the run definition forbids them (a typo in a run file is an error).
Responses are built by :mod:`autopack.db.views` and validated here, which is also what
``/docs`` shows. :func:`invalid_input` turns FastAPI's validation errors into the one
error shape every endpoint answers with.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autopack.errors import InvalidInput
from autopack.rundef import (
    Budgets,
    Complexity,
    Policy,
    RunDefinition,
    TaskCategory,
    describe_errors,
    summarize_errors,
)

if TYPE_CHECKING:  # the CLI imports these models; it must not pay for importing FastAPI
    from fastapi.exceptions import RequestValidationError

__all__ = ["RunDefinition"]

PhaseStateName = Literal[
    "QUEUED", "EXECUTING", "AWAITING_APPROVAL", "CI_RUNNING", "COMPLETE", "FAILED", "SKIPPED"
]
AttemptOutcomeName = Literal[
    "EXECUTING", "COMPLETE", "FAILED", "LOST", "REQUEUED", "AWAITING_APPROVAL", "CANCELLED"
]
LeaseSeconds = Field(ge=5, le=3600)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- requests ----------------------------------------------------------------------------------


class CancelIn(_Request):
    reason: str | None = Field(None, max_length=2000)


class RequeueIn(_Request):
    requested_by: str | None = Field(None, max_length=200)
    reason: str | None = Field(None, max_length=2000)


class ClaimIn(_Request):
    worker_id: str = Field(min_length=1, max_length=200)
    lease_seconds: int = Field(60, ge=5, le=3600)
    run_id: str | None = Field(None, min_length=1, max_length=200)
    phase_id: str | None = Field(None, min_length=1, max_length=200)


class HeartbeatIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    lease_seconds: int | None = Field(None, ge=5, le=3600)
    state: Literal["EXECUTING", "CI_RUNNING"] | None = None


class UsageIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    tokens: int = Field(ge=0)
    cost_usd: float = Field(0.0, ge=0)


class ResultBody(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    outcome: Literal["COMPLETE", "FAILED"]
    stop_reason: str = Field(min_length=1, max_length=80)
    retryable: bool = True
    feedback: str | None = None
    error: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    files_written: list[str] = Field(default_factory=list)
    check_results: list[dict[str, Any]] = Field(default_factory=list)
    audit_verdict: dict[str, Any] | str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ApprovalIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=10_000)
    context: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(None, gt=0, le=30 * 24 * 3600)


class DecisionIn(_Request):
    responder: str = Field(min_length=1, max_length=200)
    note: str | None = Field(None, max_length=10_000)


# -- responses ---------------------------------------------------------------------------------


class ScopeView(_Response):
    paths: list[str]
    read_only_context: list[str]
    deliverables: list[str]


class PhaseView(_Response):
    run_id: str
    phase_id: str
    tier_id: str
    tier_index: int
    phase_index: int
    name: str
    description: str
    task_category: TaskCategory
    complexity: Complexity
    scope: ScopeView
    checks: list[str]
    depends_on: list[str]
    state: PhaseStateName
    attempts: int
    max_attempts: int
    attempts_left: int
    last_failure_reason: str | None
    failure_fingerprint: str | None
    tokens_used: int
    cost_usd: float
    lease_owner: str | None
    lease_expires_at: datetime | None
    available_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class AttemptView(_Response):
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcomeName
    stop_reason: str | None
    max_tokens: int | None
    files_written: list[str]
    check_results: list[dict[str, Any]]
    audit_verdict: dict[str, Any] | None
    feedback: str | None
    error: str | None
    details: dict[str, Any]
    tokens_used: int
    cost_usd: float


class ApprovalView(_Response):
    id: int
    run_id: str
    phase_id: str
    attempt: int
    reason: str
    context: dict[str, Any]
    status: Literal["pending", "approved", "rejected", "expired", "cancelled"]
    on_timeout: Literal["fail", "requeue"]
    requested_at: datetime
    timeout_at: datetime
    responded_at: datetime | None
    responder: str | None
    note: str | None


class DecidedApproval(ApprovalView):
    phase_state: PhaseStateName


class PhaseDetail(PhaseView):
    """PhaseView whose ``attempts`` is the attempt history (the count is ``attempt_count``)."""

    attempts: list[AttemptView]  # type: ignore[assignment]
    attempt_count: int
    approvals: list[ApprovalView]


class TierView(_Response):
    tier_id: str
    tier_index: int
    name: str
    state: Literal["QUEUED", "RUNNING", "COMPLETE", "FAILED", "SKIPPED"]
    phases: list[PhaseView]


class RunView(_Response):
    run_id: str
    state: str
    goal: str
    budgets: Budgets
    policy: Policy
    tokens_used: int
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    counts: dict[str, int]
    tiers: list[TierView]


class RunSummary(_Response):
    run_id: str
    state: str
    goal: str
    tokens_used: int
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    phase_count: int
    counts: dict[str, int]


class RunList(_Response):
    items: list[RunSummary]
    total: int
    limit: int
    offset: int


class RunBrief(_Response):
    state: str
    goal: str
    budgets: Budgets
    policy: Policy
    tokens_used: int
    cost_usd: float


class ApprovedChange(_Response):
    approval_id: int
    reason: str
    context: dict[str, Any]
    responder: str | None
    note: str | None


class ClaimOut(_Response):
    run_id: str
    phase_id: str
    attempt: int
    lease_token: str
    lease_expires_at: datetime
    lease_seconds: int
    phase: PhaseView
    history: list[AttemptView]
    run: RunBrief
    approved_change: ApprovedChange | None


class HeartbeatOut(_Response):
    lease_expires_at: datetime
    state: PhaseStateName


class RunBudgetOut(_Response):
    state: str
    tokens_used: int
    cost_usd: float
    token_cap: int | None
    cost_cap_usd: float | None
    budget_exhausted: bool
    reason: str | None


class PhaseUsageOut(_Response):
    tokens_used: int
    cost_usd: float


class UsageOut(_Response):
    run: RunBudgetOut
    phase: PhaseUsageOut


class ResultOut(_Response):
    run_id: str
    phase_id: str
    attempt: int
    phase_state: PhaseStateName
    run_state: str
    requeued: bool
    available_at: datetime | None


class ApprovalCreated(_Response):
    approval_id: int
    timeout_at: datetime
    phase_state: PhaseStateName
    approval: ApprovalView


# -- errors ------------------------------------------------------------------------------------


def invalid_input(exc: RequestValidationError) -> InvalidInput:
    """FastAPI's 422 as an :class:`InvalidInput`: field paths, messages, offending values."""
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        error = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (error.get("ctx") or {}).get("error", "not JSON")
        position = error.get("loc", ("body", "?"))[-1]
        return InvalidInput(
            f"request body is not valid JSON: {reason} (at character {position})",
            errors=[{"field": "body", "message": f"invalid JSON: {reason}"}],
        )
    body = getattr(exc, "body", None)
    described = []
    for error in errors:
        loc = list(error.get("loc", ()))
        where = loc[0] if loc else "body"
        item = describe_errors([error], body if where == "body" else None, drop_prefix=1)[0]
        if where != "body":
            item["field"] = f"{where} {item['field']}"
        elif item["field"] == "(top level)":
            item["field"] = "body"
        described.append(item)
    return InvalidInput(f"invalid request: {summarize_errors(described)}", errors=described)
