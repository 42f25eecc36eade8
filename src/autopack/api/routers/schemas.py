"""``GET /schemas/run``: the JSON Schema of run definitions, for editors and generators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from autopack.rundef import run_json_schema

router = APIRouter(tags=["schemas"])


@router.get("/schemas/run")
def run_schema() -> dict[str, Any]:
    """The JSON Schema that `POST /runs` bodies and run files are validated against."""
    return run_json_schema()
