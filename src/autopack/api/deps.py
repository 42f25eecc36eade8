"""FastAPI dependencies, declared once as ``Annotated`` aliases and reused by every router.

They are ``async`` although they only read ``app.state``: FastAPI runs a plain ``def``
dependency in the thread pool, one extra thread hop on every request for an attribute
lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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
