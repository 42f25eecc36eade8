"""Typed HTTP client of the Autopack API, used by executors, scripts and the CLI.

Every answer is parsed into its model of :mod:`autopack.contract` (a claim is a
:class:`~autopack.contract.Claim`, never a dict). Errors come back as the same
:mod:`autopack.errors` classes the server raised (the JSON body names the class), so a
``LeaseLost`` on the server is a ``LeaseLost`` here; connection failures become
:class:`~autopack.errors.ServerUnavailable` naming the URL.

Get a client with :func:`autopack.connect.connect`, which proves the server uses the
caller's database before handing it out. Importing this module loads httpx and pydantic,
never SQLAlchemy: it runs on machines that only talk to an API.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from autopack import redact
from autopack.bounds import ID_PATTERN
from autopack.contract import (
    ApprovalCreated,
    ApprovalIn,
    ApprovalList,
    ApprovalView,
    BranchCheckIn,
    CancelIn,
    Claim,
    ClaimIn,
    DecidedApproval,
    DecisionIn,
    Health,
    HeartbeatIn,
    LeaseRenewed,
    PhaseDetail,
    PhaseView,
    RequeueIn,
    ResultAnswer,
    ResultIn,
    RunBrief,
    RunList,
    RunView,
    UsageAnswer,
    UsageIn,
)
from autopack.errors import (
    DatabaseUnavailable,
    IdentityMismatch,
    InvalidInput,
    SchemaOutOfDate,
    ServerUnavailable,
)
from autopack.identity import DbIdentity, PublicIdentity
from autopack.rundef import RunDefinition
from autopack.states import ApprovalStatus, RunState
from autopack.telemetry.events import (
    EventKind,
    LlmUsageRow,
    TelemetryCounts,
    TelemetryEvent,
    TokenBudgetEscalationRow,
    TokenEstimationRow,
    kind_of,
)
from autopack.transport import DEFAULT_TIMEOUT, Transport

if TYPE_CHECKING:
    from autopack.telemetry.summary import TelemetrySummary

HEARTBEAT_RETRY_SECONDS = 5.0
"""A heartbeat is retried briefly: the lease's own loop tries again a third of a lease later."""
TELEMETRY_RETRY_SECONDS = 5.0
"""Telemetry still unwritten after this is queued by the recorder and retried later."""
MAX_HEALTH_BYTES = 64 * 1024
"""A ``/health`` answer is a few hundred bytes; a longer one is not from Autopack."""
R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
PATIENT_TRIES = 5


def patiently(call: Callable[[], T]) -> T:
    """``call()``, made again while the API is unreachable: the client retries each call
    for its ten seconds, and a restarted server may take longer to come back. For what an
    attempt cannot end without: its result, and the accepted head that decides whether
    its checks moved the run's branch."""
    for attempt in range(PATIENT_TRIES):
        try:
            return call()
        except ServerUnavailable:
            if attempt == PATIENT_TRIES - 1:
                raise
            time.sleep(2**attempt * 0.2)
    raise AssertionError("unreachable")


_TELEMETRY_PATH = {"usage": "llm-usage", "estimation": "estimations", "escalation": "escalations"}


def _seg(value: str, name: str = "run id") -> str:
    """One URL path segment. An id that cannot exist is refused here, naming it: as a path
    segment, '' or '..' reached another route (or none) and came back as a puzzle."""
    if len(value) > 200:
        raise InvalidInput(
            f"{name} {value[:40]!r}… is too long for an id ({len(value)} characters; at most 200)",
            field=name,
        )
    if not re.fullmatch(ID_PATTERN, value):
        raise InvalidInput(
            f"{name} {value!r} is not an id: ids use only letters, digits, '.', '_' and '-', "
            "and start with a letter or digit",
            field=name,
        )
    return quote(value, safe="")


def _phase_path(run_id: str, phase_id: str) -> str:
    return f"/runs/{_seg(run_id)}/phases/{_seg(phase_id, 'phase id')}"


class ApiClient(Transport):
    """The Autopack API's calls, each typed by the contract (see :class:`Transport` for
    the connection's arguments).

    **Retries.** The executor's calls (claim, heartbeat, usage, result, approval request,
    telemetry) and every read are retried on a 5xx (but not a schema error) and on a
    dropped connection, with exponential backoff and full jitter, for a bounded time; then
    they fail as :class:`ServerUnavailable`. Repeating them is safe: a result carries its
    Idempotency-Key, usage reports and telemetry events their own keys, a heartbeat or an
    approval request under the same lease token is applied once, and a claim whose answer
    was lost only leaves a lease that expires. An operator's writes (create, cancel,
    requeue, decide) are not repeated: a 5xx there is reported as it came.
    """

    # -- identity -----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``; a 503 (schema out of date, database gone) still returns its body."""
        body = b""
        # Whatever holds the port answers: read no more than an Autopack answer needs, and
        # for no longer than one read may take (a server dripping a byte a second never
        # tripped the per-read timeout, and held the command for ever).
        limit = self._http.timeout.read or DEFAULT_TIMEOUT.read or 30.0
        deadline = time.monotonic() + limit
        try:
            with self._http.stream("GET", "/health") as response:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_HEALTH_BYTES:
                        body = b""
                        break
                    if time.monotonic() > deadline:
                        raise ServerUnavailable(
                            f"{self.base_url}/health did not finish answering within "
                            f"{limit:g} s: not an Autopack API",
                            api_url=self.base_url,
                        )
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"no Autopack API answers at {self.base_url} ({exc.__class__.__name__})",
                api_url=self.base_url,
            ) from exc
        try:
            return Health.model_validate_json(body)
        except ValidationError as exc:
            raise ServerUnavailable(
                f"{self.base_url}/health did not answer like an Autopack API "
                f"(HTTP {response.status_code})",
                api_url=self.base_url,
            ) from exc

    def verify_identity(
        self, local: DbIdentity | None, *, instance_id: str | None = None
    ) -> Health:
        """The handshake: raise unless the server's database is ``local``'s (the same
        fingerprint) and, when ``instance_id`` is pinned (``AUTOPACK_EXPECTED_INSTANCE_ID``),
        that one. ``local`` None is a client that names no database of its own: the one
        this server serves is its database, and must be ready (no schema guard of its own
        ran: an out-of-date schema is exit 3 here, as it is for a client naming it)."""
        health = self.health()
        remote = health.database
        if local is None and health.status != "ok":
            problem = health.error or health.status.replace("_", " ")
            stale = health.status == "schema_out_of_date"
            raise (SchemaOutOfDate if stale else DatabaseUnavailable)(
                f"{self.where} serves {remote.describe()}: {problem}"
                + ("; fix: `autopack db upgrade` where that database is" if stale else ""),
                api_url=self.base_url,
                server_instance_id=remote.instance_id,
            )
        if local is not None and not local.same_database(remote):
            raise self._mismatch(
                remote,
                expected=local.describe(),
                fix="Point both at the same DATABASE_URL, or drop --api-url/AUTOPACK_API_URL "
                "to let Autopack start a server on the right database.",
                local_instance_id=local.instance_id,
                local_url=local.url,
            )
        if instance_id is not None and remote.instance_id != instance_id:
            raise self._mismatch(
                remote,
                expected=f"instance_id {instance_id} (AUTOPACK_EXPECTED_INSTANCE_ID)",
                fix="Point AUTOPACK_API_URL at the server of that database, or set "
                "AUTOPACK_EXPECTED_INSTANCE_ID to the instance_id `autopack db identity` "
                "prints where the database is.",
                local_instance_id=instance_id,
            )
        return health

    def _mismatch(
        self, remote: PublicIdentity, *, expected: str, fix: str, **details: str
    ) -> IdentityMismatch:
        return IdentityMismatch(
            "the API server and this process use different databases:\n"
            f"  this process: {expected}\n"
            f"  {self.where}: {remote.describe()}\n{fix}",
            server_instance_id=remote.instance_id,
            server_url=remote.public_url,
            api_url=self.base_url,
            **details,
        )

    # -- runs and phases ----------------------------------------------------------------------

    def create_run(self, definition: RunDefinition) -> RunView:
        """``POST /runs``: the new run (Conflict if the run_id exists)."""
        return self._call(RunView, "POST", "/runs", **self._body(definition))

    def check_branch(self, run_id: str, repository: str) -> RunView:
        """``POST /runs/{id}/branch-check``: Conflict if another active run works on this
        run's branch of ``repository``."""
        body = self._body(BranchCheckIn(repository=repository))
        return self._call(RunView, "POST", f"/runs/{_seg(run_id)}/branch-check", **body)

    def get_run(self, run_id: str) -> RunView:
        return self._get(RunView, f"/runs/{_seg(run_id)}")

    def get_run_brief(self, run_id: str) -> RunBrief:
        """The run without its phases (:func:`autopack.control.runs.get_run_brief`)."""
        return self._get(RunBrief, f"/runs/{_seg(run_id)}/brief")

    def list_runs(self, state: RunState | None = None, limit: int = 50, offset: int = 0) -> RunList:
        """Run summaries, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = state.value
        return self._get(RunList, "/runs", params=params)

    def cancel_run(self, run_id: str, request: CancelIn) -> RunView:
        return self._call(RunView, "POST", f"/runs/{_seg(run_id)}/cancel", **self._body(request))

    def get_phase(self, run_id: str, phase_id: str) -> PhaseDetail:
        return self._get(PhaseDetail, _phase_path(run_id, phase_id))

    def requeue_phase(self, run_id: str, phase_id: str, request: RequeueIn) -> PhaseView:
        path = f"{_phase_path(run_id, phase_id)}/requeue"
        return self._call(PhaseView, "POST", path, **self._body(request))

    # -- the worker's calls -------------------------------------------------------------------

    def claim(self, request: ClaimIn) -> Claim | None:
        """``POST /claims``: a leased attempt, or None when nothing is claimable (HTTP 204).

        Retried under a key of its own (a try whose answer was lost may have been granted:
        the retry gets that lease, not a second one)."""
        if request.claim_key is None:
            request = request.model_copy(update={"claim_key": uuid.uuid4().hex})
        body = self._body(request)
        response = self.request("POST", "/claims", retry_for=self.retry_seconds, **body)
        if response.status_code == 204:
            return None
        return self._parsed(Claim.model_validate_json, response)

    def heartbeat(self, run_id: str, phase_id: str, beat: HeartbeatIn) -> LeaseRenewed:
        """Renew the lease; LeaseLost when it is gone."""
        path = f"{_phase_path(run_id, phase_id)}/heartbeat"
        retry_for = min(self.retry_seconds, HEARTBEAT_RETRY_SECONDS)
        return self._call(LeaseRenewed, "POST", path, retry_for=retry_for, **self._body(beat))

    def report_usage(self, run_id: str, phase_id: str, usage: UsageIn) -> UsageAnswer:
        """Add one LLM call's tokens and cost; the answer says whether the run's budget is
        spent. Retried under the report's idempotency key: counted once."""
        path = f"{_phase_path(run_id, phase_id)}/usage"
        body = self._body(usage)
        return self._call(UsageAnswer, "POST", path, retry_for=self.retry_seconds, **body)

    def post_result(
        self, run_id: str, phase_id: str, result: ResultIn, *, idempotency_key: str | None = None
    ) -> ResultAnswer:
        """Finish the attempt. Safe to repeat with the same ``idempotency_key``: applied once
        (and retried here on a 5xx or a dropped connection). Secrets in its errors and
        output are redacted before it is sent."""
        body = self._body(result, redacted=True)
        if idempotency_key:
            body["headers"]["Idempotency-Key"] = idempotency_key
        path = f"{_phase_path(run_id, phase_id)}/result"
        retry_for = self.retry_seconds if idempotency_key else 0.0
        return self._call(ResultAnswer, "POST", path, retry_for=retry_for, **body)

    def request_approval(self, run_id: str, phase_id: str, request: ApprovalIn) -> ApprovalCreated:
        """Park the phase for a human; the lease is released (stop heartbeating).

        The reason is redacted; the context is not: it holds the change to apply once
        approved, and redacted, an approved file holding what looks like a key (a test's
        fixture ``sk-ant-api03-...``) was committed with ``[REDACTED]`` in its place, while
        the same answer needing no approval was committed as written."""
        path = f"{_phase_path(run_id, phase_id)}/approvals"
        said = request.model_copy(update={"reason": redact.text(request.reason)})
        body = self._body(said)
        return self._call(ApprovalCreated, "POST", path, retry_for=self.retry_seconds, **body)

    # -- approvals ----------------------------------------------------------------------------

    def list_approvals(
        self,
        status: ApprovalStatus | None = ApprovalStatus.PENDING,
        run_id: str | None = None,
        limit: int = 500,
        offset: int = 0,
    ) -> ApprovalList:
        """One page of approvals, oldest first; ``status=None`` for every status."""
        params: dict[str, Any] = {
            "status": status.value if status else "all",
            "limit": limit,
            "offset": offset,
        }
        if run_id is not None:
            params["run_id"] = run_id
        return self._get(ApprovalList, "/approvals", params=params)

    def get_approval(self, approval_id: int) -> ApprovalView:
        """One approval, whatever its status."""
        return self._call(ApprovalView, "GET", f"/approvals/{int(approval_id)}")

    def decide(self, approval_id: int, *, approve: bool, decision: DecisionIn) -> DecidedApproval:
        verb = "approve" if approve else "reject"
        path = f"/approvals/{int(approval_id)}/{verb}"
        return self._call(DecidedApproval, "POST", path, **self._body(decision))

    # -- telemetry ----------------------------------------------------------------------------

    def post_telemetry(self, event: TelemetryEvent) -> int:
        """Store one telemetry event (redacted; stored once under its idempotency key, so
        retrying it is safe); its row id."""
        path = f"/telemetry/{_TELEMETRY_PATH[kind_of(event)]}"
        retry_for = min(self.retry_seconds, TELEMETRY_RETRY_SECONDS)
        body = self._body(event, redacted=True)
        response = self.request("POST", path, retry_for=retry_for, **body)
        row_id: int = response.json()["id"]
        return row_id

    def _events(
        self,
        rows: TypeAdapter[list[R]],
        kind: EventKind,
        run_id: str | None,
        limit: int,
        after_id: int,
    ) -> list[R]:
        params: dict[str, Any] = {"kind": kind, "limit": limit, "after_id": after_id}
        if run_id is not None:
            params["run_id"] = run_id
        retry_for = self.retry_seconds
        response = self.request("GET", "/telemetry/events", retry_for=retry_for, params=params)
        return self._parsed(rows.validate_json, response)

    def usage_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[LlmUsageRow]:
        return self._events(_USAGE_ROWS, "usage", run_id, limit, after_id)

    def estimation_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[TokenEstimationRow]:
        return self._events(_ESTIMATION_ROWS, "estimation", run_id, limit, after_id)

    def escalation_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[TokenBudgetEscalationRow]:
        return self._events(_ESCALATION_ROWS, "escalation", run_id, limit, after_id)

    def all_estimation_events(
        self, run_id: str | None = None, read: Callable[[int], object] | None = None
    ) -> list[TokenEstimationRow]:
        """Every estimation event, page by page; ``read`` is told how many so far."""
        found: list[TokenEstimationRow] = []
        while True:
            page = self.estimation_events(run_id, MAX_PAGE, found[-1].id if found else 0)
            found += page
            if read is not None:
                read(len(found))
            if len(page) < MAX_PAGE:
                return found

    def telemetry_summary(self, run_id: str | None = None) -> TelemetrySummary:
        from autopack.telemetry.summary import TelemetrySummary  # numpy: only when asked

        params = {"run_id": run_id} if run_id is not None else {}
        return self._get(TelemetrySummary, "/telemetry/summary", params=params)

    def telemetry_counts(self, run_id: str, phase_id: str) -> TelemetryCounts:
        params = {"run_id": run_id, "phase_id": phase_id}
        return self._get(TelemetryCounts, "/telemetry/counts", params=params)


MAX_PAGE = 10_000
_USAGE_ROWS = TypeAdapter(list[LlmUsageRow])
_ESTIMATION_ROWS = TypeAdapter(list[TokenEstimationRow])
_ESCALATION_ROWS = TypeAdapter(list[TokenBudgetEscalationRow])
