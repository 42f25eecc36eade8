"""A spawned API server must not outlive the executor that started it.

The executor stops its child on every exit path it can see, but it cannot see SIGKILL.
So the child watches its parent too: once the parent is gone (the child was re-parented),
it shuts itself down the way uvicorn expects, with SIGTERM to its own process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from autopack.logs import log_event

logger = logging.getLogger("autopack.api.watchdog")


async def exit_when_parent_dies(parent_pid: int, interval: float = 0.5) -> None:
    """Poll the parent pid; SIGTERM ourselves (graceful uvicorn shutdown) when it changes."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval)
    log_event(logger, "parent_gone", logging.WARNING, parent_pid=parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
