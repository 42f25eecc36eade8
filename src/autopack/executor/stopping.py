"""How an executor stops: which signal stopped it, the leases it holds at that moment
(including one a claim in flight is about to return), and what the stop did with them.

A phase is the executor's from the moment the server commits its claim, not from the moment
the answer arrives. A SIGTERM landing in between (a worker's ``POST /claims`` still on the
wire) handed back the leases the executor knew of and exited: that phase stayed EXECUTING,
held by a process gone, until its lease expired, and the attempt counted against its
retries. So claims go through :class:`HeldClaims`, whose :meth:`~HeldClaims.stop` waits for
the claims in flight to come back before it says what is held; and a claim made in the main
thread holds the stop signals until it is known (:func:`stop_signals_deferred`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from autopack.contract import Claim, ClaimIn, ResultIn
from autopack.errors import AutopackError
from autopack.executor.outcome import AttemptResult
from autopack.executor.recorded import recorded_attempt
from autopack.logs import log_event
from autopack.states import PhaseState

if TYPE_CHECKING:
    from autopack.client import ApiClient

logger = logging.getLogger("autopack.executor")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, a supervisor's stop, the terminal closed."""


def _heeded() -> list[int]:
    """The stop signals this process does not ignore (``nohup`` ignores SIGHUP): one
    ignored stays ignored while the handlers below stand in."""
    return [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]


class HeldClaims:
    """The claims one executor holds, by their attempts' idempotency keys."""

    def __init__(self, claim: Callable[[ClaimIn], Claim | None]) -> None:
        self._claim = claim
        self._changed = threading.Condition()
        self._held: dict[str, Claim] = {}
        self._in_flight = 0
        self._stopped = False

    def claim(self, request: ClaimIn) -> Claim | None:
        """A claim, held from the moment its answer is back; None when nothing is
        claimable, or when :meth:`stop` was called (then nothing is asked)."""
        with self._changed:
            if self._stopped:
                return None
            self._in_flight += 1
        claim = None
        try:
            claim = self._claim(request)
        finally:
            with self._changed:
                self._in_flight -= 1
                if claim is not None:
                    self._held[claim.idempotency_key] = claim
                self._changed.notify_all()
        return claim

    @property
    def stopped(self) -> bool:
        """:meth:`stop` was called: a claim not yet attempted is left to it (handed back)."""
        with self._changed:
            return self._stopped

    def release(self, claim: Claim) -> None:
        """The claim's attempt has ended (and posted its result)."""
        with self._changed:
            self._held.pop(claim.idempotency_key, None)

    def stop(self, timeout: float) -> list[Claim]:
        """Claim nothing more; the claims held once every claim in flight is back.

        ``timeout`` bounds the wait: a claim not back by then is one the API did not answer
        (its lease expires and the phase is reclaimed then)."""
        with self._changed:
            self._stopped = True
            self._changed.wait_for(lambda: self._in_flight == 0, timeout=timeout)
            return list(self._held.values())


def stop_signal(exc: BaseException) -> int | None:
    """The signal behind an interruption: SIGINT for Ctrl-C, SIGTERM (or another) for the
    ``SystemExit(128 + signum)`` that :func:`autopack.connect.sigterm_unwinds` raises."""
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        return exc.code - 128
    return None


@contextmanager
def stop_signals_noted() -> Iterator[None]:
    """While the executor hands its leases back and reports, a further Ctrl-C, SIGTERM or
    SIGHUP (a user pressing Ctrl-C again, a supervisor repeating its SIGTERM) is logged, not
    raised: raised, it cut :meth:`AutonomousExecutor.abort` short between two hand-backs
    and left the other leases held by a process gone, their phases EXECUTING until the
    leases expired, and no summary printed. SIGKILL still stops the process at once.
    (Signal handlers can only be set from the main thread; elsewhere nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        log_event(
            logger,
            "already_stopping",
            logging.WARNING,
            signal=signal.Signals(signum).name,
            hint="handing the leases back; SIGKILL stops at once",
        )

    previous = {sig: signal.signal(sig, note) for sig in _heeded()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Deliver a stop signal (Ctrl-C, SIGTERM, SIGHUP) that arrives inside the block when
    the block ends.

    Around a claim made in the main thread: raised inside it, the stop came between the
    server granting the lease and the executor knowing it held one, so nothing handed it
    back. A repeated signal is delivered at once (a user insisting while the API does not
    answer). Elsewhere than the main thread nothing changes (signals are delivered there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in _heeded()}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def hold(signum: int, _frame: FrameType | None) -> None:
        if caught:
            restore()
            signal.raise_signal(signum)
        caught.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    except BaseException as exc:
        restore()
        # A stop already unwinding (the repeated signal) is the one to report: the held
        # one raised on top replaced it, and a Ctrl-C then a supervisor's SIGTERM exited
        # as stopped by SIGINT (130, not 143). Any other error gives way to the held stop.
        if caught and stop_signal(exc) is None:
            signal.raise_signal(caught[0])
        raise
    restore()
    if caught:
        signal.raise_signal(caught[0])


def hand_back(client: ApiClient, claim: Claim, signum: int) -> AttemptResult | None:
    """Hand ``claim``'s lease back as an ``interrupted`` result (re-queued without spending
    a retry), under its attempt's idempotency key; how the database recorded the attempt
    (the attempt's own result when it landed first), or None when the lease was no longer
    this executor's or the API did not answer (the lease still expires; the phase is
    reclaimed then)."""
    interrupted = ResultIn(
        lease_token=claim.lease_token,
        outcome=PhaseState.FAILED,
        stop_reason="interrupted",
        error=f"the executor was stopped by {signal.Signals(signum).name} mid-attempt",
    )
    try:
        answer = client.post_result(
            claim.run_id, claim.phase_id, interrupted, idempotency_key=claim.idempotency_key
        )
    except AutopackError as exc:
        log_event(logger, "hand_back_failed", logging.WARNING, reason=exc.message)
        return None
    recorded = answer.stop_reason or "interrupted"  # the attempt's own, if it came first
    result = AttemptResult(
        claim.run_id,
        claim.phase_id,
        claim.attempt,
        PhaseState.COMPLETE if recorded == "completed" else PhaseState.FAILED,
        recorded,
        phase_state=answer.phase_state,
    )
    return result if recorded == "interrupted" else recorded_attempt(client, result)


def stop_note(signum: int, recorded_as: list[str | None]) -> str:
    """What a stop did with the leases the executor held, as the database answered each
    hand-back: its stop reason (``interrupted``, or the attempt's own result, posted
    first), or None when the lease was no longer this executor's. The note said "handed
    back (QUEUED, no retry spent)" for an attempt the database had recorded COMPLETE
    and for a lease another executor held by then."""
    said: list[str] = []
    handed = recorded_as.count("interrupted")
    if handed:
        said.append(f"{handed} attempt(s) in flight handed back (QUEUED, no retry spent)")
    ended = [r for r in recorded_as if r not in (None, "interrupted")]
    if ended:
        reasons = ", ".join(sorted(set(ended)))
        said.append(f"{len(ended)} recorded as they ended ({reasons}) before the hand-back")
    if None in recorded_as:
        said.append(
            f"{recorded_as.count(None)} lease(s) no longer held or not answered (expired, "
            "or the API is gone: reclaimed when the lease expires)"
        )
    if not recorded_as:
        said.append("no attempt was in flight")
    name = signal.Signals(signum).name
    return f"stopped by {name}: " + "; ".join(said) + "; run the same command again to go on"
