"""A stop never misses a lease the executor holds: not one whose claim is still on the wire
when the stop lands (a worker thread's, or the main thread's in ``drain phase``)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from autopack.client import ApiClient
from autopack.connect import sigterm_unwinds
from autopack.contract import Claim, ClaimIn, ResultIn
from autopack.errors import ServerUnavailable
from autopack.executor.stopping import (
    HeldClaims,
    hand_back,
    stop_signal,
    stop_signals_deferred,
)
from autopack.rundef import parse_run_definition
from autopack.states import PhaseState
from tests.conftest import empty_sqlite
from tests.cp_support import definition
from tests.support import Server, clean_env


def test_a_claim_still_on_the_wire_when_the_stop_lands_is_held(tmp_path: Path) -> None:
    """The server has granted the claim, its answer is not back: the stop waits for it and
    names it among the leases to hand back (the CI failure: it named only the other one,
    and the phase stayed EXECUTING under a process gone)."""
    env = clean_env(DATABASE_URL=empty_sqlite(tmp_path / "autopack.db"))
    with Server(env, cwd=tmp_path) as server, ApiClient(server.url) as client:
        client.create_run(parse_run_definition(definition("r", [("T1", ["a", "b"])])))
        granted, answer = threading.Event(), threading.Event()

        def answered_late(request: ClaimIn) -> Claim | None:
            claim = client.claim(request)  # committed in the database
            granted.set()
            answer.wait(timeout=30)  # ... and its answer still on its way
            return claim

        held = HeldClaims(answered_late)
        claimed: list[Claim | None] = []
        worker = threading.Thread(
            target=lambda: claimed.append(
                held.claim(ClaimIn(worker_id="w", lease_seconds=60, run_id="r"))
            )
        )
        worker.start()
        assert granted.wait(timeout=30)
        stopped: list[list[Claim]] = []
        stopper = threading.Thread(target=lambda: stopped.append(held.stop(timeout=30)))
        stopper.start()
        while not held.stopped:  # the stop has begun (and is waiting, if it waits)
            threading.Event().wait(0.01)
        answer.set()
        worker.join(timeout=30)
        stopper.join(timeout=30)
        [claim] = claimed
        assert claim is not None and stopped == [[claim]]
        # Stopped, it asks the server for nothing more: phase b stays QUEUED.
        assert held.claim(ClaimIn(worker_id="w", lease_seconds=60, run_id="r")) is None
        assert {p.phase_id: p.state for p in client.get_run("r").phases()} == {
            claim.phase_id: "EXECUTING",
            ({"a", "b"} - {claim.phase_id}).pop(): "QUEUED",
        }


def test_a_hand_back_after_the_attempts_own_result_says_what_that_recorded(
    tmp_path: Path,
) -> None:
    """SIGTERM while the attempts were posting their own results: the results landed, and
    each hand-back got back the attempt's stop reason alone. The summary built from that
    said ``files 0`` for a phase the database has COMPLETE with its files (and no error
    for one that failed); it says what the database recorded."""
    env = clean_env(DATABASE_URL=empty_sqlite(tmp_path / "autopack.db"))
    with Server(env, cwd=tmp_path) as server, ApiClient(server.url) as client:
        client.create_run(parse_run_definition(definition("r", [("T1", ["a", "b"])])))
        results = {
            "a": ResultIn(
                lease_token="-",
                outcome=PhaseState.COMPLETE,
                stop_reason="completed",
                files_written=["pkg/a.py", "pkg/b.py"],
            ),
            "b": ResultIn(
                lease_token="-",
                outcome=PhaseState.FAILED,
                stop_reason="audit_rejected",
                error="the Auditor found a bug",
            ),
        }
        reported = {}
        for _ in results:
            claim = client.claim(ClaimIn(worker_id="w", lease_seconds=60, run_id="r"))
            assert claim is not None
            own = results[claim.phase_id].model_copy(update={"lease_token": claim.lease_token})
            client.post_result("r", claim.phase_id, own, idempotency_key=claim.idempotency_key)
            reported[claim.phase_id] = hand_back(client, claim, signal.SIGTERM)
        assert {p.phase_id: p.state for p in client.get_run("r").phases()} == {
            "a": "COMPLETE",
            "b": "QUEUED",
        }
    a, b = reported["a"], reported["b"]
    assert a is not None and b is not None
    assert (a.outcome, a.stop_reason, a.files_written) == (
        "COMPLETE",
        "completed",
        ("pkg/a.py", "pkg/b.py"),
    )
    assert (b.outcome, b.stop_reason, b.detail) == (
        "FAILED",
        "audit_rejected",
        "the Auditor found a bug",
    )


def test_a_stop_signal_during_a_main_thread_claim_lands_after_it() -> None:
    """SIGTERM inside the block is raised when the block ends, after the claim is known."""
    reached_the_end = False
    with sigterm_unwinds(), pytest.raises(SystemExit) as stopped, stop_signals_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes: give it many
            pass
        reached_the_end = True
    assert reached_the_end and stopped.value.code == 128 + signal.SIGTERM


def test_a_repeated_stop_signal_during_a_claim_lands_at_once() -> None:
    """A user pressing Ctrl-C twice while the API does not answer is not kept waiting."""
    after_the_second = False
    with pytest.raises(KeyboardInterrupt), stop_signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        after_the_second = True
    assert not after_the_second
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _stop_from(block: Callable[[], None]) -> BaseException:
    """The stop that ends ``block`` run under :func:`stop_signals_deferred` (caught here:
    a KeyboardInterrupt escaping a test ends the whole session)."""
    try:
        with sigterm_unwinds(), stop_signals_deferred():
            block()
    except (KeyboardInterrupt, SystemExit) as exc:
        return exc
    raise AssertionError("no stop was delivered")


def _signal(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the handler runs between bytecodes: give it many
        pass


def test_a_sigterm_after_a_held_ctrl_c_is_the_stop_that_is_reported() -> None:
    """The SIGTERM was delivered at once, then the held Ctrl-C raised on top of it: the
    drain said "stopped by SIGINT" and exited 130, not 143."""

    def ctrl_c_then_sigterm() -> None:
        _signal(signal.SIGINT)
        _signal(signal.SIGTERM)

    stopped = _stop_from(ctrl_c_then_sigterm)
    assert stop_signal(stopped) == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_stop_outlives_an_error_in_the_block() -> None:
    """The claim failing (the API gone) after a Ctrl-C arrived still ends in the stop."""

    def fails() -> None:
        _signal(signal.SIGINT)
        raise ServerUnavailable("no answer")

    stopped = _stop_from(fails)
    assert stop_signal(stopped) == signal.SIGINT
    assert isinstance(stopped.__context__, ServerUnavailable)
