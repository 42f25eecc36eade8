"""The API's background duties: reclaim expired leases, expire approvals, end overdue runs.

Every ``AUTOPACK_MAINTENANCE_INTERVAL_SECONDS`` one pass of
:func:`autopack.control.maintenance.maintain`
runs in a worker thread. A failing pass is logged and the next one runs anyway: the task
never takes the server down. Several API replicas may run it at once; every recovery is a
conditional update, so duplicates are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict

from autopack.control.maintenance import maintain
from autopack.db import Database
from autopack.logs import log_event

logger = logging.getLogger("autopack.api.maintenance")


class Maintenance:
    """Start with :meth:`start` inside the app's event loop; :meth:`stop` on shutdown."""

    def __init__(self, database: Database, interval_seconds: float) -> None:
        self.database = database
        self.interval = interval_seconds
        self.passes = 0
        self.failures = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="autopack-maintenance")
        log_event(logger, "maintenance_started", logging.DEBUG, interval_seconds=self.interval)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let a running pass finish (its transaction commits or rolls back), then stop."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            await self.run_once()

    async def run_once(self) -> None:
        try:
            done = await asyncio.to_thread(maintain, self.database)
        except Exception as exc:  # logged and survived: the next pass may well succeed
            self.failures += 1
            log_event(
                logger,
                "maintenance_failed",
                logging.ERROR,
                error=f"{exc.__class__.__name__}: {exc}",
                failures=self.failures,
            )
            return
        self.passes += 1
        if done:
            log_event(logger, "maintenance", **asdict(done))
