"""Rows of the work tables as typed records: what the control plane reads, by attribute.

Each record has exactly the columns of its table (a test compares them with the models),
and :meth:`from_row` turns a result row into it, parsing JSON columns into the types they
hold (a scope, a policy, check results, an audit verdict, a stored answer). A ``prefix``
reads the columns of a second table out of one joined row (the claim query carries its
run's columns as ``r__*``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from autopack.contract import AuditVerdict, CheckResult, ResultAnswer
from autopack.rundef import Policy, Scope


def _columns(record: type[Any], row: RowMapping, prefix: str) -> dict[str, Any]:
    return {field.name: row[prefix + field.name] for field in fields(record)}


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    state: str
    goal: str
    token_cap: int | None
    cost_cap_usd: float | None
    max_phases: int | None
    max_duration_minutes: int | None
    policy: Policy
    tokens_used: int
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    failure_reason: str | None
    repository: str | None
    branch: str | None
    branch_head: str | None
    drained_in: str | None

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> RunRecord:
        values = _columns(cls, row, prefix)
        values["policy"] = Policy.model_validate(values["policy"] or {})
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TierRecord:
    id: int
    run_id: str
    tier_id: str
    tier_index: int
    name: str
    state: str

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> TierRecord:
        return cls(**_columns(cls, row, prefix))


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    id: int
    run_id: str
    phase_id: str
    tier_id: str
    tier_index: int
    phase_index: int
    name: str
    description: str
    task_category: str
    complexity: str
    scope: Scope
    checks: list[str]
    state: str
    attempts: int
    max_attempts: int
    retry_window_start: int
    available_at: datetime | None
    lease_owner: str | None
    lease_token: str | None
    lease_expires_at: datetime | None
    lease_seconds: int | None
    last_failure_reason: str | None
    failure_fingerprint: str | None
    tokens_used: int
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    commit_sha: str | None

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> PhaseRecord:
        values = _columns(cls, row, prefix)
        values["scope"] = Scope.model_validate(values["scope"] or {})
        values["checks"] = list(values["checks"] or [])
        return cls(**values)

    @property
    def window_open(self) -> bool:
        """May this phase be attempted again within its current retry window?"""
        return self.attempts - self.retry_window_start < self.max_attempts

    @property
    def attempts_left(self) -> int:
        return max(self.max_attempts - (self.attempts - self.retry_window_start), 0)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: int
    run_id: str
    phase_id: str
    attempt: int
    worker_id: str | None
    lease_token: str | None
    claim_key: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    stop_reason: str | None
    max_tokens: int | None
    files_written: list[str]
    check_results: list[CheckResult]
    audit_verdict: AuditVerdict | None
    feedback: str | None
    error: str | None
    usage_key: str | None
    details: dict[str, Any]
    tokens_used: int
    cost_usd: float
    result_key: str | None
    result_response: ResultAnswer | None
    commit_sha: str | None
    base_sha: str | None

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> AttemptRecord:
        values = _columns(cls, row, prefix)
        values["files_written"] = list(values["files_written"] or [])
        values["check_results"] = [
            CheckResult.model_validate(check) for check in values["check_results"] or []
        ]
        verdict = values["audit_verdict"]
        values["audit_verdict"] = AuditVerdict.model_validate(verdict) if verdict else None
        values["details"] = dict(values["details"] or {})
        answer = values["result_response"]
        values["result_response"] = ResultAnswer.model_validate(answer) if answer else None
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: int
    run_id: str
    phase_id: str
    attempt: int
    reason: str
    context: dict[str, Any]
    status: str
    on_timeout: str
    requested_at: datetime
    timeout_at: datetime
    responded_at: datetime | None
    responder: str | None
    note: str | None

    @classmethod
    def from_row(cls, row: RowMapping, prefix: str = "") -> ApprovalRecord:
        values = _columns(cls, row, prefix)
        values["context"] = dict(values["context"] or {})
        return cls(**values)
