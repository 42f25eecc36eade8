"""``POST /claims``: lease the next claimable phase, or 204 when there is none."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from autopack.api.auth import WORKER
from autopack.api.body import UniqueKeysRoute
from autopack.api.deps import DatabaseDep
from autopack.api.openapi import CLAIM_LINKS, SECURED, WRITE, errors
from autopack.contract import Claim, ClaimIn
from autopack.control import claims

router = APIRouter(
    route_class=UniqueKeysRoute,
    tags=["claims"],
    dependencies=[WORKER],
    responses={**SECURED, **WRITE},
)


@router.post(
    "/claims",
    response_model=Claim,
    responses={
        200: CLAIM_LINKS,
        204: {"description": "Nothing is claimable right now."},
        **errors(404),
    },
    operation_id="claim",
)
async def claim(body: ClaimIn, database: DatabaseDep) -> Claim | Response:
    """Claim in tier order, honouring depends_on, backoff and budgets; reclaims expired leases
    first. The answer carries the lease token every later call about this attempt needs."""
    claimed = await run_in_threadpool(claims.claim, database, body)
    return Response(status_code=204) if claimed is None else claimed
