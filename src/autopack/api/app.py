"""The FastAPI application factory.

``create_app(settings)`` builds an app whose database is opened in the lifespan, not at
import time: ``autopack.main:app`` can be imported by uvicorn without touching anything,
and a server that finds a partial schema or a database other than the one it was told to
expect refuses to start (uvicorn then exits with status 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from autopack import __version__
from autopack.api.errors import install_error_handlers
from autopack.api.maintenance import Maintenance
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
)
from autopack.api.watchdog import exit_when_parent_dies
from autopack.config import Settings, load_settings
from autopack.db import open_database
from autopack.errors import AutopackError
from autopack.logs import configure_logging, log_event

logger = logging.getLogger("autopack.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """An API server bound to ``settings.database_url`` (resolved from the environment if None)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or load_settings().settings
        configure_logging(resolved.autopack_log_level, resolved.autopack_log_format)
        try:
            database = open_database(
                resolved.database_url,
                role="api",
                expected_instance_id=resolved.autopack_expected_instance_id,
            )
        except AutopackError as exc:
            log_event(logger, "startup_refused", logging.ERROR, reason=exc.message)
            raise
        app.state.settings = resolved
        app.state.database = database
        watchdog = None
        if resolved.autopack_parent_pid:
            watchdog = asyncio.create_task(exit_when_parent_dies(resolved.autopack_parent_pid))
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

    app = FastAPI(title="Autopack", version=__version__, lifespan=lifespan)

    install_error_handlers(app)

    # Routes are matched in order: the workers' hot calls first.
    for router in (
        claims.router,
        phases.router,
        health.router,
        telemetry.router,
        runs.router,
        approvals.router,
        schemas.router,
        dashboard.router,
        metrics.router,
    ):
        app.include_router(router)
    return app
