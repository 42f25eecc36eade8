"""Typed HTTP client of the Autopack API, used by executors, scripts and the CLI.

Errors come back as the same :mod:`autopack.errors` classes the server raised (the JSON
body names the class), so a ``LeaseLost`` on the server is a ``LeaseLost`` here.
Connection failures become :class:`ServerUnavailable` naming the URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from autopack import errors
from autopack.db.identity import DbIdentity
from autopack.errors import AutopackError, IdentityMismatch, ServerUnavailable

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


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
        cls = {
            404: errors.NotFound,
            409: errors.Conflict,
            422: errors.InvalidInput,
            503: errors.SchemaOutOfDate,
        }.get(response.status_code, AutopackError)
    message = detail if isinstance(detail, str) else f"HTTP {response.status_code}: {detail}"
    return cls(f"{message} [{response.request.method} {response.request.url}]", **body)


def _seg(value: str) -> str:
    """One URL path segment (ids are URL-safe by validation; quote anyway)."""
    return quote(value, safe="")


def _phase_path(run_id: str, phase_id: str) -> str:
    return f"/runs/{_seg(run_id)}/phases/{_seg(phase_id)}"


class ApiClient:
    """A connection to one API server. Use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=httpx.HTTPTransport(retries=2),
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
                f"no answer from Autopack API at {self.base_url} ({exc.__class__.__name__}: {exc})",
                api_url=self.base_url,
            ) from exc
        if response.is_error:
            raise _error_from(response)
        return response

    def health(self) -> dict[str, Any]:
        """``GET /health``; a 503 (schema out of date, database gone) still returns its body."""
        try:
            response = self._http.get("/health")
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"no Autopack API answers at {self.base_url} ({exc.__class__.__name__})",
                api_url=self.base_url,
            ) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise ServerUnavailable(
                f"{self.base_url}/health did not answer like an Autopack API "
                f"(HTTP {response.status_code})",
                api_url=self.base_url,
            ) from exc
        if "database" not in body:
            raise ServerUnavailable(
                f"{self.base_url}/health did not answer like an Autopack API", api_url=self.base_url
            )
        return body

    def verify_identity(self, local: DbIdentity) -> dict[str, Any]:
        """The handshake: raise unless the server's database is ``local``'s database."""
        body = self.health()
        remote = body["database"]
        if not local.same_database(remote):
            raise IdentityMismatch(
                "the API server and this process use different databases:\n"
                f"  this process: {local.url} (instance_id {local.instance_id})\n"
                f"  API server {self.base_url}: {remote.get('public_url')} "
                f"(instance_id {remote.get('instance_id')})\n"
                "Point both at the same DATABASE_URL, or drop --api-url/AUTOPACK_API_URL to "
                "let Autopack start a server on the right database.",
                local_instance_id=local.instance_id,
                local_url=local.url,
                server_instance_id=remote.get("instance_id"),
                server_url=remote.get("public_url"),
                api_url=self.base_url,
            )
        return body

    # -- control plane: runs, phases, claims, approvals (JSON shapes: docs/ARCHITECTURE.md) --
    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def create_run(self, definition: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """``POST /runs``: the RunView of the new run (Conflict if the run_id exists)."""
        body = (
            definition.model_dump(mode="json") if isinstance(definition, BaseModel) else definition
        )
        run: dict[str, Any] = self._json("POST", "/runs", json=body)
        return run

    def get_run(self, run_id: str) -> dict[str, Any]:
        """``GET /runs/{run_id}``: the RunView (tiers, phases, counts)."""
        run: dict[str, Any] = self._json("GET", f"/runs/{_seg(run_id)}")
        return run

    def list_runs(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """``GET /runs``: ``{items: [run summary], total, limit, offset}``, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = state
        page: dict[str, Any] = self._json("GET", "/runs", params=params)
        return page

    def cancel_run(self, run_id: str, reason: str | None = None) -> dict[str, Any]:
        run: dict[str, Any] = self._json(
            "POST", f"/runs/{_seg(run_id)}/cancel", json={"reason": reason}
        )
        return run

    def get_phase(self, run_id: str, phase_id: str) -> dict[str, Any]:
        """PhaseView whose ``attempts`` is the attempt history; the count is ``attempt_count``."""
        phase: dict[str, Any] = self._json("GET", _phase_path(run_id, phase_id))
        return phase

    def requeue_phase(
        self,
        run_id: str,
        phase_id: str,
        *,
        requested_by: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        phase: dict[str, Any] = self._json(
            "POST",
            f"{_phase_path(run_id, phase_id)}/requeue",
            json={"requested_by": requested_by, "reason": reason},
        )
        return phase

    def claim(
        self,
        worker_id: str,
        lease_seconds: int = 60,
        *,
        run_id: str | None = None,
        phase_id: str | None = None,
    ) -> dict[str, Any] | None:
        """``POST /claims``: the claim (lease_token, phase, history, run, approved_change), or
        None when nothing is claimable (HTTP 204)."""
        body: dict[str, Any] = {"worker_id": worker_id, "lease_seconds": lease_seconds}
        if run_id is not None:
            body["run_id"] = run_id
        if phase_id is not None:
            body["phase_id"] = phase_id
        response = self.request("POST", "/claims", json=body)
        if response.status_code == 204:
            return None
        claimed: dict[str, Any] = response.json()
        return claimed

    def heartbeat(
        self,
        run_id: str,
        phase_id: str,
        lease_token: str,
        *,
        lease_seconds: int | None = None,
        state: str | None = None,
    ) -> dict[str, Any]:
        """Renew the lease: ``{lease_expires_at, state}``; LeaseLost when it is gone."""
        body: dict[str, Any] = {"lease_token": lease_token}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if state is not None:
            body["state"] = state
        answer: dict[str, Any] = self._json(
            "POST", f"{_phase_path(run_id, phase_id)}/heartbeat", json=body
        )
        return answer

    def report_usage(
        self, run_id: str, phase_id: str, lease_token: str, *, tokens: int, cost_usd: float = 0.0
    ) -> dict[str, Any]:
        """Add one LLM call: ``{run: {tokens_used, cost_usd, token_cap, cost_cap_usd,
        budget_exhausted, reason}, phase: {tokens_used, cost_usd}}``."""
        answer: dict[str, Any] = self._json(
            "POST",
            f"{_phase_path(run_id, phase_id)}/usage",
            json={"lease_token": lease_token, "tokens": tokens, "cost_usd": cost_usd},
        )
        return answer

    def post_result(
        self,
        run_id: str,
        phase_id: str,
        *,
        lease_token: str,
        outcome: str,
        stop_reason: str,
        idempotency_key: str | None = None,
        retryable: bool = True,
        feedback: str | None = None,
        error: str | None = None,
        max_tokens: int | None = None,
        files_written: Sequence[str] = (),
        check_results: Sequence[Mapping[str, Any]] = (),
        audit_verdict: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Finish the attempt (COMPLETE or FAILED). Safe to repeat with the same
        ``idempotency_key`` (convention: ``"{run}:{phase}:{attempt}"``): applied once."""
        body = {
            "lease_token": lease_token,
            "outcome": outcome,
            "stop_reason": stop_reason,
            "retryable": retryable,
            "feedback": feedback,
            "error": error,
            "max_tokens": max_tokens,
            "files_written": list(files_written),
            "check_results": [dict(c) for c in check_results],
            "audit_verdict": dict(audit_verdict) if audit_verdict is not None else None,
            "details": dict(details or {}),
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer: dict[str, Any] = self._json(
            "POST", f"{_phase_path(run_id, phase_id)}/result", json=body, headers=headers
        )
        return answer

    def request_approval(
        self,
        run_id: str,
        phase_id: str,
        *,
        lease_token: str,
        reason: str,
        context: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Park the phase for a human: ``{approval_id, timeout_at, phase_state, approval}``;
        the lease is released (stop heartbeating)."""
        body: dict[str, Any] = {
            "lease_token": lease_token,
            "reason": reason,
            "context": dict(context or {}),
        }
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        answer: dict[str, Any] = self._json(
            "POST", f"{_phase_path(run_id, phase_id)}/approvals", json=body
        )
        return answer

    def list_approvals(
        self, status: str | None = "pending", run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Approvals, oldest first; ``status=None`` (or ``"all"``) for every status."""
        params: dict[str, Any] = {"status": status or "all"}
        if run_id is not None:
            params["run_id"] = run_id
        approvals: list[dict[str, Any]] = self._json("GET", "/approvals", params=params)
        return approvals

    def approve(self, approval_id: int, responder: str, note: str | None = None) -> dict[str, Any]:
        decided: dict[str, Any] = self._json(
            "POST",
            f"/approvals/{int(approval_id)}/approve",
            json={"responder": responder, "note": note},
        )
        return decided

    def reject(self, approval_id: int, responder: str, note: str | None = None) -> dict[str, Any]:
        decided: dict[str, Any] = self._json(
            "POST",
            f"/approvals/{int(approval_id)}/reject",
            json={"responder": responder, "note": note},
        )
        return decided

    # -- telemetry ---------------------------------------------------------------------
    def post_telemetry(self, kind: str, event: BaseModel) -> int:
        """POST one telemetry event (kind: llm-usage, estimations, escalations); its row id."""
        response = self.request(
            "POST",
            f"/telemetry/{kind}",
            content=event.model_dump_json(),
            headers={"content-type": "application/json"},
        )
        row_id: int = response.json()["id"]
        return row_id

    def telemetry_events(
        self, kind: str = "usage", run_id: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"kind": kind, "limit": limit}
        if run_id is not None:
            params["run_id"] = run_id
        events: list[dict[str, Any]] = self.request(
            "GET", "/telemetry/events", params=params
        ).json()
        return events
