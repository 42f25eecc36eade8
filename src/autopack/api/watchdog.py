"""An API process must not outlive the process that started it.

The executor stops the server it spawned on every exit path it can see, but it cannot see
SIGKILL; nor can uvicorn's supervisor (``autopack serve --workers N``, ``uvicorn
autopack.main:app --workers N``) stop its API processes when it is killed with SIGKILL:
they served on, orphaned, with the tokens they started with (a rotation never took), and
held the port every restart needed ("Address already in use"). So such a process watches
its parent: once the parent is gone (the process was re-parented), it shuts itself down
the way uvicorn expects, with SIGTERM to its own process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal

from autopack.logs import log_event

logger = logging.getLogger("autopack.api.watchdog")


def supervisor_pid() -> int | None:
    """The pid of the uvicorn supervisor this process serves under (``--workers``,
    ``--reload``: it starts its API processes with :mod:`multiprocessing`), or None."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None else None


async def exit_when_parent_dies(parent_pid: int, interval: float = 0.5) -> None:
    """Poll the parent pid; SIGTERM ourselves (graceful uvicorn shutdown) when it changes."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(interval)
    log_event(logger, "parent_gone", logging.WARNING, parent_pid=parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
