"""The FastAPI application factory.

``create_app(settings)`` builds an app whose database is opened in the lifespan, not at
import time: ``autopack.main:app`` can be imported by uvicorn without touching anything,
and a server that finds an invalid setting, a partial schema, no database file, or a
database other than the one it was told to expect refuses to start (uvicorn then exits with
status 3). The refusal is one ``startup_refused`` log line naming the problem and its fix,
not a traceback. Its tokens are read there too (:mod:`autopack.api.auth`); every route
declares the role it needs and the errors it can answer (:mod:`autopack.api.openapi`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

from anyio import to_thread
from fastapi import FastAPI
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autopack import __version__, redact
from autopack.api.auth import Authenticator, TokenBeforeBody, secured_routes
from autopack.api.errors import BodyLimit, install_error_handlers, serves
from autopack.api.maintenance import Maintenance
from autopack.api.openapi import install_docs
from autopack.api.routers import (
    approvals,
    claims,
    dashboard,
    health,
    metrics,
    phases,
    runs,
    schemas,
    telemetry,
    ui_session,
)
from autopack.api.watchdog import exit_when_parent_dies, supervisor_pid
from autopack.config import Settings, load_settings
from autopack.db import open_database
from autopack.errors import AutopackError
from autopack.logs import configure_logging, log_event

logger = logging.getLogger("autopack.api")


class AutopackApp(FastAPI):
    """FastAPI whose refused startup is reported to the server without the traceback
    Starlette attaches to it (the ``startup_refused`` line already said everything)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await super().__call__(scope, receive, send)
            return

        async def quiet(message: Message) -> None:
            refused = getattr(self.state, "startup_refused", False)
            if message["type"] == "lifespan.startup.failed" and refused:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        await super().__call__(scope, receive, quiet)


class HeadAsGet:
    """Pure ASGI middleware: HEAD on a path without a HEAD route is its GET, whose body
    the server leaves out (uvicorn sends none to a HEAD, whatever the app sends). HTTP
    makes HEAD a GET's headers; Starlette's own routes add it, FastAPI's declare one
    method each, so ``curl -I /runs`` was a 405 while ``curl -I /health`` was a 200.
    The rewritten scope is a copy: the server keeps the request's own method."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["type"] == "http" and scope["method"] == "HEAD"
        if head and not serves(self.router, scope, "HEAD"):
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def _refuse(app: FastAPI, exc: AutopackError) -> NoReturn:
    log_event(logger, "startup_refused", logging.ERROR, reason=exc.message)
    app.state.startup_refused = True
    raise exc


def create_app(settings: Settings | None = None, *, private: bool = False) -> FastAPI:
    """An API server bound to ``settings.database_url`` (resolved from the environment if None).

    ``private``: reachable by this process only (the CLI's Unix socket): no tokens."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            resolved = settings or load_settings().settings
        except AutopackError as exc:  # an invalid setting (under `uvicorn autopack.main:app`)
            configure_logging()  # the log's own settings may be the invalid ones
            _refuse(app, exc)
        configure_logging(resolved.autopack_log_level, resolved.autopack_log_format)
        redact.remember(resolved)
        try:
            app.state.auth = Authenticator.from_settings(resolved, private=private)
            database = open_database(
                resolved.database_url,
                role="api",
                expected_instance_id=resolved.autopack_expected_instance_id,
                log=not private,  # the CLI process serving itself logged its database once
            )
        except AutopackError as exc:
            _refuse(app, exc)
        if database.initialised:  # `autopack serve` said so; `uvicorn autopack.main:app` not
            log_event(
                logger,
                "database_initialised",
                logging.WARNING,
                url=database.identity.url,
                note="it had no tables: Autopack's were set up (a mistyped name means "
                "a new, empty database)",
            )
        app.state.settings = resolved
        app.state.database = database
        watchdog = None
        parent = resolved.autopack_parent_pid or (None if private else supervisor_pid())
        if parent:
            watchdog = asyncio.create_task(exit_when_parent_dies(parent))
        # Endpoints are short blocking transactions: a few threads keep the CPU busy, many
        # threads only queue for the GIL (and hold row locks while they wait for it).
        to_thread.current_default_thread_limiter().total_tokens = resolved.autopack_api_threads
        maintenance = Maintenance(database, resolved.autopack_maintenance_interval_seconds)
        maintenance.start()
        app.state.maintenance = maintenance
        try:
            yield
        finally:
            await maintenance.stop()
            if watchdog is not None:
                watchdog.cancel()
            database.close()

    app = AutopackApp(
        title="Autopack",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="The control plane of Autopack. Every endpoint but /health and the "
        "documentation needs a bearer token (the Authorization header) when the server has tokens: "
        "the operator's (AUTOPACK_API_TOKEN) or, for an executor's calls, the worker's "
        "(AUTOPACK_WORKER_TOKEN). Every error answers `{error, detail, ...}`.",
    )

    install_error_handlers(app)
    install_docs(app)
    # Routes are matched in order: the workers' hot calls first.
    routers = (
        claims.router,
        phases.router,
        health.router,
        telemetry.router,
        runs.router,
        approvals.router,
        schemas.router,
        dashboard.router,
        ui_session.router,
        metrics.router,
    )
    for router in routers:
        app.include_router(router)
    app.add_middleware(HeadAsGet, router=app.router)
    app.add_middleware(TokenBeforeBody, secured=secured_routes(routers))
    app.add_middleware(BodyLimit)  # outermost: a declared 413 before anything else
    return app
