"""The tables (DESIGN.md §4). Migrations create exactly these; a test proves they agree.

Times are stored in UTC. SQLite has no time zone type, so :class:`UTCDateTime` stores naive
UTC there and always hands back aware datetimes, letting lease arithmetic be written once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class DbMeta(Base):
    """The database's identity: one row, created once by the first migration."""

    __tablename__ = "db_meta"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime]
    created_by_version: Mapped[str] = mapped_column(String(40))


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(40), index=True)
    goal: Mapped[str] = mapped_column(Text, default="")
    token_cap: Mapped[int | None]
    cost_cap_usd: Mapped[float | None] = mapped_column(Float)
    max_phases: Mapped[int | None]
    max_duration_minutes: Mapped[int | None]
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    failure_reason: Mapped[str | None] = mapped_column(Text)
    repository: Mapped[str | None] = mapped_column(Text)
    """The run file's repository (a git URL or path), when it names one."""
    branch: Mapped[str | None] = mapped_column(String(300))
    branch_head: Mapped[str | None] = mapped_column(String(64))
    """The last commit the control plane accepted onto the run's branch."""
    drained_in: Mapped[str | None] = mapped_column(Text)
    """The repository a drain's ``--repo``/``--workspace`` named instead of ``repository``
    (the last one): the branch check holds there too (0006)."""


class Tier(Base):
    __tablename__ = "tiers"
    __table_args__ = (UniqueConstraint("run_id", "tier_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    tier_id: Mapped[str] = mapped_column(String(200))
    tier_index: Mapped[int]
    name: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(40))


class Phase(Base):
    __tablename__ = "phases"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id"),
        Index("ix_phases_claimable", "state", "available_at"),
        Index("ix_phases_run_tier", "run_id", "tier_index"),
        # A run's queue in claim order: a claim walks it and stops at the first free phase.
        Index("ix_phases_run_queue", "run_id", "state", "tier_index", "phase_index", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str] = mapped_column(String(200))
    tier_id: Mapped[str] = mapped_column(String(200))
    tier_index: Mapped[int]
    phase_index: Mapped[int]
    name: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    task_category: Mapped[str] = mapped_column(String(40))
    complexity: Mapped[str] = mapped_column(String(20))
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    checks: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    retry_window_start: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    lease_seconds: Mapped[int | None]
    last_failure_reason: Mapped[str | None] = mapped_column(Text)
    failure_fingerprint: Mapped[str | None] = mapped_column(String(64))
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    """The commit that completed the phase, on the run's branch."""


class PhaseDependency(Base):
    """``depends_on`` edges inside a tier, as rows so a claim can test them in SQL."""

    __tablename__ = "phase_dependencies"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "phase_id"], ["phases.run_id", "phases.phase_id"], ondelete="CASCADE"
        ),
    )

    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    phase_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    depends_on: Mapped[str] = mapped_column(String(200), primary_key=True)


class PhaseAttempt(Base):
    """One row per attempt (and per requeue): the history a user debugs from."""

    __tablename__ = "phase_attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", "attempt"),
        ForeignKeyConstraint(
            ["run_id", "phase_id"], ["phases.run_id", "phases.phase_id"], ondelete="CASCADE"
        ),
        Index("ix_phase_attempts_claim_key", "claim_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(200))
    phase_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int]
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    claim_key: Mapped[str | None] = mapped_column(String(64))
    """The key of the claim that started the attempt: its retry gets this lease (0005)."""
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(40))
    stop_reason: Mapped[str | None] = mapped_column(String(80))
    max_tokens: Mapped[int | None]
    files_written: Mapped[list[str]] = mapped_column(JSON, default=list)
    check_results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    audit_verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    feedback: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    usage_key: Mapped[str | None] = mapped_column(String(64))
    """Idempotency key of the last usage report counted for this attempt (0003)."""
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    result_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    result_response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    base_sha: Mapped[str | None] = mapped_column(String(64))
    """The branch head the attempt's commit was made (or rebased) on."""


class ApprovalRequest(Base):
    __tablename__ = "approval_requests"
    __table_args__ = (Index("ix_approvals_pending", "status", "timeout_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int]
    reason: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20))
    on_timeout: Mapped[str] = mapped_column(String(20), default="fail")
    requested_at: Mapped[datetime]
    timeout_at: Mapped[datetime]
    responded_at: Mapped[datetime | None]
    responder: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)


class LlmUsageEvent(Base):
    """Every LLM call, failed ones included. ``input_tokens`` includes cache reads/writes."""

    __tablename__ = "llm_usage_events"
    __table_args__ = (
        Index("ix_usage_run_phase", "run_id", "phase_id"),
        Index("ux_llm_usage_events_idempotency_key", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(200))
    phase_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int | None]
    role: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    cache_read_tokens: Mapped[int | None]
    cache_write_tokens: Mapped[int | None]
    max_tokens: Mapped[int | None]
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    success: Mapped[bool] = mapped_column(Boolean)
    error_class: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(200))
    cost_usd: Mapped[float | None] = mapped_column(Float)
    provider_cost_usd: Mapped[float | None] = mapped_column(Float)
    price_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ts: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    body_digest: Mapped[str | None] = mapped_column(String(64))


class TokenEstimationEvent(Base):
    """One per Builder call: what the estimator predicted and what the model really used."""

    __tablename__ = "token_estimation_v2_events"
    __table_args__ = (
        Index("ix_estimation_run_phase", "run_id", "phase_id"),
        Index("ux_token_estimation_v2_events_idempotency_key", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(200))
    phase_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int]
    estimator_version: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(40))
    complexity: Mapped[str] = mapped_column(String(20))
    deliverable_count: Mapped[int]
    deliverables_json: Mapped[list[str]] = mapped_column(JSON, default=list)
    features: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    predicted_output_tokens: Mapped[int]
    predicted_p90_tokens: Mapped[int]
    selected_budget: Mapped[int]
    budget_decided_by: Mapped[str] = mapped_column(String(20))
    max_tokens_sent: Mapped[int]
    actual_output_tokens: Mapped[int | None]
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    parse_success: Mapped[bool | None] = mapped_column(Boolean)
    success: Mapped[bool | None] = mapped_column(Boolean)
    phase_outcome: Mapped[str | None] = mapped_column(String(40))
    smape_percent: Mapped[float | None] = mapped_column(Float)
    waste_ratio: Mapped[float | None] = mapped_column(Float)
    underestimated: Mapped[bool | None] = mapped_column(Boolean)
    ts: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    body_digest: Mapped[str | None] = mapped_column(String(64))


class TokenBudgetEscalationEvent(Base):
    __tablename__ = "token_budget_escalation_events"
    __table_args__ = (
        Index("ux_token_budget_escalation_events_idempotency_key", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(200))
    phase_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int]
    reason: Mapped[str] = mapped_column(String(40))
    factor: Mapped[float] = mapped_column(Float)
    old_budget: Mapped[int]
    new_budget: Mapped[int]
    ts: Mapped[datetime]
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    body_digest: Mapped[str | None] = mapped_column(String(64))


class EndedSession(Base):
    """A dashboard session logged out before it expired: its cookie opens nothing any more.

    Sessions are stateless HMACs (:mod:`autopack.api.auth`), so without this list a copied
    cookie stayed valid after its browser logged out. A row is kept until the session
    would have expired anyway."""

    __tablename__ = "ended_sessions"

    session_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
