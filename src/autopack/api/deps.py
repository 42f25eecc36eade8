"""FastAPI dependencies and parameters, declared once as ``Annotated`` aliases and reused by
every router.

They are ``async`` although they only read ``app.state``: FastAPI runs a plain ``def``
dependency in the thread pool, one extra thread hop on every request for an attribute
lookup. Path and query parameters are bounded like request bodies (:mod:`autopack.bounds`):
an id that cannot exist (a NUL byte, 300 characters) is a 422 naming the parameter, an
approval id past INTEGER's range too, never a database error.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from autopack.bounds import ID_PATTERN, INT32_MAX, MAX_PAGE
from autopack.config import Settings
from autopack.db import Database


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

RunId = Annotated[str, Path(pattern=ID_PATTERN, max_length=200, description="A run's id.")]
PhaseId = Annotated[str, Path(pattern=ID_PATTERN, max_length=200, description="A phase's id.")]
ApprovalId = Annotated[int, Path(ge=1, le=INT32_MAX, description="An approval's id.")]
RunFilter = Annotated[
    str | None, Query(pattern=ID_PATTERN, max_length=200, description="Only this run.")
]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items in this page.")]
PageOffset = Annotated[int, Query(ge=0, le=INT32_MAX, description="Items to skip.")]
"""A page of a list (:class:`~autopack.contract.Page`): the next starts at offset + limit."""
