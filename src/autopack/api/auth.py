"""Who may call what: bearer tokens with two roles, and the dashboard's login session.

* **Operator** (``AUTOPACK_API_TOKEN``): create, change and cancel runs, requeue phases,
  decide approvals, read everything, and everything a worker may do. A run's ``checks``
  are shell commands every executor that drains it runs: creating a run is running code.
* **Worker** (``AUTOPACK_WORKER_TOKEN``): what an executor does: claim, heartbeat, report
  usage, post results, ask for approvals, write telemetry, read runs and phases (and
  ``/metrics``, for a scraper that should not hold the operator token).

A server with tokens checks them on every endpoint but ``/health`` and the
documentation; it compares SHA-256 digests of the presented token with
:func:`hmac.compare_digest` (constant time, whatever the length) and never logs a
token. A server without tokens serves loopback clients (and its Unix socket) only: any
other client gets a 403 saying how to set them, and ``autopack serve`` refuses to bind
anything but loopback without them.

The dashboard logs in once: the operator token in a form becomes an ``HttpOnly``,
``SameSite=Strict`` cookie holding an expiring HMAC session (the token itself is never
stored in the browser), and every dashboard action carries a CSRF token derived from
the session, with the ``Origin`` checked when the browser sends one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from autopack.api.errors import answer
from autopack.config import MAKE_TOKEN, Settings
from autopack.contract import FINGERPRINT_HEADER, INSTANCE_HEADER
from autopack.errors import AutopackError, ConfigError, Forbidden, IdentityMismatch, Unauthorized
from autopack.logs import log_event

logger = logging.getLogger("autopack.api")

SESSION_COOKIE = "autopack_session"
SESSION_SECONDS = 12 * 3600
HOW_TO_SET = (
    "set AUTOPACK_API_TOKEN (operator) and AUTOPACK_WORKER_TOKEN (executors) on the "
    f"server and the same values on its clients; make each with: {MAKE_TOKEN}"
)


class Role(IntEnum):
    """What a token may do; an operator may do everything a worker may."""

    WORKER = 1
    OPERATOR = 2


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or ``localhost``) a loopback address?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Authenticator:
    """The server's tokens (as digests) and the key of its dashboard sessions."""

    operator: bytes | None
    worker: bytes | None
    ui_key: bytes

    @classmethod
    def from_settings(cls, settings: Settings, *, private: bool = False) -> Authenticator:
        """Refuses a worker token without an operator token: nobody could create a run.

        ``private``: the server is reachable by its own process only (the CLI's Unix
        socket in a 0700 directory): no tokens, and nothing to say about it."""
        api, worker = settings.autopack_api_token, settings.autopack_worker_token
        if private:
            api = worker = None
        if worker is not None and api is None:
            raise ConfigError(
                "AUTOPACK_WORKER_TOKEN is set but AUTOPACK_API_TOKEN is not: nobody could "
                f"create a run or decide an approval on this server; {HOW_TO_SET}"
            )
        operator = api.get_secret_value() if api is not None else None
        if operator is None and not private:
            log_event(
                logger,
                "auth_disabled",
                logging.WARNING,
                reason="no AUTOPACK_API_TOKEN: serving loopback clients only, with no token",
            )
        # Sessions are keyed by the operator token: replicas agree, rotating it logs out.
        ui_key = (
            hmac.new(_digest(operator), b"autopack-ui-session", hashlib.sha256).digest()
            if operator is not None
            else secrets.token_bytes(32)
        )
        return cls(
            operator=_digest(operator) if operator is not None else None,
            worker=_digest(worker.get_secret_value()) if worker is not None else None,
            ui_key=ui_key,
        )

    @property
    def enabled(self) -> bool:
        return self.operator is not None

    def role_of(self, token: str) -> Role | None:
        """The role ``token`` grants, or None; both digests are always compared."""
        presented = _digest(token)
        is_operator = self.operator is not None and hmac.compare_digest(presented, self.operator)
        is_worker = self.worker is not None and hmac.compare_digest(presented, self.worker)
        if is_operator:
            return Role.OPERATOR
        return Role.WORKER if is_worker else None

    def admit_unauthenticated(self, request: Request) -> None:
        """No tokens: serve loopback (and Unix socket) clients, refuse everyone else."""
        client = request.client
        if client is not None and not is_loopback(client.host):
            raise Forbidden(
                "this Autopack server has no tokens, so it serves loopback clients only: "
                + HOW_TO_SET
            )
        # A web page whose name is made to resolve to 127.0.0.1 (DNS rebinding) reaches us
        # from a loopback client too, as its own origin: its requests still name its host.
        host = request.headers.get("host")
        if client is not None and host is not None:
            try:
                name = urlsplit(f"//{host}").hostname or ""
            except ValueError:  # "[::1" and the like: no name at all
                name = ""
            if not is_loopback(name.rstrip(".")):
                raise Forbidden(
                    f"this Autopack server has no tokens, so it answers requests addressed "
                    f"to a loopback name only (localhost, 127.0.0.1, [::1]), not {host!r}: "
                    + HOW_TO_SET
                )

    # -- the dashboard's session -------------------------------------------------------------

    def _mac(self, purpose: str, value: str) -> str:
        message = f"{purpose}|{value}".encode()
        return hmac.new(self.ui_key, message, hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A session: its issue time, a nonce (two logins in one second are two sessions,
        each logged out alone), and their MAC."""
        issued = f"{int(time.time())}.{secrets.token_hex(8)}"
        return f"{issued}.{self._mac('session', issued)}"

    def session_expires(self, cookie: str | None) -> datetime | None:
        """When the session ``cookie`` expires, if it is one of ours and not expired (it
        may still have been logged out: :mod:`autopack.db.sessions` knows)."""
        if not cookie or cookie.count(".") != 2:
            return None
        issued, nonce, mac = cookie.split(".")
        # compare_digest refuses non-ASCII text, and isdigit() takes "²": a forged cookie
        # (any Latin-1 byte may arrive) is just not a session
        if not (issued.isascii() and issued.isdigit()):
            return None
        expected = self._mac("session", f"{issued}.{nonce}").encode()
        if not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected):
            return None
        age = time.time() - int(issued)
        if not -60 <= age <= SESSION_SECONDS:
            return None
        return datetime.fromtimestamp(int(issued) + SESSION_SECONDS, UTC)

    def csrf_token(self, cookie: str | None) -> str:
        """The token every dashboard form carries: bound to this session (or, without
        tokens, to this server process)."""
        return self._mac("csrf", cookie or "anonymous")


_bearer = HTTPBearer(
    auto_error=False,
    description="AUTOPACK_API_TOKEN (operator) or AUTOPACK_WORKER_TOKEN (worker).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Role
) -> Role:
    """The caller's role if it may do what needs ``needed``; else 401 (no or unknown
    token), 409 for a client that proved another database at its handshake
    (:func:`same_database`), or 403 (a worker token where the operator's is needed).
    The token first: the 409 names the server's database, and told a caller holding no
    token which database it serves, and that it is up."""
    auth = authenticator(request)
    if not auth.enabled:
        auth.admit_unauthenticated(request)
        same_database(request)
        return Role.OPERATOR
    if credentials is None:
        raise Unauthorized(
            "this Autopack server needs a token: send it as a bearer token in the Authorization "
            "header "
            "(Autopack's clients send AUTOPACK_API_TOKEN, else AUTOPACK_WORKER_TOKEN)"
        )
    role = auth.role_of(credentials.credentials)
    if role is None:
        raise Unauthorized(
            "the token is not one this server knows: compare AUTOPACK_API_TOKEN / "
            "AUTOPACK_WORKER_TOKEN here with the server's"
        )
    same_database(request)
    if role < needed:
        raise Forbidden(
            f"{request.method} {request.url.path} needs the operator token "
            "(AUTOPACK_API_TOKEN); the worker token may claim, report and read runs only"
        )
    return role


def same_database(request: Request) -> None:
    """Refuse a client whose handshake proved another database than this server's (it
    names that one on every request, :data:`~autopack.contract.FINGERPRINT_HEADER`): this
    server was started on another database behind the URL the client checked. The
    client's next call is refused, naming both, before anything is read or written; the
    handshake alone could not know."""
    instance = request.headers.get(INSTANCE_HEADER)
    fingerprint = request.headers.get(FINGERPRINT_HEADER)
    identity = request.app.state.database.identity
    if (instance is not None and instance != identity.instance_id) or (
        fingerprint is not None and fingerprint != identity.fingerprint
    ):
        proved = f"instance_id {str(instance)[:100]}, fingerprint {str(fingerprint)[:100]}"
        raise IdentityMismatch(
            f"this API server now serves {identity.public_url} (instance_id "
            f"{identity.instance_id}, fingerprint {identity.fingerprint}), not the database "
            f"this client proved at its handshake ({proved}): was it restarted on another "
            "database? Nothing was read or written; start the server on that database "
            "again, or start this client again to use this one.",
            server_instance_id=identity.instance_id,
            server_url=identity.public_url,
        )


async def _worker(request: Request, credentials: Credentials) -> Role:
    return authorize(request, credentials, Role.WORKER)


async def _operator(request: Request, credentials: Credentials) -> Role:
    return authorize(request, credentials, Role.OPERATOR)


WORKER = Depends(_worker)
"""Router dependency: a worker's (or the operator's) token."""
OPERATOR = Depends(_operator)
"""Router dependency: the operator's token."""
_ROLES = {_worker: Role.WORKER, _operator: Role.OPERATOR}
SecuredRoutes = list[tuple[APIRoute, Role]]


def secured_routes(routers: Iterable[APIRouter]) -> SecuredRoutes:
    """Every route behind a token with the role it needs, read from the dependencies
    each route declares (its router's included)."""
    table: SecuredRoutes = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                roles = [_ROLES[d.dependency] for d in route.dependencies if d.dependency in _ROLES]
                if roles:
                    table.append((route, max(roles)))
    return table


class TokenBeforeBody:
    """Pure ASGI middleware: a request with a body to a route behind a token is
    authorized by its headers before a byte of its body is read.

    FastAPI reads and parses a JSON body before it runs any dependency, so the route's
    own check came too late: a client with no token made the server receive up to
    16 MiB and parse it on the event loop (stalling every other request) before its
    401. The route's dependency still checks; this only answers first."""

    def __init__(self, app: ASGIApp, secured: SecuredRoutes) -> None:
        self.app = app
        self.secured = secured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needed = self._needed(scope) if scope["type"] == "http" else None
        if needed is not None:
            request = Request(scope)
            try:
                authorize(request, await _bearer(request), needed)
            except AutopackError as exc:
                await answer(request, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _needed(self, scope: Scope) -> Role | None:
        """The role a request that may carry a body needs, or None (a GET, an empty body,
        no secured route). Framing headers are not required: HTTP/2 may send neither."""
        if scope["method"] in ("GET", "HEAD"):
            return None
        if dict(scope.get("headers") or []).get(b"content-length") == b"0":
            return None
        for route, role in self.secured:
            if route.matches(scope)[0] == Match.FULL:  # as the router matches (root_path too)
                return role
        return None


def check_bind(host: str, settings: Settings) -> None:
    """``autopack serve``: refuse to bind anything but loopback without tokens."""
    if settings.autopack_api_token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without tokens: anyone who can reach it could "
            "create runs, and a run's checks are commands every executor runs. "
            + HOW_TO_SET
            + " (or bind 127.0.0.1 for local use)",
            host=host,
        )
