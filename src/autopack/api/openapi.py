"""The OpenAPI document is the contract: every error an operation can answer, in the shape
it really has, and documentation that works without the internet.

* Every route declares its error statuses with :func:`errors`, all answering
  :class:`ErrorAnswer` (``{error, detail, errors?, ...}``, what
  :mod:`autopack.api.errors` sends); FastAPI's ``HTTPValidationError`` never appears.
* :func:`contract_openapi` removes ``null`` from query parameters (a query string cannot
  say null: an absent parameter is the null) so ``?state=`` is not documented as valid.
* ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from the installed
  ``fastapi-offline`` package, served under ``/docs/assets``: no CDN.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

ASSETS = "/docs/assets"


class FieldProblem(BaseModel):
    """One invalid field: where (``tiers[0](T1).phases[2](p3).name``), why, and the value."""

    model_config = ConfigDict(extra="allow")

    field: str
    message: str
    value: Any = None


class ErrorAnswer(BaseModel):
    """Every error answer: the error's class (``LeaseLost``, ``InvalidInput``, …), a message
    a person can act on, and details by name."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="The Autopack error class, e.g. LeaseLost, InvalidInput.")
    detail: str
    errors: list[FieldProblem] | None = Field(None, description="Each invalid field (422).")
    database_instance_id: str | None = None


_WHY = {
    400: "The request cannot be read (e.g. a body that is not the JSON it claims to be).",
    401: "No token, or one this server does not know (a bearer token in the Authorization header).",
    403: "The token's role may not do this (the worker token on an operator endpoint), or "
    "a server without tokens refuses a client that is not on loopback.",
    404: "The run, phase or approval does not exist in this server's database.",
    409: "The request contradicts the current state (a stale lease, an existing run, a "
    "decided approval, an illegal transition, an idempotency key reused with another body), "
    "or this server serves another database than "
    "the one the client proved at its handshake (X-Autopack-Instance-Id, "
    "X-Autopack-Fingerprint).",
    413: "The body is larger than the server accepts.",
    422: "A field is invalid; ``errors`` names each field, why, and the value.",
    503: "The database is unreachable or not at this code's schema revision.",
    507: "The database has no room left to write (its disk is full); nothing was recorded.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses, each answering :class:`ErrorAnswer`."""
    return {status: {"model": ErrorAnswer, "description": _WHY[status]} for status in statuses}


READ = errors(422, 503)
"""A read: invalid parameters, the database unavailable."""
WRITE = errors(400, 413, 422, 503, 507)
"""A request with a JSON body: a write."""
SECURED = errors(401, 403, 409)
"""Behind a token: the token refused, or the client's proved database not this server's."""


def contract_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, cached, with query parameters that cannot be null."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                choices = schema.get("anyOf")
                if parameter.get("in") in ("query", "header") and isinstance(choices, list):
                    kept = [c for c in choices if c.get("type") != "null"]
                    if len(kept) == 1:
                        schema.pop("anyOf")
                        schema.update(kept[0])
    app.openapi_schema = document
    return document


def _static() -> Path:
    return Path(str(files("fastapi_offline").joinpath("static")))


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from local assets; create the app with
    ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=_static()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.openapi = lambda: contract_openapi(app)  # type: ignore[method-assign]


# -- links: how one answer feeds the next request (stateful testing follows them) -----------

_RUN = {"run_id": "$response.body#/run_id"}
_PHASE = {"run_id": "$response.body#/run_id", "phase_id": "$response.body#/phase_id"}
_LEASE = "$response.body#/lease_token"


def _link(operation: str, parameters: dict[str, str], body: Any = None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation, "parameters": parameters}
    if body is not None:
        link["requestBody"] = body
    return link


def links(*named: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"links": dict(named)}


RUN_LINKS = links(
    ("GetRun", _link("get_run", _RUN)),
    ("CancelRun", _link("cancel_run", _RUN)),
    ("ClaimFromRun", _link("claim", {}, {"worker_id": "linked", "run_id": _RUN["run_id"]})),
)
CLAIM_LINKS = links(
    ("GetPhase", _link("get_phase", _PHASE)),
    ("Heartbeat", _link("heartbeat", _PHASE, {"lease_token": _LEASE, "lease_seconds": 60})),
    ("Usage", _link("report_usage", _PHASE, {"lease_token": _LEASE, "tokens": 10})),
    (
        "Result",
        _link(
            "post_result",
            _PHASE,
            {"lease_token": _LEASE, "outcome": "COMPLETE", "stop_reason": "completed"},
        ),
    ),
    ("AskApproval", _link("request_approval", _PHASE, {"lease_token": _LEASE, "reason": "x"})),
    ("Requeue", _link("requeue_phase", _PHASE)),
)
APPROVAL_LINKS = links(
    ("Approve", _link("approve", {"approval_id": "$response.body#/approval_id"})),
    ("Reject", _link("reject", {"approval_id": "$response.body#/approval_id"})),
)
