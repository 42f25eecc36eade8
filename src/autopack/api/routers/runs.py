"""Runs: create from a definition, list, read with tiers and phases, cancel.

Creating a run is running code (its ``checks`` run on every executor that drains it), so
creating and cancelling need the operator token; reading needs either token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from autopack.api.auth import OPERATOR, WORKER
from autopack.api.body import UniqueKeysRoute
from autopack.api.deps import DatabaseDep, PageLimit, PageOffset, RunId
from autopack.api.openapi import READ, RUN_LINKS, SECURED, WRITE, errors
from autopack.contract import BranchCheckIn, CancelIn, RunBrief, RunList, RunView
from autopack.control import runs
from autopack.rundef import RunDefinition
from autopack.states import RunState

router = APIRouter(route_class=UniqueKeysRoute, tags=["runs"], responses={**SECURED, **READ})
RUN_EXAMPLES = {
    "two phases": {
        "summary": "A tier of two phases, the second waiting for the first",
        "value": {
            "run_id": "example",
            "tiers": [
                {
                    "tier_id": "T1",
                    "name": "first tier",
                    "phases": [
                        {
                            "phase_id": "p1",
                            "name": "write the module",
                            "scope": {"deliverables": ["pkg/mod.py"]},
                            "checks": ["python -m pytest -q"],
                        },
                        {"phase_id": "p2", "name": "document it", "depends_on": ["p1"]},
                    ],
                }
            ],
        },
    }
}


@router.post(
    "/runs",
    status_code=201,
    response_model=RunView,
    dependencies=[OPERATOR],
    responses={201: RUN_LINKS, **WRITE, **errors(409)},
    operation_id="create_run",
)
def create_run(
    definition: Annotated[RunDefinition, Body(openapi_examples=RUN_EXAMPLES)],
    database: DatabaseDep,
) -> RunView:
    """Create a run (all phases QUEUED); 409 if the run_id exists, 422 naming field and value."""
    return runs.create_run(database, definition)


@router.get("/runs", response_model=RunList, dependencies=[WORKER], operation_id="list_runs")
def list_runs(
    database: DatabaseDep,
    state: Annotated[RunState | None, Query(description="Only runs in this state.")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> RunList:
    """Run summaries, newest first, with per-state phase counts."""
    return runs.list_runs(database, state=state, limit=limit, offset=offset)


@router.get(
    "/runs/{run_id}",
    response_model=RunView,
    dependencies=[WORKER],
    responses=errors(404),
    operation_id="get_run",
)
def get_run(run_id: RunId, database: DatabaseDep) -> RunView:
    """The run with its tiers and phases; a 404 names the run and the database it looked in."""
    return runs.get_run(database, run_id)


@router.get(
    "/runs/{run_id}/brief",
    response_model=RunBrief,
    dependencies=[WORKER],
    responses=errors(404),
    operation_id="get_run_brief",
)
def get_run_brief(run_id: RunId, database: DatabaseDep) -> RunBrief:
    """The run without its tiers and phases: its state, budgets and accepted head."""
    return runs.get_run_brief(database, run_id)


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunView,
    dependencies=[OPERATOR],
    responses={**WRITE, **errors(404, 409)},
    operation_id="cancel_run",
)
def cancel_run(
    run_id: RunId, database: DatabaseDep, body: Annotated[CancelIn | None, Body()] = None
) -> RunView:
    """DONE_CANCELLED: waiting phases SKIPPED, executing leases revoked (their next call 409s)."""
    return runs.cancel_run(database, run_id, body or CancelIn())


@router.post(
    "/runs/{run_id}/branch-check",
    response_model=RunView,
    dependencies=[WORKER],
    responses={**WRITE, **errors(404, 409)},
    operation_id="check_branch",
)
def check_branch(run_id: RunId, body: BranchCheckIn, database: DatabaseDep) -> RunView:
    """The run, or 409 when another active run works on its branch of ``repository``: a
    drain asks before moving the branch in a repository the run does not name."""
    return runs.check_branch(database, run_id, body.repository)
