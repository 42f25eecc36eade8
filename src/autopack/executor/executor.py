"""AutonomousExecutor: drains phases through the API, one or many at a time.

It never opens a database: everything goes through :class:`~autopack.client.ApiClient`, to
a server whose identity was checked by :func:`autopack.connect.connect`. ``drain_run`` runs K worker
threads (LLM calls dominate wall time, so overlap is where time is won); each claims a
phase, runs one :class:`Attempt`, and claims again until the run is finished. A first stop
request (Ctrl-C) stops claiming and lets in-flight attempts post their results; SIGTERM or
a second Ctrl-C hands every lease the executor holds back at once (:meth:`abort`), so the
next drain finds the phases QUEUED instead of held by a dead worker until their leases
expire, and the control plane does not count those attempts against the phases' retries.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from autopack.clock import utcnow
from autopack.contract import Claim, ClaimIn, PhaseView, RequeueIn, RunView
from autopack.executor.attempt import Attempt
from autopack.executor.checks import terminate_running_checks
from autopack.executor.git import GitError
from autopack.executor.options import Services
from autopack.executor.outcome import AttemptResult
from autopack.executor.stopping import (
    HeldClaims,
    hand_back,
    stop_note,
    stop_signal,
    stop_signals_deferred,
    stop_signals_noted,
)
from autopack.logs import log_event
from autopack.states import (
    PHASE_GAVE_UP,
    PHASE_REQUEUEABLE,
    PHASE_TERMINAL,
    RUN_FINISHED,
    PhaseState,
)

logger = logging.getLogger("autopack.executor")


@dataclass
class DrainSummary:
    """What a drain did: every attempt, the final phase states, telemetry counts."""

    run_id: str
    run_state: str = ""
    phase_states: dict[str, PhaseState] = field(default_factory=dict)
    attempts: list[AttemptResult] = field(default_factory=list)
    telemetry_written: int = 0
    telemetry_failures: int = 0
    wall_seconds: float = 0.0
    note: str = ""
    branch: str = ""
    branch_head: str | None = None
    """Where the run's code is: its branch (at this accepted head) in ``repository``."""
    branch_waits: str | None = None
    """Why the git branch is still behind ``branch_head`` (a checkout in the way), if it is."""
    branch_past: str | None = None
    """Where the git branch is when it holds commits past ``branch_head`` that the control
    plane never accepted (made by hand, or by a check that killed its executor)."""
    branch_reset: str = ""
    """The command that puts the branch from ``branch_past`` back at ``branch_head``."""
    repository: str = ""
    repository_flag: str = ""
    """How to name that repository on the command line (``--workspace DIR``, ``--repo URL``)."""
    done_before: set[str] = field(default_factory=set)
    """Phases already COMPLETE when this drain started (it did nothing for them)."""
    failed_before: set[str] = field(default_factory=set)
    """Phases already FAILED or SKIPPED when this drain started: a drain never retries
    them (``autopack run requeue``, or ``drain phase --force``, queues one again)."""
    stopped_by: int | None = None
    """The signal that stopped the drain (SIGINT, SIGTERM); the CLI exits 128 + it."""

    def record(self, result: AttemptResult) -> None:
        """Add how an attempt ended; an attempt :meth:`AutonomousExecutor.abort` handed back
        that then ended on its own is one attempt, reported as it ended last."""
        self.attempts = [
            a
            for a in self.attempts
            if (a.run_id, a.phase_id, a.attempt) != (result.run_id, result.phase_id, result.attempt)
        ]
        self.attempts.append(result)

    @property
    def any_failed(self) -> bool:
        return any(state in PHASE_GAVE_UP for state in self.phase_states.values())

    @property
    def all_complete(self) -> bool:
        return bool(self.phase_states) and all(
            state == PhaseState.COMPLETE for state in self.phase_states.values()
        )


def _seconds_until(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - utcnow()).total_seconds(), 0.0)


def _wait_all(finished: list[threading.Event], timeout: float | None = None) -> None:
    """Wait until every worker has finished (or ``timeout`` passed), interruptibly by
    Ctrl-C and SIGTERM.

    Events, not ``Thread.join``: on Python 3.11 a KeyboardInterrupt landing inside
    ``join`` can leave a live thread reporting ``is_alive() == False``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for event in finished:
        while not event.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                return


CLAIM_ANSWER_SECONDS = 10.0
"""How long an abort waits for the claims in flight to come back (a granted claim's answer
takes milliseconds; one not back by then is waiting on an API that does not answer)."""

ABORT_GRACE_SECONDS = 2.0
"""After an abort, how long workers get to notice their lease is gone and undo their files
(one waiting on an LLM answer does not return in time; its process exits without it)."""


class AutonomousExecutor:
    """Drains phases of runs held by an API server (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.client = services.client
        self.options = services.options
        self.stopping = services.stopping
        self._lock = threading.Lock()
        self._claims_left: int | None = None
        self._claims = HeldClaims(self.client.claim)
        """Claims this executor holds (what :meth:`abort` hands back)."""
        self._handed_back: dict[str, AttemptResult] = {}
        """How the database recorded each attempt :meth:`abort` handed back, by idempotency
        key (what the summary says of it, unless the attempt itself ends the same way)."""
        self._news = threading.Condition(self._lock)
        self._wakes = 0
        """How many times idle workers were told the run may have changed (see _wake)."""
        self._run_over = threading.Event()
        """A worker found every phase finished: the others stop without asking again."""

    def stop(self) -> None:
        """Stop claiming new work; attempts in flight still finish and post their results."""
        self.stopping.set()
        self._wake(everyone=True)

    def _wake(self, *, everyone: bool) -> None:
        """Tell idle workers (waiting in :meth:`_wait`) to look again now.

        A worker whose claim found work wakes one more (a finished tier may have freed
        many phases: they fan out one claim at a time instead of after a poll), one that
        found the run finished wakes them all (so the drain ends with its last result, not
        a poll later). Waking one at a time keeps K idle workers from answering each
        sibling's result with K claims.
        """
        with self._news:
            self._wakes += 1
            if everyone:
                self._news.notify_all()
            else:
                self._news.notify()

    def _sync_branch(self, run: RunView) -> None:
        """Bring the git branch up to the run's accepted head: an executor killed after its
        result was accepted may have left it behind (idempotent; see integration.py)."""
        if run.branch_head is None:
            return
        try:
            self.s.repository.advance(run.branch_head)
        except GitError as exc:
            log_event(logger, "branch_sync_failed", logging.WARNING, reason=exc.message)

    def _unaccepted_head(self, run: RunView) -> str | None:
        """The branch's head when it is past the run's accepted head with commits the
        control plane never accepted: the summary said "branch B at ACCEPTED" while the
        branch held more. Asked again of the control plane first: an executor beside this
        one may have had a later head accepted and moved the branch there."""
        if run.branch_head is None or self.s.repository.waiting:
            return None
        head = self.s.repository.past(run.branch_head)
        if head is None:
            return None
        latest = self.client.get_run_brief(run.run_id).branch_head
        if latest is not None and (head == latest or self.s.repository.is_ancestor(head, latest)):
            return None
        return head

    def _summary(self, summary: DrainSummary, started: float) -> DrainSummary:
        run = self.client.get_run(summary.run_id)
        self._sync_branch(run)
        summary.run_state = run.state
        summary.phase_states = {p.phase_id: p.state for p in run.phases()}
        summary.branch = self.s.repository.branch
        summary.branch_head = run.branch_head
        summary.branch_waits = self.s.repository.waiting
        summary.branch_past = self._unaccepted_head(run)
        if summary.branch_past and run.branch_head:
            summary.branch_reset = self.s.repository.reset_command(
                run.branch_head, summary.branch_past
            )
        summary.repository = self.s.repository.where
        summary.repository_flag = self.s.repository.flag
        summary.telemetry_written = self.s.telemetry.written
        summary.telemetry_failures = self.s.telemetry.failures
        summary.wall_seconds = round(time.monotonic() - started, 3)
        return summary

    def _attempt(self, claim: Claim, summary: DrainSummary) -> None:
        # An interruption leaves the claim held, wherever it landed (even before the
        # attempt's own hand-back could run): :meth:`abort` hands it back, and a second
        # hand-back under the same idempotency key changes nothing. A claim that came back
        # after the abort began is left to it.
        if self._claims.stopped:
            return
        result = Attempt(self.s, claim).run()
        with self._lock:
            self._claims.release(claim)
            recorded = self._handed_back.get(claim.idempotency_key)
            # Handed back, the attempt may still end its own way in the grace it gets: its
            # lease refused (``lease_lost``) when the database says ``interrupted``. What
            # the database recorded is what the summary says.
            if recorded is None or recorded.stop_reason == result.stop_reason:
                summary.record(result)

    def abort(
        self, summary: DrainSummary, signum: int, *, claims_wait: float = CLAIM_ANSWER_SECONDS
    ) -> str:
        """Stop now: no new claims, running checks killed, and every held lease handed
        back at once as an ``interrupted`` result (which the control plane re-queues
        without spending a retry). Each posts under its attempt's idempotency key, so an
        attempt that reports after this gets the same answer and changes nothing.

        ``claims_wait``: how long to wait for claims other threads have in flight (0 when
        the caller was the only one claiming: a signal that cut its claim short must not
        leave it waiting for that claim).

        Returns what became of the leases, as the database answered (:func:`stop_note`)."""
        self.stop()
        summary.stopped_by = signum
        terminate_running_checks(self.s.stopped)
        held = self._claims.stop(timeout=claims_wait)
        recorded_as: list[str | None] = []
        for claim in held:
            result = hand_back(self.client, claim, signum)
            recorded_as.append(None if result is None else result.stop_reason)
            if result is None:
                continue
            with self._lock:
                self._handed_back[claim.idempotency_key] = result
                summary.record(result)
        handed = recorded_as.count("interrupted")
        log_event(logger, "leases_handed_back", logging.WARNING, count=handed, signal=signum)
        return stop_note(signum, recorded_as)

    # -- one phase (the legacy drain_one_phase) ---------------------------------------------
    def drain_phase(self, run_id: str, phase_id: str, *, force: bool = False) -> DrainSummary:
        """Run one phase until it is COMPLETE, FAILED or SKIPPED (retries included)."""
        started = time.monotonic()
        summary = DrainSummary(run_id=run_id)
        self._sync_branch(self.client.get_run(run_id))
        phase: PhaseView = self.client.get_phase(run_id, phase_id)
        if phase.state == PhaseState.COMPLETE:
            summary.done_before.add(phase_id)
        elif phase.state in PHASE_GAVE_UP and not force:
            summary.failed_before.add(phase_id)
        if force and phase.state in PHASE_REQUEUEABLE:
            request = RequeueIn(requested_by=self.options.worker_id, reason="--force")
            self.client.requeue_phase(run_id, phase_id, request)
            log_event(
                logger,
                "phase_requeued",
                run_id=run_id,
                phase_id=phase_id,
                previous_state=phase.state,
            )
        claim_in = ClaimIn(
            worker_id=self.options.worker_id,
            lease_seconds=self.options.lease_seconds,
            run_id=run_id,
            phase_id=phase_id,
        )
        try:
            while not self.stopping.is_set():
                with stop_signals_deferred():
                    claim = self._claims.claim(claim_in)
                if claim is not None:
                    self._attempt(claim, summary)
                    continue
                phase = self.client.get_phase(run_id, phase_id)
                if phase.state in PHASE_TERMINAL:
                    break
                if phase.state == PhaseState.QUEUED and _seconds_until(phase.available_at) <= 0:
                    reasons = self.client.get_run(run_id).blockers(phase)
                    if reasons:
                        summary.note = f"phase {phase_id} cannot run yet: " + "; ".join(reasons)
                        break
                self._wait(run_id, phase, self._delay(phase))
        except (KeyboardInterrupt, SystemExit) as exc:
            signum = stop_signal(exc)
            if signum is None:
                raise
            # The attempt (run in this thread) handed its lease back as it unwound; this
            # catches a claim the interruption landed between.
            with stop_signals_noted():
                summary.note = self.abort(summary, signum, claims_wait=0)
                return self._summary(summary, started)
        return self._summary(summary, started)

    def _delay(self, phase: PhaseView, *, ready: bool = True) -> float:
        """How long until ``phase`` may be claimable: a QUEUED phase nothing blocks (``ready``)
        at its retry time; any other (held by someone, or behind an earlier tier or a
        dependency) at the next poll."""
        if phase.state == PhaseState.QUEUED and ready:
            return min(max(_seconds_until(phase.available_at), 0.05), 60.0)
        return self.options.poll_seconds

    def _soonest(self, run: RunView, pending: list[PhaseView]) -> tuple[PhaseView, float]:
        """The pending phase of ``run`` that may become claimable first, and when."""
        complete = {p.phase_id for p in run.phases() if p.state == PhaseState.COMPLETE}
        open_tier = min(p.tier_index for p in pending)  # every earlier tier is complete

        def delay(phase: PhaseView) -> float:
            ready = phase.tier_index == open_tier and complete.issuperset(phase.depends_on)
            return self._delay(phase, ready=ready)

        return min(((p, delay(p)) for p in pending), key=lambda found: found[1])

    def _wait(
        self, run_id: str, phase: PhaseView, delay: float, *, wakes: int | None = None
    ) -> None:
        """Sleep ``delay`` seconds (until ``phase`` may be claimable), or, with ``wakes`` (the
        count seen before the claim that found nothing), until a sibling has news."""
        self.s.events(
            "waiting",
            run_id=run_id,
            phase_id=phase.phase_id,
            state=phase.state,
            seconds=delay,
            holder=phase.lease_owner,
        )
        if wakes is None:
            self.stopping.wait(delay)
            return
        with self._news:
            self._news.wait_for(lambda: self._wakes != wakes, timeout=delay)  # stop() wakes too

    # -- a whole run ------------------------------------------------------------------------
    def drain_run(
        self, run_id: str, *, concurrency: int = 1, max_claims: int | None = None
    ) -> DrainSummary:
        """Drain every phase of ``run_id`` with ``concurrency`` attempts at a time.

        ``max_claims`` stops claiming after that many attempts (a batch). The first
        Ctrl-C stops claiming, waits for attempts in flight to post their results and
        returns the summary (with a note saying so); a second one aborts (their leases
        expire and the phases are reclaimed).
        """
        started = time.monotonic()
        summary = DrainSummary(run_id=run_id)
        run = self.client.get_run(run_id)  # a clear NotFound (naming the database) first
        summary.done_before = {p.phase_id for p in run.phases() if p.state == PhaseState.COMPLETE}
        summary.failed_before = {p.phase_id for p in run.phases() if p.state in PHASE_GAVE_UP}
        self._sync_branch(run)
        self._claims_left = max_claims
        self._run_over.clear()
        errors: list[BaseException] = []
        finished = [threading.Event() for _ in range(concurrency)]
        for index, done in enumerate(finished):
            threading.Thread(
                target=self._worker,
                args=(run_id, index, summary, errors, done),
                name=f"worker-{index}",
                daemon=True,
            ).start()
        try:
            try:
                _wait_all(finished)
            except KeyboardInterrupt:
                self.stop()
                summary.stopped_by = int(signal.SIGINT)
                in_flight = sum(not done.is_set() for done in finished)
                log_event(
                    logger,
                    "stopping",
                    logging.WARNING,
                    in_flight=in_flight,
                    hint="waiting for attempts in flight; Ctrl-C again to hand them back now",
                )
                _wait_all(finished)
                summary.note = (
                    "stopped by Ctrl-C: the attempts in flight finished and were recorded; "
                    "the rest of the run stays queued for the next drain"
                )
        except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM, or a second Ctrl-C
            signum = stop_signal(exc)
            if signum is None:
                raise
            with stop_signals_noted():
                summary.note = self.abort(summary, signum)
                _wait_all(finished, timeout=ABORT_GRACE_SECONDS)
                return self._summary(summary, started)
        if errors:
            raise errors[0]
        return self._summary(summary, started)

    def _claim_slot(self, delta: int) -> bool:
        """Take (-1) or give back (+1) one of a batch's claims; False when none is left."""
        with self._lock:
            if self._claims_left is None:
                return True
            if delta < 0 and self._claims_left <= 0:
                return False
            self._claims_left += delta
            return True

    def _worker(
        self,
        run_id: str,
        index: int,
        summary: DrainSummary,
        errors: list[BaseException],
        finished: threading.Event,
    ) -> None:
        try:  # everything: a worker that raised before setting `finished` hung the drain
            claim_in = ClaimIn(
                worker_id=f"{self.options.worker_id}/{index}",
                lease_seconds=self.options.lease_seconds,
                run_id=run_id,
            )
            while not (self.stopping.is_set() or self._run_over.is_set()):
                if not self._claim_slot(-1):
                    return
                wakes = self._wakes
                claim = self._claims.claim(claim_in)
                if claim is not None:
                    self._wake(everyone=False)
                    self._attempt(claim, summary)
                    continue
                self._claim_slot(+1)
                if self.stopping.is_set():  # nothing claimed because the drain is stopping
                    return
                run = self.client.get_run(run_id)
                pending = [p for p in run.phases() if p.state not in PHASE_TERMINAL]
                if run.state in RUN_FINISHED or not pending:
                    self._run_over.set()
                    self._wake(everyone=True)
                    return
                self._wait(run_id, *self._soonest(run, pending), wakes=wakes)
        except BaseException as exc:  # surface in the main thread, stop the others
            errors.append(exc)
            self.stop()
        finally:
            finished.set()
