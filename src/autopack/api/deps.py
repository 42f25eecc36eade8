"""FastAPI dependencies, declared once as ``Annotated`` aliases and reused by every router."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from autopack.config import Settings
from autopack.db import Database


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
