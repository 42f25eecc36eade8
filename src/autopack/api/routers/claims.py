"""``POST /claims``: lease the next claimable phase, or 204 when there is none."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from autopack.api.deps import DatabaseDep
from autopack.api.schemas import ClaimIn, ClaimOut
from autopack.db import work

router = APIRouter(tags=["claims"])


@router.post(
    "/claims",
    response_model=ClaimOut,
    responses={204: {"description": "Nothing is claimable right now."}},
)
async def claim(body: ClaimIn, database: DatabaseDep) -> Any:
    """Claim in tier order, honouring depends_on, backoff and budgets; reclaims expired leases
    first. The answer carries the lease token every later call about this attempt needs."""
    claimed = await run_in_threadpool(
        work.claim,
        database,
        worker_id=body.worker_id,
        lease_seconds=body.lease_seconds,
        run_id=body.run_id,
        phase_id=body.phase_id,
    )
    if claimed is None:
        return Response(status_code=204)
    return claimed
