"""``GET /health``: liveness plus the identity of the database this server uses.

Executors compare the fingerprint with their own database's before trusting the server
(the handshake); the body carries no password, user or host name.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from autopack import __version__
from autopack.api.deps import DatabaseDep
from autopack.db.identity import read_identity

router = APIRouter(tags=["health"])


@router.get("/health")
def health(database: DatabaseDep) -> JSONResponse:
    """Re-reads the identity on every call, so the answer proves the database is reachable."""
    try:
        identity = read_identity(database.engine)
    except Exception as exc:  # the database went away: say so instead of a bare 500
        body: dict[str, Any] = {
            "status": "unavailable",
            "version": __version__,
            "error": f"{exc.__class__.__name__}: {exc}",
            "database": database.identity.public(),
        }
        return JSONResponse(body, status_code=503)
    status = "ok" if identity.in_sync else "schema_out_of_date"
    return JSONResponse(
        {"status": status, "version": __version__, "database": identity.public()},
        status_code=200 if identity.in_sync else 503,
    )
