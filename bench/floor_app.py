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
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from autopack.api.schemas import ClaimIn, HeartbeatIn, ResultBody

THREADPOOL = os.environ.get("AUTOPACK_FLOOR_THREADPOOL") == "1"

app = FastAPI(title="Autopack floor")
_lock = threading.Lock()
_runs: dict[str, dict[str, Any]] = {}


class RunIn(BaseModel):
    run_id: str
    tiers: list[dict[str, Any]]


async def _answer(work: Callable[[], Any]) -> Any:
    return await run_in_threadpool(work) if THREADPOOL else work()


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "database": {"instance_id": "floor", "public_url": "none"}}


@app.post("/runs")
async def create_run(body: RunIn) -> dict[str, Any]:
    phases = [phase["phase_id"] for tier in body.tiers for phase in tier["phases"]]
    with _lock:
        _runs[body.run_id] = {"queue": iter(phases), "left": len(phases)}
    return {"run_id": body.run_id, "state": "QUEUED"}


@app.get("/runs/{run_id}")
async def get_run(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "state": "DONE_SUCCESS" if _runs[run_id]["left"] == 0 else "RUNNING"}


@app.post("/claims", response_model=None)
async def claim(body: ClaimIn) -> dict[str, Any] | Response:
    def work() -> dict[str, Any] | Response:
        run = _runs[body.run_id or ""]
        with _lock:
            phase_id = next(run["queue"], None)
        if phase_id is None:
            return Response(status_code=204)
        return {"phase_id": phase_id, "attempt": 1, "lease_token": uuid.uuid4().hex}

    answer: dict[str, Any] | Response = await _answer(work)
    return answer


@app.post("/runs/{run_id}/phases/{phase_id}/heartbeat")
async def heartbeat(run_id: str, phase_id: str, body: HeartbeatIn) -> dict[str, Any]:
    answer: dict[str, Any] = await _answer(lambda: {"state": "EXECUTING"})
    return answer


@app.post("/runs/{run_id}/phases/{phase_id}/result")
async def result(run_id: str, phase_id: str, body: ResultBody) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        with _lock:
            _runs[run_id]["left"] -= 1
        return {"run_id": run_id, "phase_id": phase_id, "phase_state": "COMPLETE"}

    answer: dict[str, Any] = await _answer(work)
    return answer
