"""The cheapest possible control plane: the API's wire shape with no database behind it.

``bench.control_plane --floor`` drains runs from this app with the same worker processes
and the same ``ApiClient`` as from the real server. What it measures is the ceiling of
the stack itself on the machine (uvicorn, FastAPI, pydantic, httpx and the client
processes sharing the cores): no real control plane on that stack can go faster.

``AUTOPACK_FLOOR_THREADPOOL=1`` makes every call hop to the thread pool and back, as the
real endpoints do to run their blocking transaction.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

from fastapi import FastAPI, Response
from starlette.concurrency import run_in_threadpool

from autopack.clock import utcnow
from autopack.contract import (
    Claim,
    ClaimIn,
    Health,
    HeartbeatIn,
    LeaseRenewed,
    PhaseView,
    ResultAnswer,
    ResultIn,
    RunBrief,
    RunView,
)
from autopack.identity import PublicIdentity
from autopack.rundef import Budgets, Policy, RunDefinition, Scope
from autopack.states import PhaseState, RunState

THREADPOOL = os.environ.get("AUTOPACK_FLOOR_THREADPOOL") == "1"
T = TypeVar("T")

app = FastAPI(title="Autopack floor")
_lock = threading.Lock()
_queues: dict[str, Iterator[str]] = {}
_left: dict[str, int] = {}
_IDENTITY = PublicIdentity(
    instance_id="floor",
    backend="none",
    public_url="none",
    fingerprint="floor",
    schema_revision=None,
    code_revision="none",
    in_sync=True,
)


async def _answer(work: Callable[[], T]) -> T:
    return await run_in_threadpool(work) if THREADPOOL else work()


def _claim(run_id: str, phase_id: str) -> Claim:
    """A claim as big as the real server's: the phase, no history, the run's budgets."""
    now = utcnow()
    phase = PhaseView(
        run_id=run_id,
        phase_id=phase_id,
        tier_id="T1",
        tier_index=0,
        phase_index=0,
        name=phase_id,
        description="",
        task_category="implementation",
        complexity="medium",
        scope=Scope(),
        checks=[],
        depends_on=[],
        state=PhaseState.EXECUTING,
        attempts=1,
        max_attempts=3,
        attempts_left=2,
        last_failure_reason=None,
        failure_fingerprint=None,
        tokens_used=0,
        cost_usd=0.0,
        lease_owner="w",
        lease_expires_at=now + timedelta(seconds=60),
        available_at=now,
        created_at=now,
        started_at=now,
        finished_at=None,
        updated_at=now,
    )
    run = RunBrief(
        state=RunState.RUNNING,
        goal="",
        budgets=Budgets(),
        policy=Policy(),
        tokens_used=0,
        cost_usd=0.0,
    )
    return Claim(
        run_id=run_id,
        phase_id=phase_id,
        attempt=1,
        lease_token=uuid.uuid4().hex,
        lease_expires_at=now + timedelta(seconds=60),
        lease_seconds=60,
        phase=phase,
        history=[],
        run=run,
        approved_change=None,
    )


def _run_view(run_id: str) -> RunView:
    now = utcnow()
    done = _left[run_id] == 0
    return RunView(
        run_id=run_id,
        state=RunState.DONE_SUCCESS if done else RunState.RUNNING,
        goal="",
        tokens_used=0,
        cost_usd=0.0,
        created_at=now,
        started_at=now,
        finished_at=now if done else None,
        failure_reason=None,
        phase_count=0,
        counts={},
        budgets=Budgets(),
        policy=Policy(),
        tiers=[],
    )


@app.get("/health")
async def health() -> Health:
    return Health(status="ok", version="floor", database=_IDENTITY)


@app.post("/runs", status_code=201)
async def create_run(body: RunDefinition) -> RunView:
    phases = [phase.phase_id for tier in body.tiers for phase in tier.phases]
    with _lock:
        _queues[body.run_id] = iter(phases)
        _left[body.run_id] = len(phases)
    return _run_view(body.run_id)


@app.get("/runs/{run_id}")
async def get_run(run_id: str) -> RunView:
    return _run_view(run_id)


@app.post("/claims", response_model=Claim)
async def claim(body: ClaimIn) -> Claim | Response:
    def work() -> Claim | Response:
        with _lock:
            phase_id = next(_queues[body.run_id or ""], None)
        if phase_id is None:
            return Response(status_code=204)
        return _claim(body.run_id or "", phase_id)

    return await _answer(work)


@app.post("/runs/{run_id}/phases/{phase_id}/heartbeat")
async def heartbeat(run_id: str, phase_id: str, body: HeartbeatIn) -> LeaseRenewed:
    expires = utcnow() + timedelta(seconds=body.lease_seconds or 60)
    return await _answer(lambda: LeaseRenewed(lease_expires_at=expires, state=PhaseState.EXECUTING))


@app.post("/runs/{run_id}/phases/{phase_id}/result")
async def result(run_id: str, phase_id: str, body: ResultIn) -> ResultAnswer:
    def work() -> ResultAnswer:
        with _lock:
            _left[run_id] -= 1
        return ResultAnswer(
            run_id=run_id,
            phase_id=phase_id,
            attempt=1,
            phase_state=PhaseState.COMPLETE,
            run_state=RunState.RUNNING,
            requeued=False,
            available_at=None,
        )

    return await _answer(work)
