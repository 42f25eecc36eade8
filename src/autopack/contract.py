"""The control plane's contract: every request and answer, typed, defined once.

The API routes declare these models, the control-plane services return them, the HTTP
client parses answers into them, and the executor reads them: a claim is a
:class:`Claim` from the database row to the worker thread, never a dict. States are the
enums of :mod:`autopack.states` (the only place states exist).

Requests ignore unknown fields, so the contract can grow without breaking older
executors; answers allow them, so an older client reads a newer server. The run
definition (:class:`~autopack.rundef.RunDefinition`) is the one request that forbids
unknown fields: a typo in a run file is an error.

Importing this module loads pydantic and nothing of the server: the client and the
executor import it on machines that never open a database.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from autopack.bounds import TEXT_MAX, CostUsd, Count, Finite, Int32, JsonTyped, Storable
from autopack.identity import PublicIdentity
from autopack.rundef import (
    MAX_LIST,
    Budgets,
    Complexity,
    Policy,
    Scope,
    TaskCategory,
    repository_from,
)
from autopack.states import (
    ApprovalStatus,
    AttemptOutcome,
    PhaseState,
    RunState,
    TierState,
)

LEASE_SECONDS_MIN = 5
LEASE_SECONDS_MAX = 3600
CommitSha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")]
"""A full git object name (SHA-1, or SHA-256)."""
USAGE_TOKENS_MAX = 100_000_000
"""One LLM call's tokens: far above any context window, far below INTEGER's range."""


class _Request(Storable):
    """Checked whole before it reaches a service (:class:`~autopack.bounds.Storable`: no
    NUL in a text field, no Infinity or NaN anywhere); VARCHARs are bounded field by field."""

    model_config = ConfigDict(extra="ignore")


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- what an attempt produces ------------------------------------------------------------------


OUTPUT_TAIL_MAX = 20_000
"""Characters of a check's output tail (the executor keeps its last 4,000, each NUL shown
as four): a worker token posting megabytes per attempt, which every read of the phase
then returned, is refused."""


class CheckResult(JsonTyped, _Answer):
    """One check command's run in the workspace: exit code and the tail of its output."""

    command: str = Field(max_length=10_000)
    exit_code: Int32 | None
    passed: bool
    timed_out: bool = False
    duration_s: Finite = Field(0.0, ge=0.0, le=1e9)
    output_tail: str = Field("", max_length=OUTPUT_TAIL_MAX)


def failed_checks_line(stop_reason: str, checks: Sequence[CheckResult]) -> str:
    """For an attempt its checks failed, its first failing check in one line (``run show``,
    the drain's progress and summary); else "". The Builder's feedback for it starts with
    a sentence for the LLM ("These checks failed ...; fix the code or tests so they pass:")
    that named no check where people read it."""
    failed = next((check for check in checks if not check.passed), None)
    if stop_reason != "checks_failed" or failed is None:
        return ""
    how = "timed out" if failed.timed_out else f"exit {failed.exit_code}"
    return f"check failed ({how}): {failed.command}"


class AuditVerdict(JsonTyped, _Answer):
    """The Auditor's (or the static rules') verdict on a change."""

    mode: str
    approved: bool
    issues: list[str] = Field(default_factory=list)
    summary: str = ""
    error: str | None = None
    """Set when an LLM verdict could not be parsed and the rules decided instead."""
    details: dict[str, Any] = Field(default_factory=dict)


# -- requests ----------------------------------------------------------------------------------


class CancelIn(_Request):
    reason: str | None = Field(None, max_length=2000)


class BranchCheckIn(_Request):
    repository: str = Field(min_length=1, max_length=2000)
    """The repository a drain moves the run's branch in (a URL or an absolute path, its
    symlinks resolved by the drain: the server cannot see the drain's file system)."""

    @field_validator("repository")
    @classmethod
    def _url_or_absolute_path(cls, value: str) -> str:
        return repository_from(None, value)


class RequeueIn(_Request):
    requested_by: str | None = Field(None, max_length=200)
    reason: str | None = Field(None, max_length=2000)
    complete: bool = False
    """Also requeue a COMPLETE phase (run it again; its run reopens): only on purpose."""


class ClaimIn(_Request):
    worker_id: str = Field(min_length=1, max_length=200)
    lease_seconds: int = Field(60, ge=LEASE_SECONDS_MIN, le=LEASE_SECONDS_MAX)
    run_id: str | None = Field(None, min_length=1, max_length=200)
    phase_id: str | None = Field(None, min_length=1, max_length=200)
    claim_key: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    """Sent again with a retried claim, it gets the lease the first try was granted (if this
    worker still holds it) instead of a second phase. :meth:`ApiClient.claim` sets one."""


class HeartbeatIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    lease_seconds: int | None = Field(None, ge=LEASE_SECONDS_MIN, le=LEASE_SECONDS_MAX)
    state: Literal[PhaseState.EXECUTING, PhaseState.CI_RUNNING] | None = None


ORDERED_USAGE_KEY = re.compile(r"[0-9a-f]{32}:[0-9]{8}")
"""``ATTEMPT-NONCE:SEQUENCE``: the keys an attempt gives its usage reports, in the order it
makes its calls, so a late copy of an earlier report (its first try answered after a
retry, arriving after a newer report) is known as old and not counted again."""


def ordered_usage_key(nonce: str, sequence: int) -> str:
    """The key of an attempt's ``sequence``-th usage report (see :data:`ORDERED_USAGE_KEY`)."""
    return f"{nonce}:{sequence:08d}"


class UsageIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    tokens: Count = Field(le=USAGE_TOKENS_MAX)
    cost_usd: CostUsd = 0.0
    idempotency_key: str | None = Field(
        default_factory=lambda: uuid.uuid4().hex,
        min_length=1,
        max_length=64,
        description="A retried report with the same key is counted once; keys of the form "
        "NONCE:SEQUENCE (32 hex digits, 8 digits) are an attempt's reports in order, and one "
        "older than the last counted is not counted either.",
    )


class ResultIn(_Request):
    """How an attempt ended, posted once with the lease token as fencing token."""

    lease_token: str = Field(min_length=1, max_length=64)
    outcome: Literal[PhaseState.COMPLETE, PhaseState.FAILED]
    stop_reason: str = Field(min_length=1, max_length=80)
    retryable: bool = True
    feedback: str | None = Field(None, max_length=TEXT_MAX)
    error: str | None = Field(None, max_length=TEXT_MAX)
    max_tokens: Count | None = None
    files_written: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list)
    """As many as an answer wrote (a deliverable may be a directory): the body's bound."""
    check_results: list[CheckResult] = Field(default_factory=list, max_length=MAX_LIST)
    audit_verdict: AuditVerdict | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    commit: CommitSha | None = None
    """COMPLETE: the attempt's commit, published under its attempt ref before posting."""
    base: CommitSha | None = None
    """The branch head ``commit`` was made on; accepted only while the branch is there."""

    @field_validator("details", "audit_verdict")
    @classmethod
    def _within_a_text_column(cls, value: Any) -> Any:
        """Stored as JSON and returned by every read of the phase: a worker token posted
        megabytes there per attempt. The executor's own (a summary, a verdict from an
        answer of bounded tokens) are far smaller."""
        shown = value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)
        if len(shown) > TEXT_MAX:
            raise ValueError(f"is {len(shown)} characters as JSON, more than {TEXT_MAX}")
        return value


MAX_APPROVAL_REASON = 10_000


class ApprovalIn(_Request):
    lease_token: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=MAX_APPROVAL_REASON)
    context: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(None, gt=0, le=30 * 24 * 3600)


class DecisionIn(_Request):
    responder: str = Field(min_length=1, max_length=200)
    note: str | None = Field(None, max_length=10_000)


# -- answers -----------------------------------------------------------------------------------


class PhaseView(_Answer):
    run_id: str
    phase_id: str
    tier_id: str
    tier_index: int
    phase_index: int
    name: str
    description: str
    task_category: TaskCategory
    complexity: Complexity
    scope: Scope
    checks: list[str]
    depends_on: list[str]
    state: PhaseState
    attempts: int
    """Attempts made (requeues included); the history is :attr:`PhaseDetail.history`."""
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
    commit_sha: str | None = None
    """COMPLETE: the phase's commit on the run's branch."""


class AttemptView(_Answer):
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    stop_reason: str | None
    max_tokens: int | None
    files_written: list[str]
    check_results: list[CheckResult]
    audit_verdict: AuditVerdict | None
    feedback: str | None
    error: str | None
    details: dict[str, Any]
    tokens_used: int
    cost_usd: float
    commit_sha: str | None = None
    base_sha: str | None = None


class ApprovalView(_Answer):
    id: int
    run_id: str
    phase_id: str
    attempt: int
    reason: str
    context: dict[str, Any]
    status: ApprovalStatus
    on_timeout: Literal["fail", "requeue"]
    requested_at: datetime
    timeout_at: datetime
    responded_at: datetime | None
    responder: str | None
    note: str | None


class DecidedApproval(ApprovalView):
    phase_state: PhaseState


class PhaseDetail(PhaseView):
    """A phase with every attempt (oldest first) and its approvals."""

    history: list[AttemptView]
    approvals: list[ApprovalView]


class TierView(_Answer):
    tier_id: str
    tier_index: int
    name: str
    state: TierState
    phases: list[PhaseView]


class RunSummary(_Answer):
    run_id: str
    state: RunState
    goal: str
    tokens_used: int
    cost_usd: float
    unpriced_calls: int = 0
    """LLM calls of models without a price: their cost is unknown, not in ``cost_usd``."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    phase_count: int
    counts: dict[PhaseState, int]
    repository: str | None = None
    branch: str | None = None
    branch_head: str | None = None
    """The last commit accepted onto the run's branch (None before the first)."""

    def cost(self, places: int = 2) -> str:
        """What the run cost as a reader should see it: ``$0.00`` alone hid the calls of
        models without a price, whose cost is unknown."""
        said = f"${self.cost_usd:.{places}f}"
        if self.unpriced_calls:
            said += f" + {self.unpriced_calls} unpriced call(s)"
        return said


class RunView(RunSummary):
    budgets: Budgets
    policy: Policy
    tiers: list[TierView]
    drained_in: str | None = None
    """The repository a drain's ``--repo``/``--workspace`` last named when it was not
    ``repository`` (no password): the branch check holds there too while the run is active,
    so ``run show`` says so (a 409 naming this run there was a riddle otherwise)."""

    def phases(self) -> list[PhaseView]:
        """Every phase, in tier then phase order."""
        return [phase for tier in self.tiers for phase in tier.phases]

    def blockers(self, phase: PhaseView) -> list[str]:
        """Why ``phase``, QUEUED, cannot be claimed: unfinished earlier tiers or dependencies."""
        reasons = []
        states = {p.phase_id: (p.state, p.tier_index) for p in self.phases()}
        earlier = sorted(
            pid
            for pid, (state, index) in states.items()
            if index < phase.tier_index and state != PhaseState.COMPLETE
        )
        if earlier:
            reasons.append("earlier tiers are not complete: " + ", ".join(earlier))
        waiting = [
            d for d in phase.depends_on if d not in states or states[d][0] != PhaseState.COMPLETE
        ]
        if waiting:
            reasons.append("depends on phases not complete: " + ", ".join(waiting))
        return reasons


Item = TypeVar("Item", bound=BaseModel)


class Page(_Answer, Generic[Item]):
    """One page of a list: its items, how many the list holds in all, and the page asked
    for (the next one starts at ``offset + limit`` while that is below ``total``)."""

    items: list[Item]
    total: int
    limit: int
    offset: int


class RunList(Page[RunSummary]):
    """Run summaries, newest first."""


class RunBrief(_Answer):
    """What a claim carries about its run: enough to check budgets before an LLM call."""

    state: RunState
    goal: str
    budgets: Budgets
    policy: Policy
    tokens_used: int
    cost_usd: float
    repository: str | None = None
    branch: str | None = None
    branch_head: str | None = None


class ApprovedChange(_Answer):
    approval_id: int
    reason: str
    context: dict[str, Any]
    responder: str | None
    note: str | None


class Claim(_Answer):
    """A leased attempt: the token every later call about it must carry."""

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

    @property
    def idempotency_key(self) -> str:
        """The key a result for this attempt is posted under (applied once, however often)."""
        return f"{self.run_id}:{self.phase_id}:{self.attempt}"


class LeaseRenewed(_Answer):
    lease_expires_at: datetime
    state: PhaseState


class RunBudget(_Answer):
    state: RunState
    tokens_used: int
    cost_usd: float
    token_cap: int | None
    cost_cap_usd: float | None
    budget_exhausted: bool
    reason: str | None


class PhaseUsage(_Answer):
    tokens_used: int
    cost_usd: float


class UsageAnswer(_Answer):
    run: RunBudget
    phase: PhaseUsage


class ResultAnswer(_Answer):
    run_id: str
    phase_id: str
    attempt: int
    phase_state: PhaseState
    run_state: RunState
    requeued: bool
    available_at: datetime | None
    branch_head: str | None = None
    """The run's branch head after this result (the attempt's commit when it was accepted)."""
    stop_reason: str | None = None
    """The stop reason recorded for the attempt: a repeat of a post gets the first one's
    (an executor's ``interrupted`` hand-back may have been recorded before the attempt's
    own result). None in answers stored before it was added."""


class ApprovalList(Page[ApprovalView]):
    """Approvals, oldest first."""


class ApprovalCreated(_Answer):
    approval_id: int
    timeout_at: datetime
    phase_state: PhaseState
    approval: ApprovalView


INSTANCE_HEADER = "X-Autopack-Instance-Id"
FINGERPRINT_HEADER = "X-Autopack-Fingerprint"
"""The database a client proved at its handshake (instance_id and fingerprint: a copied
file or a restored dump keeps the instance_id), sent on every later request: a server
restarted on another database behind the same URL refuses it (409 IdentityMismatch)
instead of answering from, and writing to, a database the client never checked."""


class Health(_Answer):
    """``GET /health``: liveness and which database the server uses (the handshake)."""

    status: Literal["ok", "schema_out_of_date", "unavailable"]
    version: str
    database: PublicIdentity
    error: str | None = None
