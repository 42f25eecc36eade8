"""Errors leave the API in one shape: ``{error, detail, ...}`` with the right status.

Every :class:`~autopack.errors.AutopackError` answers with its class name, message and
details (plus which database answered); FastAPI's request validation errors are turned
into :class:`~autopack.errors.InvalidInput` naming each field, message and offending value.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from autopack.errors import AutopackError, InvalidInput
from autopack.rundef import describe_errors, summarize_errors


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AutopackError)
    async def autopack_error(request: Request, exc: AutopackError) -> JSONResponse:
        body = exc.to_dict()
        database = getattr(request.app.state, "database", None)
        if database is not None:
            body.setdefault("database_instance_id", database.identity.instance_id)
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await autopack_error(request, invalid_input(exc))


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
