"""An attempt's lease: renewed in the background, and the one way to learn it is gone.

The lease is the attempt's fencing token: the server applies nothing the attempt reports
once the phase no longer carries it. However the loss shows (the heartbeat is refused,
the API cannot be reached until the lease would have expired, or a usage report, an
approval request or the result is refused), the attempt sees the same
:class:`~autopack.errors.LeaseLost`: from :meth:`Lease.check` between steps, or from the
client call that was refused.
"""

from __future__ import annotations

import logging
import threading
import time

from autopack.client import ApiClient
from autopack.contract import Claim, HeartbeatIn
from autopack.errors import AutopackError, IdentityMismatch, LeaseLost, ServerUnavailable
from autopack.logs import log_event
from autopack.states import PhaseState

logger = logging.getLogger("autopack.executor")
MIN_INTERVAL_SECONDS = 0.2


class Lease:
    """Heartbeats every third of the lease while the block runs; :meth:`check` raises
    :class:`LeaseLost` once a renewal was refused or could not be made in time."""

    def __init__(self, client: ApiClient, claim: Claim, lease_seconds: int) -> None:
        self._client = client
        self._claim = claim
        self._seconds = lease_seconds
        self._stop = threading.Event()
        self._lost: LeaseLost | None = None
        self._expires = time.monotonic() + lease_seconds
        self._moving_to: PhaseState | None = None
        """A state :meth:`renew` was asked to move the phase to that the server has not
        acknowledged yet (it did not answer): every renewal sends it until one lands."""
        self._renewing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    @property
    def token(self) -> str:
        return self._claim.lease_token

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is gone (call it before every step that
        writes or reports)."""
        if self._lost is not None:
            raise self._lost

    def lost(self) -> str | None:
        """Why the lease is gone, or None while it is held (safe from any thread)."""
        return None if self._lost is None else self._lost.message

    def renew(self, state: PhaseState | None = None) -> None:
        """Renew now (moving the phase to ``state``); a refusal raises :class:`LeaseLost`.

        A move the API did not answer is sent again with every later renewal, one at a
        time: lost, the phase stayed CI_RUNNING through the auditor's call after an API
        blip as its checks passed, and an operator's stop or a provider's refusal there
        spent a retry as if its code had stopped the executor
        (:func:`autopack.control.leases.stop_spends_no_retry`)."""
        with self._renewing:
            if state is not None:
                self._moving_to = state
            self._renew(self._moving_to)

    def _renew(self, state: PhaseState | None) -> None:
        beat = HeartbeatIn(lease_token=self.token, lease_seconds=self._seconds, state=state)
        try:
            self._client.heartbeat(self._claim.run_id, self._claim.phase_id, beat)
        except LeaseLost as exc:
            self._lost = exc
            raise
        except IdentityMismatch as exc:  # the server came back on another database
            self._lost = LeaseLost(
                f"lease on phase {self._claim.run_id}/{self._claim.phase_id} is on a database "
                f"the API server no longer serves: {exc.message}"
            )
            raise self._lost from exc
        except ServerUnavailable as exc:  # keep trying until the lease would have expired
            log_event(logger, "heartbeat_failed", logging.WARNING, reason=exc.message)
            if time.monotonic() > self._expires:
                self._lost = LeaseLost(
                    f"lease on phase {self._claim.run_id}/{self._claim.phase_id} expired while "
                    f"the API was unreachable ({exc.message})"
                )
                raise self._lost from exc
            return
        except AutopackError as exc:  # a refused token (rotated on the server), a bad answer
            # The heartbeat thread died of it (a traceback) and the attempt went on without
            # a lease it could no longer renew; it stops at its next step instead.
            self._lost = LeaseLost(
                f"lease on phase {self._claim.run_id}/{self._claim.phase_id} could not be "
                f"renewed: {exc.message}"
            )
            raise self._lost from exc
        self._moving_to = None
        self._expires = time.monotonic() + self._seconds

    def _loop(self) -> None:
        interval = max(self._seconds / 3, MIN_INTERVAL_SECONDS)
        while not self._stop.wait(interval) and self._lost is None:
            try:
                self.renew()
            except LeaseLost:
                return
