"""The executor's single way to record telemetry: loud on failure, never fatal, never lost
to a passing outage.

A post is retried by the client on 5xx and dropped connections for a while (each event's
idempotency key makes that safe). An event that still could not be written because the
server was unavailable is queued, and the queue is flushed before every later event and
once more when the drain reads the count at its end (:attr:`TelemetryRecorder.failures`):
only an event that never got through is counted as lost. An event the server refuses
(a 4xx: it does not fit the schema) is lost at once: sending it again cannot help. Every
loss is logged at WARNING with the reason; the drain summary shows the count, and the
probe fails when it is not zero.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from autopack.errors import AutopackError, ServerUnavailable
from autopack.logs import log_event
from autopack.telemetry.events import TelemetryEvent, kind_of

logger = logging.getLogger("autopack.telemetry")

Poster = Callable[[TelemetryEvent], int]
MAX_QUEUED = 10_000
"""Events kept for a later try; past this the oldest are counted as lost."""


class TelemetryRecorder:
    """Posts events when enabled; counts what was written and what was lost."""

    def __init__(self, post: Poster, *, enabled: bool) -> None:
        self._post = post
        self.enabled = enabled
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._queue: deque[TelemetryEvent] = deque()
        self.written = 0
        self.lost = 0

    @property
    def failures(self) -> int:
        """Events lost for good. Reading it is the end of the drain: queued events get one
        last try first, and those still waiting are lost, in one warning line (they were
        counted without one, and the summary sends its reader to those lines)."""
        self.flush()
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            self.lost += left
        if left:
            log_event(
                logger,
                "telemetry_write_failed",
                logging.WARNING,
                events=left,
                reason="the API server still could not store them when the drain ended",
            )
        with self._lock:
            return self.lost

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def record(self, event: TelemetryEvent) -> None:
        if not self.enabled:
            return
        self.flush()
        if self.queued:  # the server is still away: wait behind the others, in order
            self._keep(event, "events before it are still waiting")
            return
        self._send(event, queue_on_failure=True)

    def flush(self) -> None:
        """Try the queued events again, oldest first; stop at the first that still fails."""
        if not self._queue or not self._flushing.acquire(blocking=False):
            return  # nothing queued, or another thread is flushing right now
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        return
                    event = self._queue.popleft()
                if not self._send(event, queue_on_failure=False):
                    with self._lock:
                        self._queue.appendleft(event)
                    return
        finally:
            self._flushing.release()

    def _send(self, event: TelemetryEvent, *, queue_on_failure: bool) -> bool:
        try:
            self._post(event)
        except ServerUnavailable as exc:  # the server is away: keep it for a later try
            if queue_on_failure:
                self._keep(event, exc.message)
            return False
        except AutopackError as exc:  # refused: sending it again cannot help
            self._lose(event, exc.message)
            return True
        with self._lock:
            self.written += 1
        return True

    def _keep(self, event: TelemetryEvent, reason: str) -> None:
        with self._lock:
            self._queue.append(event)
            dropped = self._queue.popleft() if len(self._queue) > MAX_QUEUED else None
        log_event(
            logger,
            "telemetry_write_queued",
            logging.WARNING,
            kind=kind_of(event),
            run_id=event.run_id,
            phase_id=getattr(event, "phase_id", None),
            reason=reason,
        )
        if dropped is not None:
            self._lose(dropped, f"more than {MAX_QUEUED} events waiting")

    def _lose(self, event: TelemetryEvent, reason: str) -> None:
        with self._lock:
            self.lost += 1
        log_event(
            logger,
            "telemetry_write_failed",
            logging.WARNING,
            kind=kind_of(event),
            run_id=event.run_id,
            phase_id=getattr(event, "phase_id", None),
            reason=reason,
        )
