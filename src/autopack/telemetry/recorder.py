"""The executor's single way to record telemetry: loud on failure, never fatal.

A write that fails (server down, a 422 because an event does not fit the schema) does not
abort the phase; it is logged at WARNING with the reason and counted. The drain summary
shows the count, and the probe fails when it is not zero. Nothing is lost quietly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from autopack.errors import AutopackError
from autopack.logs import log_event
from autopack.telemetry.events import TelemetryEvent, kind_of

logger = logging.getLogger("autopack.telemetry")

Poster = Callable[[TelemetryEvent], int]


class TelemetryRecorder:
    """Posts events when enabled; counts what was written, skipped and lost."""

    def __init__(self, post: Poster, *, enabled: bool) -> None:
        self._post = post
        self.enabled = enabled
        self._lock = threading.Lock()
        self.written = 0
        self.failures = 0

    def record(self, event: TelemetryEvent) -> None:
        if not self.enabled:
            return
        kind = kind_of(event)
        try:
            self._post(event)
        except AutopackError as exc:
            with self._lock:
                self.failures += 1
            log_event(
                logger,
                "telemetry_write_failed",
                logging.WARNING,
                kind=kind,
                run_id=event.run_id,
                phase_id=getattr(event, "phase_id", None),
                reason=exc.message,
            )
            return
        with self._lock:
            self.written += 1
