"""``GET /health``: liveness plus the identity of the database this server uses.

``HEAD /health`` answers the same status without the body: load balancers and ``curl -I``
probe with it.

Executors and the CLI compare the fingerprint with their own database's before trusting
the server (the handshake); the body carries no password, user or host name. It is the
one endpoint open without a token, so it answers with nothing but that identity.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from autopack import __version__
from autopack.api.deps import DatabaseDep
from autopack.contract import Health
from autopack.db.identity import read_identity
from autopack.db.transaction import again_on_lost_connection

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
@router.head(
    "/health",
    response_model=Health,
    responses={503: {"model": Health}},
    operation_id="health_head",
)
def health(database: DatabaseDep) -> JSONResponse:
    """Re-reads the identity on every call, so the answer proves the database is reachable
    (on a new connection if the server ended the pooled one: that is no outage)."""
    try:
        identity = again_on_lost_connection(lambda: read_identity(database.engine))
    except Exception as exc:  # the database went away: say so instead of a bare 500
        answer = Health(
            status="unavailable",
            version=__version__,
            # the class only: a driver's message names hosts, users, paths
            error=f"the database is unavailable ({exc.__class__.__name__})",
            database=database.identity.public(),
        )
        return JSONResponse(answer.model_dump(mode="json"), status_code=503)
    answer = Health(
        status="ok" if identity.in_sync else "schema_out_of_date",
        version=__version__,
        database=identity.public(),
    )
    return JSONResponse(
        answer.model_dump(mode="json"), status_code=200 if identity.in_sync else 503
    )
