"""Errors leave the API in one shape: ``{error, detail, ...}`` with the right status.

Every :class:`~autopack.errors.AutopackError` answers with its class name, message and
details (plus which database answered); FastAPI's request validation errors are turned
into :class:`~autopack.errors.InvalidInput` naming each field, message and offending value;
Starlette's own answers (an unreadable body, an unknown path, a wrong method) get the same
shape; anything unexpected is a 500 in that shape too, with its traceback in the server's
log and not in the answer. Every answer passes :mod:`autopack.redact` on its way out, and
a body larger than :data:`MAX_BODY_BYTES` is refused before it is read.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autopack import redact
from autopack.bounds import MAX_BODY_BYTES, printable, unreadable_value
from autopack.errors import AutopackError, BadRequest, InvalidInput, RequestTooLarge, Unauthorized
from autopack.field_errors import describe_errors, summarize_errors
from autopack.logs import log_event

logger = logging.getLogger("autopack.api")

_STARLETTE_NAMES = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}


def answer(request: Request, exc: AutopackError) -> JSONResponse:
    """The one error answer: redacted, JSON-safe (a NaN the client sent is a string)."""
    body = exc.to_dict()
    database = getattr(request.app.state, "database", None)
    if database is not None:
        body.setdefault("database_instance_id", database.identity.instance_id)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    safe = _wire_safe(redact.data(to_jsonable_python(body, fallback=str)))
    return JSONResponse(safe, status_code=exc.http_status, headers=headers)


def _wire_safe(value: Any) -> Any:
    """What JSON in UTF-8 can carry: an offending value echoed back may be a number JSON
    has no spelling for (``NaN``, ``1e400``: given as its name) or a string with a lone
    surrogate (``"\\ud800"`` in the body: given escaped)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_wire_safe(key): _wire_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wire_safe(item) for item in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AutopackError)
    async def autopack_error(request: Request, exc: AutopackError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        route = request.scope.get("route")
        body = route.body_field if isinstance(route, APIRoute) else None
        read_as = body.field_info.annotation if body else None
        model = read_as if isinstance(read_as, type) and issubclass(read_as, BaseModel) else None
        return answer(request, invalid_input(exc, model))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # A client that hangs up mid-body (a dashboard form) is no server failure: one
        # line, not a traceback; the answer reaches nobody.
        log_event(logger, "request_abandoned", method=request.method, path=request.url.path)
        return answer(request, BadRequest("the client closed the connection mid-body"))

    @app.exception_handler(HTTPException)
    async def starlette_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            return answer(request, unreadable_body(exc.__cause__))
        name = _STARLETTE_NAMES.get(exc.status_code, "HTTPError")
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not just one route's
            headers["Allow"] = ", ".join(allowed_methods(request))
            detail = f"{request.method} is not allowed on {request.url.path}"
        body = {"error": name, "detail": detail}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_event(
            logger,
            "request_failed",
            logging.ERROR,
            method=request.method,
            path=request.url.path,
            error=f"{type(exc).__name__}: {exc}",
        )
        failure = AutopackError(
            f"internal error ({type(exc).__name__}); the server's log has the details"
        )
        return answer(request, failure)


def unreadable_body(cause: BaseException) -> AutopackError:
    """Why FastAPI could not read a body (its own answer says only "There was an error
    parsing the body"): the error :class:`BodyLimit` raised while it read (a chunked body
    over the limit is the same 413 as a declared one), or what was wrong with the bytes."""
    if isinstance(cause, AutopackError):
        return cause
    if isinstance(cause, UnicodeDecodeError):
        reason = f"it is not UTF-8 (byte {cause.start}), which JSON bodies must be"
    elif isinstance(cause, RecursionError):
        reason = "it is nested too deeply"
    elif isinstance(cause, ValueError):
        reason = unreadable_value(cause)
    else:
        reason = type(cause).__name__
    return BadRequest(f"the request body cannot be read: {reason}")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def serves(router: Router, scope: Scope, method: str) -> bool:
    """Whether some route serves ``method`` at the scope's path. Tried the way the router
    matches, not read from route attributes: FastAPI nests included routers, whose routes
    the app's own list does not hold."""
    return any(
        route.matches({**scope, "method": method})[0] == Match.FULL
        for route in router.routes
        if not isinstance(route, Mount)  # a mount matches every method
    )


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at the request's path (FastAPI declares one route
    per method, and Starlette's 405 names only the first route's). HEAD wherever GET is:
    :class:`~autopack.api.app.HeadAsGet` serves it."""
    router = request.app.router
    allowed = {method for method in _METHODS if serves(router, request.scope, method)}
    if "GET" in allowed:
        allowed.add("HEAD")
    return [method for method in _METHODS if method in allowed]


def invalid_input(
    exc: RequestValidationError, model: type[BaseModel] | None = None
) -> InvalidInput:
    """FastAPI's 422 as an :class:`InvalidInput`: field paths, messages, offending values.
    ``model``: what the route reads its body as, to name the field a misspelt key meant."""
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
        if where == "body":
            item = describe_errors([error], body, drop_prefix=1, model=model)[0]
        else:
            item = describe_errors([error], drop_prefix=1)[0]
        if where != "body":
            item["field"] = f"{where} {item['field']}"
        elif item["field"] == "(top level)":
            item["field"] = "body"
        described.append(item)
    return InvalidInput(f"invalid request: {summarize_errors(described)}", errors=described)


_CLOSE = (b"connection", b"close")


class BodyLimit:
    """Pure ASGI middleware: refuse a body over ``limit`` bytes with a 413 (declared) or
    stop reading it (chunked) before it fills the server's memory; and end the connection
    after any answer given before the request's body was read to its end.

    uvicorn reads and discards the rest of an unread body so the connection can serve a
    next request: a client refused before its body (no token, a 413, a 404) could go on
    sending a chunked body for as long as it liked, gigabytes, and the server received
    every byte. ``Connection: close`` on such an answer makes uvicorn close the
    connection once the answer is sent."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:  # "17 " is 17 (HTTP allows blanks around a value)
            declared = declared.strip(b" \t")
        unread = declared not in (None, b"0") or b"transfer-encoding" in headers

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        too_large = RequestTooLarge(
            f"the request body is larger than this server accepts ({self.limit} bytes)",
            limit=self.limit,
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            error = too_large if declared.isdigit() else BadRequest("bad Content-Length header")
            response = JSONResponse(error.to_dict(), status_code=error.http_status)
            await response(scope, receive, closing)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received, unread
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large
            if message["type"] == "http.request" and not message.get("more_body", False):
                unread = False
            return message

        await self.app(scope, counted, closing)
