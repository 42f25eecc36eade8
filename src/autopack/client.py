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

from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from autopack import errors
from autopack.contract import (
    ApprovalCreated,
    ApprovalIn,
    ApprovalView,
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
    RunList,
    RunView,
    UsageAnswer,
    UsageIn,
)
from autopack.errors import AutopackError, IdentityMismatch, ServerUnavailable
from autopack.identity import DbIdentity
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

if TYPE_CHECKING:
    from autopack.telemetry.summary import TelemetrySummary

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
M = TypeVar("M", bound=BaseModel)
_TELEMETRY_PATH = {"usage": "llm-usage", "estimation": "estimations", "escalation": "escalations"}
_ERROR_BY_STATUS: dict[int, type[AutopackError]] = {
    404: errors.NotFound,
    409: errors.Conflict,
    422: errors.InvalidInput,
    503: errors.SchemaOutOfDate,
}


def _error_from(response: httpx.Response) -> AutopackError:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    if not isinstance(body, dict):
        body = {"detail": body}
    name = body.pop("error", None)
    detail = body.pop("detail", None)
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, AutopackError)):
        cls = _ERROR_BY_STATUS.get(response.status_code, AutopackError)
    message = detail if isinstance(detail, str) else f"HTTP {response.status_code}: {detail}"
    return cls(f"{message} [{response.request.method} {response.request.url}]", **body)


def _seg(value: str) -> str:
    """One URL path segment (ids are URL-safe by validation; quote anyway)."""
    return quote(value, safe="")


def _phase_path(run_id: str, phase_id: str) -> str:
    return f"/runs/{_seg(run_id)}/phases/{_seg(phase_id)}"


class ApiClient:
    """A connection to one API server. Use as a context manager or call :meth:`close`.

    ``transport``: how to reach it when not over TCP (the CLI's in-process server listens
    on a Unix socket); ``where`` names the server in messages.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        where: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.where = where or f"API {self.base_url}"
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=2),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; any non-2xx answer is raised as the matching Autopack error."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"no answer from Autopack {self.where} ({exc.__class__.__name__}: {exc})",
                api_url=self.base_url,
            ) from exc
        if response.is_error:
            raise _error_from(response)
        return response

    def _call(self, answer: type[M], method: str, path: str, **kwargs: Any) -> M:
        return answer.model_validate_json(self.request(method, path, **kwargs).content)

    def _body(self, request: BaseModel) -> dict[str, Any]:
        return {
            "content": request.model_dump_json(),
            "headers": {"content-type": "application/json"},
        }

    # -- identity -----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``; a 503 (schema out of date, database gone) still returns its body."""
        try:
            response = self._http.get("/health")
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"no Autopack API answers at {self.base_url} ({exc.__class__.__name__})",
                api_url=self.base_url,
            ) from exc
        try:
            return Health.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServerUnavailable(
                f"{self.base_url}/health did not answer like an Autopack API "
                f"(HTTP {response.status_code})",
                api_url=self.base_url,
            ) from exc

    def verify_identity(self, local: DbIdentity) -> Health:
        """The handshake: raise unless the server's database is ``local``'s database."""
        health = self.health()
        remote = health.database
        if not local.same_database(remote):
            raise IdentityMismatch(
                "the API server and this process use different databases:\n"
                f"  this process: {local.url} (instance_id {local.instance_id})\n"
                f"  {self.where}: {remote.public_url} (instance_id {remote.instance_id})\n"
                "Point both at the same DATABASE_URL, or drop --api-url/AUTOPACK_API_URL to "
                "let Autopack start a server on the right database.",
                local_instance_id=local.instance_id,
                local_url=local.url,
                server_instance_id=remote.instance_id,
                server_url=remote.public_url,
                api_url=self.base_url,
            )
        return health

    # -- runs and phases ----------------------------------------------------------------------

    def create_run(self, definition: RunDefinition) -> RunView:
        """``POST /runs``: the new run (Conflict if the run_id exists)."""
        return self._call(RunView, "POST", "/runs", **self._body(definition))

    def get_run(self, run_id: str) -> RunView:
        return self._call(RunView, "GET", f"/runs/{_seg(run_id)}")

    def list_runs(self, state: RunState | None = None, limit: int = 50, offset: int = 0) -> RunList:
        """Run summaries, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = state.value
        return self._call(RunList, "GET", "/runs", params=params)

    def cancel_run(self, run_id: str, request: CancelIn) -> RunView:
        return self._call(RunView, "POST", f"/runs/{_seg(run_id)}/cancel", **self._body(request))

    def get_phase(self, run_id: str, phase_id: str) -> PhaseDetail:
        return self._call(PhaseDetail, "GET", _phase_path(run_id, phase_id))

    def requeue_phase(self, run_id: str, phase_id: str, request: RequeueIn) -> PhaseView:
        path = f"{_phase_path(run_id, phase_id)}/requeue"
        return self._call(PhaseView, "POST", path, **self._body(request))

    # -- the worker's calls -------------------------------------------------------------------

    def claim(self, request: ClaimIn) -> Claim | None:
        """``POST /claims``: a leased attempt, or None when nothing is claimable (HTTP 204)."""
        response = self.request("POST", "/claims", **self._body(request))
        if response.status_code == 204:
            return None
        return Claim.model_validate_json(response.content)

    def heartbeat(self, run_id: str, phase_id: str, beat: HeartbeatIn) -> LeaseRenewed:
        """Renew the lease; LeaseLost when it is gone."""
        path = f"{_phase_path(run_id, phase_id)}/heartbeat"
        return self._call(LeaseRenewed, "POST", path, **self._body(beat))

    def report_usage(self, run_id: str, phase_id: str, usage: UsageIn) -> UsageAnswer:
        """Add one LLM call's tokens and cost; the answer says whether the run's budget is spent."""
        path = f"{_phase_path(run_id, phase_id)}/usage"
        return self._call(UsageAnswer, "POST", path, **self._body(usage))

    def post_result(
        self, run_id: str, phase_id: str, result: ResultIn, *, idempotency_key: str | None = None
    ) -> ResultAnswer:
        """Finish the attempt. Safe to repeat with the same ``idempotency_key``: applied once."""
        body = self._body(result)
        if idempotency_key:
            body["headers"]["Idempotency-Key"] = idempotency_key
        return self._call(ResultAnswer, "POST", f"{_phase_path(run_id, phase_id)}/result", **body)

    def request_approval(self, run_id: str, phase_id: str, request: ApprovalIn) -> ApprovalCreated:
        """Park the phase for a human; the lease is released (stop heartbeating)."""
        path = f"{_phase_path(run_id, phase_id)}/approvals"
        return self._call(ApprovalCreated, "POST", path, **self._body(request))

    # -- approvals ----------------------------------------------------------------------------

    def list_approvals(
        self, status: ApprovalStatus | None = ApprovalStatus.PENDING, run_id: str | None = None
    ) -> list[ApprovalView]:
        """Approvals, oldest first; ``status=None`` for every status."""
        params: dict[str, Any] = {"status": status.value if status else "all"}
        if run_id is not None:
            params["run_id"] = run_id
        response = self.request("GET", "/approvals", params=params)
        return _APPROVALS.validate_json(response.content)

    def decide(self, approval_id: int, *, approve: bool, decision: DecisionIn) -> DecidedApproval:
        verb = "approve" if approve else "reject"
        path = f"/approvals/{int(approval_id)}/{verb}"
        return self._call(DecidedApproval, "POST", path, **self._body(decision))

    # -- telemetry ----------------------------------------------------------------------------

    def post_telemetry(self, event: TelemetryEvent) -> int:
        """Store one telemetry event; its row id."""
        path = f"/telemetry/{_TELEMETRY_PATH[kind_of(event)]}"
        response = self.request("POST", path, **self._body(event))
        row_id: int = response.json()["id"]
        return row_id

    def _events(self, kind: EventKind, run_id: str | None, limit: int, after_id: int) -> bytes:
        params: dict[str, Any] = {"kind": kind, "limit": limit, "after_id": after_id}
        if run_id is not None:
            params["run_id"] = run_id
        return self.request("GET", "/telemetry/events", params=params).content

    def usage_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[LlmUsageRow]:
        return _USAGE_ROWS.validate_json(self._events("usage", run_id, limit, after_id))

    def estimation_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[TokenEstimationRow]:
        return _ESTIMATION_ROWS.validate_json(self._events("estimation", run_id, limit, after_id))

    def escalation_events(
        self, run_id: str | None = None, limit: int = 500, after_id: int = 0
    ) -> list[TokenBudgetEscalationRow]:
        return _ESCALATION_ROWS.validate_json(self._events("escalation", run_id, limit, after_id))

    def all_estimation_events(self, run_id: str | None = None) -> list[TokenEstimationRow]:
        """Every estimation event, page by page."""
        found: list[TokenEstimationRow] = []
        while True:
            page = self.estimation_events(run_id, MAX_PAGE, found[-1].id if found else 0)
            found += page
            if len(page) < MAX_PAGE:
                return found

    def telemetry_summary(self, run_id: str | None = None) -> TelemetrySummary:
        from autopack.telemetry.summary import TelemetrySummary  # numpy: only when asked

        params = {"run_id": run_id} if run_id is not None else {}
        return self._call(TelemetrySummary, "GET", "/telemetry/summary", params=params)

    def telemetry_counts(self, run_id: str, phase_id: str) -> TelemetryCounts:
        params = {"run_id": run_id, "phase_id": phase_id}
        return self._call(TelemetryCounts, "GET", "/telemetry/counts", params=params)


MAX_PAGE = 10_000
_APPROVALS = TypeAdapter(list[ApprovalView])
_USAGE_ROWS = TypeAdapter(list[LlmUsageRow])
_ESTIMATION_ROWS = TypeAdapter(list[TokenEstimationRow])
_ESCALATION_ROWS = TypeAdapter(list[TokenBudgetEscalationRow])
