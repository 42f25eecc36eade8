"""The dashboard's login, logout and actions (see :mod:`autopack.api.auth` for the model).

A browser cannot send a bearer token by itself, so the dashboard logs in once: the
operator token goes into a form, and the answer sets an ``HttpOnly``, ``SameSite=Strict``
session cookie (an expiring HMAC, never the token). Every state-changing form carries
the session's CSRF token and is refused when the browser's ``Origin`` names another site.
Log out ends the session on the server too (:mod:`autopack.db.sessions`): a copy of the
cookie opens nothing afterwards. Without tokens (a loopback-only server) there is no
login, and forms still carry a per-process CSRF token. Forms are parsed here (no
multipart dependency).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from html import escape
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from autopack.api.auth import SESSION_COOKIE, SESSION_SECONDS, Role, authenticator
from autopack.api.deps import DatabaseDep
from autopack.bounds import INT32_MAX
from autopack.contract import DecisionIn
from autopack.control import approvals
from autopack.db import Database
from autopack.db.sessions import end_session, session_ended
from autopack.errors import Forbidden, RequestTooLarge

router = APIRouter(prefix="/ui", tags=["dashboard"], include_in_schema=False)
MAX_FORM_BYTES = 64 * 1024
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # Never inside another site's frame: a server without tokens needs no login, so a page
    # framing /ui could overlay its approve button and have the operator click it.
    "X-Frame-Options": "DENY",
    # No script, no foreign forms: escaping is the first guard, this the second.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
"""Headers of every dashboard page."""


@dataclass(frozen=True)
class UiAccess:
    """A caller the dashboard serves, and the CSRF token its forms must carry."""

    csrf: str


def live_session(request: Request) -> str | None:
    """The request's session cookie, if it is a session that has neither expired nor been
    logged out (a database read: call it off the event loop)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None or authenticator(request).session_expires(cookie) is None:
        return None
    database: Database = request.app.state.database
    return None if session_ended(database, cookie) else cookie


def ui_access(request: Request) -> UiAccess | None:
    """The dashboard's caller, or None when it must log in first (403 for a client a
    loopback-only server does not serve). Reads the database (:func:`live_session`)."""
    auth = authenticator(request)
    if not auth.enabled:
        auth.admit_unauthenticated(request)
        return UiAccess(auth.csrf_token(None))
    if (cookie := live_session(request)) is not None:
        return UiAccess(auth.csrf_token(cookie))
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and auth.role_of(token.strip()) == Role.OPERATOR:
        return UiAccess(auth.csrf_token(None))
    return None


def _same_origin(request: Request) -> None:
    """A browser names the page a form was sent from; refuse another site's."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or one that does not say: SameSite=Strict guards
        return
    host = request.headers.get("host", "")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[::1" and the like: no origin at all, so not this one
        netloc = None
    if netloc != host:
        raise Forbidden(f"cross-site form refused (Origin {origin!r} is not {host!r})")


async def _form(request: Request) -> dict[str, str]:
    """The form's fields. A body over :data:`MAX_FORM_BYTES` is a 413 naming the limit,
    refused by its Content-Length unread, or (chunked) as soon as the bytes read pass it:
    the API's own body limit is far larger, so this reader must stop by itself."""
    too_large = RequestTooLarge(
        f"the form is larger than the dashboard accepts ({MAX_FORM_BYTES} bytes)",
        limit=MAX_FORM_BYTES,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if "\x00" not in values[0]}


async def checked_form(request: Request) -> dict[str, str]:
    """The form of a dashboard action, once its caller, origin and CSRF token are checked."""
    _same_origin(request)
    access = await run_in_threadpool(ui_access, request)
    if access is None:
        raise Forbidden("log in to the dashboard first (/ui/login)")
    form = await _form(request)
    if not hmac.compare_digest(form.get("csrf", "").encode(), access.csrf.encode()):
        raise Forbidden("the form's CSRF token is missing or stale: reload the dashboard")
    return form


def _login_page(message: str = "", status_code: int = 200) -> HTMLResponse:
    note = f"<p style='color:#c62828'>{escape(message)}</p>" if message else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Autopack login</title>"
        "</head><body style='font:14px system-ui,sans-serif;margin:2em'>"
        f"<h1>Autopack</h1>{note}<form method='post' action='/ui/login'>"
        "<label>Operator token (AUTOPACK_API_TOKEN) <input type='password' name='token' "
        "autocomplete='current-password' autofocus></label> <button>Log in</button></form>"
        "</body></html>"
    )
    return HTMLResponse(page, status_code=status_code, headers=PAGE_HEADERS)


@router.get("/login")
def login_form(request: Request) -> Response:
    if not authenticator(request).enabled:
        return RedirectResponse("/ui", status_code=303)
    return _login_page()


@router.post("/login")
async def login(request: Request) -> Response:
    """The operator token becomes a session cookie; anything else is refused (401)."""
    _same_origin(request)
    auth = authenticator(request)
    if not auth.enabled:
        return RedirectResponse("/ui", status_code=303)
    token = (await _form(request)).get("token", "").strip()
    if auth.role_of(token) != Role.OPERATOR:
        return _login_page("That is not this server's operator token.", status_code=401)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, database: DatabaseDep) -> Response:
    """The session ends here and on the server: a copy of its cookie opens nothing."""
    await checked_form(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    expires = authenticator(request).session_expires(cookie)
    if cookie is not None and expires is not None:
        await run_in_threadpool(end_session, database, cookie, expires)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.post("/approvals/{approval_id}/{decision}")
async def decide(
    request: Request,
    database: DatabaseDep,
    approval_id: Annotated[int, Path(ge=1, le=INT32_MAX)],
    decision: Literal["approve", "reject"],
) -> Response:
    """Approve or reject from the dashboard (the same service as the API's)."""
    form = await checked_form(request)
    note = form.get("note") or None
    request_ = DecisionIn(responder="dashboard", note=note[:10_000] if note else None)
    await run_in_threadpool(
        approvals.decide_approval,
        database,
        approval_id,
        approve=decision == "approve",
        decision=request_,
    )
    return RedirectResponse("/ui", status_code=303)
