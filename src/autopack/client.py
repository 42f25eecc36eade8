"""Typed HTTP client of the Autopack API, used by executors, scripts and the CLI.

Errors come back as the same :mod:`autopack.errors` classes the server raised (the JSON
body names the class), so a ``LeaseLost`` on the server is a ``LeaseLost`` here.
Connection failures become :class:`ServerUnavailable` naming the URL.
"""

from __future__ import annotations

from typing import Any

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
